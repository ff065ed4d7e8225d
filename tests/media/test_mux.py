"""Muxing: the picture's packets untouched, the music as long as the picture, other streams kept."""

import json
import subprocess

import numpy as np
import pytest

from gvmgen.media.audio import write_track
from gvmgen.media.mux import mux
from gvmgen.media.probe import probe


def _packet_hashes(path, stream="v"):
    out = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-map", f"0:{stream}", "-c", "copy",
                          "-f", "framemd5", "-"], capture_output=True, text=True, check=True).stdout
    return [line.rsplit(",", 1)[-1].strip() for line in out.splitlines() if not line.startswith("#")]


def _streams(path):
    out = subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)["streams"]


def _music_for(info, tmp_path, freq=440.0):
    n = round(info.duration * 32000)
    path = tmp_path / "music.flac"
    write_track(path, 0.3 * np.sin(2 * np.pi * freq * np.arange(n) / 32000), 32000)
    return path


def test_video_packets_are_copied_and_the_music_lasts_as_long_as_the_picture(fixtures, tmp_path):
    source = fixtures / "video" / "testvideo.mp4"
    info = probe(source)
    mux(info, _music_for(info, tmp_path), tmp_path / "out.mp4", info.start)
    assert _packet_hashes(tmp_path / "out.mp4") == _packet_hashes(source)
    audio = [s for s in _streams(tmp_path / "out.mp4") if s["codec_type"] == "audio"]
    assert len(audio) == 1 and audio[0]["codec_name"] == "aac"
    assert abs(float(audio[0]["duration"]) - info.duration) <= 0.02
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


def test_music_starts_with_the_first_frame_of_a_late_starting_video(fixtures, tmp_path):
    info = probe(fixtures / "video" / "delayed_start.mp4")
    mux(info, _music_for(info, tmp_path), tmp_path / "out.mp4", info.start)
    audio = [s for s in _streams(tmp_path / "out.mp4") if s["codec_type"] == "audio"][0]
    video = [s for s in _streams(tmp_path / "out.mp4") if s["codec_type"] == "video"][0]
    assert float(video["start_time"]) == pytest.approx(1.075, abs=1e-3)   # timestamps kept as they were
    priming = 1024 / 32000  # AAC's encoder delay, which the MP4 edit list skips on playback
    assert abs(float(audio["start_time"]) + priming - float(video["start_time"])) <= 0.005


@pytest.fixture
def two_audio_tracks(make_video):
    return make_video("two.mp4", "-f", "lavfi", "-i", "testsrc=s=160x90:r=25:d=3",
                      "-f", "lavfi", "-i", "sine=frequency=300:d=3", "-f", "lavfi", "-i", "sine=frequency=600:d=3",
                      "-map", "0:v", "-map", "1:a", "-map", "2:a", "-c:v", "libx264", "-c:a", "aac")


def test_replace_keeps_only_the_music(two_audio_tracks, tmp_path):
    info = probe(two_audio_tracks)
    assert info.audio_streams == 2
    mux(info, _music_for(info, tmp_path), tmp_path / "out.mp4", info.start, mode="replace")
    assert [s["codec_type"] for s in _streams(tmp_path / "out.mp4")] == ["video", "audio"]


def test_mix_ducks_the_first_track_under_the_music_and_keeps_the_second(two_audio_tracks, tmp_path):
    info = probe(two_audio_tracks)
    mux(info, _music_for(info, tmp_path, freq=1000), tmp_path / "out.mp4", info.start, mode="mix", duck_db=12)
    assert [s["codec_type"] for s in _streams(tmp_path / "out.mp4")] == ["video", "audio", "audio"]
    pcm = subprocess.run(["ffmpeg", "-v", "error", "-i", str(tmp_path / "out.mp4"), "-map", "0:a:0", "-ac", "1",
                          "-ar", "8000", "-f", "f32le", "-"], capture_output=True, check=True).stdout
    spectrum = np.abs(np.fft.rfft(np.frombuffer(pcm, np.float32)[4000:20000]))
    freqs = np.fft.rfftfreq(16000, 1 / 8000)
    level = lambda f: spectrum[np.abs(freqs - f) < 5].max()
    ratio_db = 20 * np.log10(level(1000) / level(300))   # music vs. the original track under it
    assert 8 < ratio_db < 20  # music at 0.3, the original sine ducked by 12 dB (lavfi sine is 1/8)


def test_subtitles_and_attachments_survive_in_mkv(make_video, tmp_path):
    srt = tmp_path / "subs.srt"
    srt.write_text("1\n00:00:00,000 --> 00:00:01,500\nHello\n\n2\n00:00:01,500 --> 00:00:03,000\nWorld\n")
    video = make_video("subs.mkv", "-f", "lavfi", "-i", "testsrc=s=160x90:r=25:d=3", "-i", srt,
                       "-f", "lavfi", "-i", "sine=d=3", "-map", "0:v", "-map", "2:a", "-map", "1:s",
                       "-c:v", "libx264", "-c:a", "aac", "-c:s", "srt")
    info = probe(video)
    mux(info, _music_for(info, tmp_path), tmp_path / "out.mkv", info.start)
    assert [s["codec_type"] for s in _streams(tmp_path / "out.mkv")] == ["video", "audio", "subtitle"]
    assert _packet_hashes(tmp_path / "out.mkv", "s") == _packet_hashes(video, "s")
