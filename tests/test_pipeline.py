"""The three stages a catalog run overlaps: prepare, compose (several videos in one batch), finish."""

import shutil

import numpy as np
import pytest
import torch

from gvmgen.generate import GenerationSettings
from gvmgen.media.audio import read_track
from gvmgen.pipeline import compose, encode, extract_frames, finish, prepare
from gvmgen.settings import ScoreSettings


@pytest.mark.slow
def test_two_videos_prepared_apart_are_composed_together_and_finished_apart(tiny_model, fixtures, tmp_path):
    settings = ScoreSettings(generation=GenerationSettings(seed=0, stitch="parallel"))
    names = ["testvideo", "counter"]
    prepared = [prepare(tiny_model, fixtures / "video" / f"{n}.mp4", settings) for n in names]
    assert prepared[0].tokens.cuts == pytest.approx([1.001, 6.006, 13.146], abs=1e-3)
    tracks = compose(tiny_model, prepared, settings)
    for video, track, name in zip(prepared, tracks, names):
        done = finish(video, track, tiny_model.config.sample_rate, tmp_path / f"{name}.mp4", settings)
        audio, rate = read_track(done.track)
        assert done.track.suffix == ".flac" and rate == 48000 and audio.shape[1] == 2  # the delivery format
        assert abs(len(audio) / rate - video.analysis.duration) <= 0.02
        assert abs(done.loudness.output_lufs + 14) <= 0.5 and done.video.is_file()


def test_a_video_too_short_to_score_is_refused_before_generation(tiny_model, tmp_path):
    import subprocess

    from gvmgen.media.probe import MediaError

    one_frame = tmp_path / "one-frame.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=s=64x64:r=25", "-frames:v", "1",
                    "-c:v", "libx264", str(one_frame)], check=True)
    with pytest.raises(MediaError, match=r"one-frame.mp4: too short to score: 0.04 s of picture \(the minimum is 0.5 s\)"):
        prepare(tiny_model, one_frame, ScoreSettings())


def test_frames_extracted_without_the_model_encode_to_what_prepare_streams(tiny_model, fixtures, tmp_path):
    """The split a Dask run makes: media workers send frames, the model's worker encodes them."""
    settings = ScoreSettings(generation=GenerationSettings(seed=0))
    video = fixtures / "video" / "testvideo.mp4"
    frames = extract_frames(video, tiny_model.config.image_size, settings.detection)
    assert frames.pixels.dtype == np.uint8 and frames.pixels.shape == (len(frames.analysis.frames), 32, 32, 3)
    apart, streamed = encode(tiny_model, frames, settings), prepare(tiny_model, video, settings)
    torch.testing.assert_close(apart.tokens.tokens, streamed.tokens.tokens, atol=1e-5, rtol=1e-5)
    assert torch.equal(apart.tokens.times, streamed.tokens.times)
    assert apart.tokens.cuts == streamed.tokens.cuts and apart.windows == streamed.windows
    # the seeds of its music: the same picture either way (a copy too), another video's another
    assert apart.tokens.identity == streamed.tokens.identity != ""
    copy = tmp_path / "copy.mp4"
    shutil.copyfile(video, copy)
    assert prepare(tiny_model, copy, settings).tokens.identity == streamed.tokens.identity
    assert prepare(tiny_model, fixtures / "video" / "counter.mp4", settings).tokens.identity != streamed.tokens.identity
