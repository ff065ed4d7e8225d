import pytest

from gvmgen.media.probe import MediaError, probe


def test_probe_reads_timing_size_and_streams(fixtures):
    info = probe(fixtures / "video" / "testvideo.mp4")
    assert abs(info.duration - 24.02) < 0.01 and (info.width, info.height) == (1280, 720)
    assert info.codec == "h264" and info.audio_streams == 0 and info.rotation == 0 and info.sar == "1:1"
    assert info.nominal_fps == pytest.approx(29.97, abs=0.01)


@pytest.mark.parametrize("content", [b"this is not a video\n", b""])
def test_a_file_that_is_not_a_video_is_named_in_the_error(tmp_path, content):
    bad = tmp_path / "clip.mp4"
    bad.write_bytes(content)
    with pytest.raises(MediaError, match="clip.mp4"):
        probe(bad)


def test_audio_only_is_not_a_video(fixtures):
    with pytest.raises(MediaError, match="bach.mp3: has no video stream"):
        probe(fixtures / "music" / "bach.mp3")
