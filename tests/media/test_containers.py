"""Timing on every container: cuts, frame rate and the music's start, whatever the container's first
timestamp. Each video is made here with ffmpeg: three flat shots of known frame counts, so the cut
times are exact fractions, written with a timestamp offset (MPEG-TS adds its own 1.4 s as well)."""

import json
import subprocess
from fractions import Fraction

import numpy as np
import pytest

from gvmgen.media.audio import write_track
from gvmgen.media.frames import analyse
from gvmgen.media.mux import mux

CONTAINERS = {".mp4": "libx264", ".mov": "libx264", ".mkv": "libx264", ".webm": "libvpx", ".ts": "libx264",
              ".avi": "mpeg4"}
OFFSETS = [0.0, 1.4, 2.5]
RATES = ["24000/1001", "25", "30000/1001", "50", "60000/1001"]
SHOT_S = (1.0, 1.3, 0.9)            # three shots: red, green, blue
AUDIO_FRAME_S = 1024 / 48000        # one AAC frame (an Opus frame, 20 ms, is shorter)


def _video(path, rate: str, offset: float) -> list[Fraction]:
    """Write the video; return the exact cut times, from the frame counts."""
    fps = Fraction(rate)
    counts = [round(s * fps) for s in SHOT_S]
    sources = ";".join(f"color=c={c}:s=96x64:r={rate},trim=end_frame={n}[s{i}]"
                       for i, (c, n) in enumerate(zip(("red", "green", "blue"), counts)))
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-filter_complex", f"{sources};[s0][s1][s2]concat=n=3:v=1[v]",
                    "-map", "[v]", "-c:v", CONTAINERS[path.suffix], "-pix_fmt", "yuv420p",
                    "-output_ts_offset", str(offset), str(path)], check=True)
    return [counts[0] / fps, (counts[0] + counts[1]) / fps]


def _first_frame_and_audio_start(path) -> tuple[float, float]:
    frame = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_frames", "-read_intervals",
                            "%+#1", "-show_entries", "frame=pts_time,pkt_dts_time,best_effort_timestamp_time",
                            "-of", "json", str(path)], capture_output=True, text=True, check=True).stdout
    first = json.loads(frame)["frames"][0]
    streams = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries",
                              "stream=start_time", "-of", "json", str(path)], capture_output=True, text=True,
                             check=True).stdout
    return float(first["best_effort_timestamp_time"]), float(json.loads(streams)["streams"][0]["start_time"])


def _check(tmp_path, suffix: str, offset: float, rate: str) -> None:
    video = tmp_path / f"v{rate.replace('/', '_')}-{offset}{suffix}"
    cuts = _video(video, rate, offset)
    analysis = analyse(video, size=32)
    frame = 1 / float(Fraction(rate))
    where = f"{suffix} at {rate} fps from {offset} s"
    assert len(analysis.cuts) == 2, where
    for found, known in zip(analysis.cuts, cuts):
        assert abs(found - float(known)) <= frame + 1e-6, where
    assert not analysis.vfr and analysis.fps == pytest.approx(float(Fraction(rate)), rel=2e-3), where
    assert analysis.duration == pytest.approx(sum(SHOT_S), abs=frame + 1e-6), where
    assert all(0 <= f.t < analysis.duration for f in analysis.frames), where

    music = tmp_path / "music.flac"
    write_track(music, 0.3 * np.sin(2 * np.pi * 440 * np.arange(round(analysis.duration * 48000)) / 48000), 48000)
    out = tmp_path / f"out{suffix}"
    mux(analysis.info, music, out, analysis.origin)
    first_frame, audio_start = _first_frame_and_audio_start(out)
    assert abs(audio_start - first_frame) <= AUDIO_FRAME_S + 1e-3, where


# AVI has no timestamps to offset: ffmpeg holds its first frame over the offset instead (a real gap).
CASES = [(suffix, offset) for suffix in CONTAINERS for offset in OFFSETS if suffix != ".avi" or offset == 0]


@pytest.mark.slow
@pytest.mark.parametrize("suffix, offset", CASES)
def test_cuts_rate_and_music_start_on_every_container_offset_and_frame_rate(tmp_path, suffix, offset):
    for rate in RATES:
        _check(tmp_path, suffix, offset, rate)


def test_mpeg_ts_starting_late_is_timed_from_its_first_frame(tmp_path):
    """The case a broadcast capture makes: MPEG-TS at 29.97 fps whose timestamps start at 2.5 s + 1.4 s."""
    _check(tmp_path, ".ts", 2.5, "30000/1001")
