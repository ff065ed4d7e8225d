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


def _tone_db(path, stream, freq):
    """The level (dB) of one tone in an audio stream, as ffmpeg decodes it: seconds 0.5-2.5, mono, 8 kHz."""
    pcm = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-map", stream, "-ac", "1", "-ar", "8000",
                          "-f", "f32le", "-"], capture_output=True, check=True).stdout
    x = np.frombuffer(pcm, np.float32)[4000:20000]
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    freqs = np.fft.rfftfreq(len(x), 1 / 8000)
    return 20 * np.log10(spectrum[np.abs(freqs - freq) < 5].max())


@pytest.mark.parametrize("duck_db", [12, 6])
def test_mix_ducks_the_first_track_under_the_music_and_keeps_the_second(two_audio_tracks, tmp_path, duck_db):
    info = probe(two_audio_tracks)
    music = _music_for(info, tmp_path, freq=1000)
    mux(info, music, tmp_path / "out.mp4", info.start, mode="mix", duck_db=duck_db)
    out = tmp_path / "out.mp4"
    assert [s["codec_type"] for s in _streams(out)] == ["video", "audio", "audio"]
    # the original 300-Hz track, measured in the source and under the music: lowered by exactly duck_db
    assert _tone_db(out, "0:a:0", 300) - _tone_db(two_audio_tracks, "0:a:0", 300) == pytest.approx(-duck_db, abs=1)
    # the music itself at its own level (mixed without normalisation), the second track untouched
    assert _tone_db(out, "0:a:0", 1000) - _tone_db(music, "0:a:0", 1000) == pytest.approx(0, abs=1)
    assert _tone_db(out, "0:a:1", 600) - _tone_db(two_audio_tracks, "0:a:1", 600) == pytest.approx(0, abs=1)
    assert _tone_db(out, "0:a:1", 300) < _tone_db(out, "0:a:1", 600) - 40     # and no music or first track in it


def test_subtitles_and_attachments_survive_in_mkv(make_video, tmp_path):
    srt = tmp_path / "subs.srt"
    srt.write_text("1\n00:00:00,000 --> 00:00:01,500\nHello\n\n2\n00:00:01,500 --> 00:00:03,000\nWorld\n")
    font = tmp_path / "title.ttf"                       # an attachment as a subtitle's font would be
    font.write_bytes(bytes(range(256)) * 8 + b"gvmgen attachment payload")
    video = make_video("subs.mkv", "-f", "lavfi", "-i", "testsrc=s=160x90:r=25:d=3", "-i", srt,
                       "-f", "lavfi", "-i", "sine=d=3", "-map", "0:v", "-map", "2:a", "-map", "1:s",
                       "-c:v", "libx264", "-c:a", "aac", "-c:s", "srt",
                       "-attach", font, "-metadata:s:t", "mimetype=application/x-truetype-font")
    assert [s["codec_type"] for s in _streams(video)] == ["video", "audio", "subtitle", "attachment"]
    info = probe(video)
    mux(info, _music_for(info, tmp_path), tmp_path / "out.mkv", info.start)
    streams = _streams(tmp_path / "out.mkv")
    assert [s["codec_type"] for s in streams] == ["video", "audio", "subtitle", "attachment"]
    assert _packet_hashes(tmp_path / "out.mkv", "s") == _packet_hashes(video, "s")
    attachment = streams[-1]["tags"]
    assert attachment["filename"] == "title.ttf" and attachment["mimetype"] == "application/x-truetype-font"
    dumped = tmp_path / "dumped.ttf"                    # the attachment's bytes, as ffmpeg reads them back
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-dump_attachment:t:0", str(dumped), "-i", str(tmp_path / "out.mkv")],
                   capture_output=True)
    assert dumped.read_bytes() == font.read_bytes()
