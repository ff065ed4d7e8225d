"""ffmpeg in and out: probing, 1 fps frames, and a mux that leaves the picture untouched."""

import subprocess

import numpy as np
import pytest

from gvmgen.media.audio import write_wav
from gvmgen.media.video import MediaError, mux, probe, sample_frames


def _packet_hashes(path, stream="v"):
    out = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-map", f"0:{stream}", "-c", "copy",
                          "-f", "framemd5", "-"], capture_output=True, text=True, check=True).stdout
    return [line.rsplit(",", 1)[-1].strip() for line in out.splitlines() if not line.startswith("#")]


def test_probe_reads_duration_and_size(fixtures):
    info = probe(fixtures / "video" / "testvideo.mp4")
    assert abs(info.duration - 24.02) < 0.01 and (info.width, info.height) == (1280, 720)


def test_one_frame_per_second_resized_for_clip(fixtures):
    frames, times = sample_frames(fixtures / "video" / "testvideo.mp4", size=32)
    assert frames.shape == (24, 32, 32, 3) and frames.dtype == np.uint8
    assert np.array_equal(times, np.arange(24))
    assert frames.std() > 10  # real picture, not blank


@pytest.mark.parametrize("content", [b"this is not a video\n", b""])
def test_a_file_that_is_not_a_video_is_named_in_the_error(tmp_path, content):
    bad = tmp_path / "clip.mp4"
    bad.write_bytes(content)
    with pytest.raises(MediaError, match="clip.mp4"):
        probe(bad)


def test_mux_copies_the_video_packets_and_adds_the_music(fixtures, tmp_path):
    source = fixtures / "video" / "testvideo.mp4"
    duration = probe(source).duration
    write_wav(tmp_path / "music.wav", 0.1 * np.sin(np.arange(round(duration * 32000)) / 10), 32000)
    mux(source, tmp_path / "music.wav", tmp_path / "out.mp4")
    assert _packet_hashes(tmp_path / "out.mp4") == _packet_hashes(source)
    audio = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries", "stream=duration",
                            "-of", "csv=p=0", str(tmp_path / "out.mp4")], capture_output=True, text=True).stdout
    assert abs(float(audio) - duration) <= 0.02
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []
