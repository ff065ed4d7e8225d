"""Training clips: cut at shots, split by video, cached as shards that round-trip."""

import pytest
import torch

from gvmgen.media.probe import MediaError
from gvmgen.training.dataset import build_clips, load_shard, paired_music_key, plan_clips, save_shard, split_of


def test_clips_end_at_a_cut_near_their_nominal_end_and_short_tails_are_dropped():
    assert plan_clips(70.0, cuts=[27.0, 40.0]) == [(0.0, 27.0), (27.0, 57.0), (57.0, 70.0)]
    assert plan_clips(33.0, cuts=[]) == [(0.0, 30.0)]                 # a 3-s tail is too short to train on
    assert plan_clips(4.0, cuts=[]) == []
    assert plan_clips(10.0, cuts=[3.0]) == [(0.0, 10.0)]


def test_the_split_is_by_video_and_stable():
    splits = [split_of(f"sha256:{i}") for i in range(400)]
    assert splits == [split_of(f"sha256:{i}") for i in range(400)]
    assert 20 <= splits.count("validation") <= 60


def test_music_pairs_by_name_beside_the_video():
    keys = {"a/one.mp4", "a/one.flac", "two.mp4", "three.mp4", "three.wav"}
    assert [paired_music_key(k, keys) for k in ("a/one.mp4", "two.mp4", "three.mp4")] == ["a/one.flac", None, "three.wav"]


def test_clips_carry_patch_tokens_and_codes_and_round_trip_through_a_shard(tiny_model, fixtures, tmp_path):
    clips = build_clips(tiny_model, fixtures / "video" / "testvideo.mp4", fixtures / "music" / "bach.mp3")
    # bach.mp3 is 10 s, so the 24-s video gives one 10-s clip: music and picture end together.
    assert [(c.start, c.end) for c in clips] == [(0.0, pytest.approx(10.03, abs=0.01))]
    (clip,) = clips
    k, rate = tiny_model.config.num_codebooks, tiny_model.config.frame_rate
    assert clip.codes.dtype == torch.int16 and clip.codes.shape[0] == k
    assert abs(clip.codes.shape[1] - 10.03 * rate) <= 1
    assert clip.patches.dtype == torch.float16 and len(clip.patches) == len(clip.times) >= 10
    assert len(torch.unique(clip.codes[0])) > 50           # real music gets varied codes, not one
    again = load_shard(save_shard(tmp_path / "v.safetensors", clips))
    assert torch.equal(again[0].codes, clip.codes) and torch.equal(again[0].patches, clip.patches)
    assert (again[0].start, again[0].end) == (clip.start, clip.end)
    assert [p.name for p in tmp_path.iterdir()] == ["v.safetensors"]


def test_a_video_without_music_is_refused_by_name(tiny_model, fixtures):
    with pytest.raises(MediaError, match="counter.mp4: has no audio track and no paired music file"):
        build_clips(tiny_model, fixtures / "video" / "counter.mp4")
