"""The three stages a catalog run overlaps: prepare, compose (several videos in one batch), finish."""

import pytest

from gvmgen.generate import GenerationSettings
from gvmgen.media.audio import read_wav
from gvmgen.pipeline import ScoreSettings, compose, finish, prepare


@pytest.mark.slow
def test_two_videos_prepared_apart_are_composed_together_and_finished_apart(tiny_model, fixtures, tmp_path):
    settings = ScoreSettings(generation=GenerationSettings(seed=0, stitch="parallel"))
    names = ["testvideo", "counter"]
    prepared = [prepare(tiny_model, fixtures / "video" / f"{n}.mp4", settings) for n in names]
    assert prepared[0].tokens.cuts == pytest.approx([1.001, 6.006, 13.146], abs=1e-3)
    tracks = compose(tiny_model, prepared, settings)
    for video, track, name in zip(prepared, tracks, names):
        done = finish(video, track, tiny_model.config.sample_rate, tmp_path / f"{name}.mp4", settings)
        audio, rate = read_wav(done.track)
        assert abs(len(audio) / rate - video.analysis.info.duration) <= 0.02
        assert abs(done.loudness.output_lufs + 14) <= 0.5 and done.video.is_file()


def test_a_video_too_short_to_score_is_refused_before_generation(tiny_model, tmp_path):
    import subprocess

    from gvmgen.media.probe import MediaError

    one_frame = tmp_path / "one-frame.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=s=64x64:r=25", "-frames:v", "1",
                    "-c:v", "libx264", str(one_frame)], check=True)
    with pytest.raises(MediaError, match=r"one-frame.mp4: too short to score: 0.04 s of picture \(the minimum is 0.5 s\)"):
        prepare(tiny_model, one_frame, ScoreSettings())
