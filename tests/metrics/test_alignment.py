"""The paper's CMR and TA evaluators learn a synthetic pairing: matched pairs score above mismatched."""

import torch

from gvmgen.metrics.alignment import CrossModalRelevance, TemporalAlignment, train_evaluator


def synthetic_pairs(count=256, seconds=8, video_dim=12, music_dim=6, seed=0):
    """Each second of video is a random 'scene'; its music is a fixed nonlinear function of the scene."""
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(count, seconds, video_dim, generator=g)
    mix = torch.randn(video_dim, music_dim, generator=g)
    music = torch.tanh(video @ mix) + 0.1 * torch.randn(count, seconds, music_dim, generator=g)
    return video, music


def test_cmr_scores_matched_pairs_above_mismatched_ones():
    torch.manual_seed(0)
    video, music = synthetic_pairs()
    model = CrossModalRelevance(12, 6, width=64, layers=2, heads=4)
    losses = train_evaluator(model, video[:200], music[:200], steps=150, batch_size=32, lr=1e-3)
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    held_video, held_music = video[200:], music[200:]
    matched = model.score(held_video, held_music)
    mismatched = model.score(held_video, held_music.roll(1, dims=0))
    assert (matched > mismatched).float().mean() > 0.9


def test_ta_scores_aligned_music_above_the_same_music_shifted_in_time():
    torch.manual_seed(0)
    video, music = synthetic_pairs()
    model = TemporalAlignment(12, 6, width=64, layers=2, heads=4)
    train_evaluator(model, video[:200], music[:200], steps=150, batch_size=32, lr=1e-3)
    aligned = model.score(video[200:], music[200:])
    shifted = model.score(video[200:], music[200:].roll(3, dims=1))
    assert aligned.mean() > 0.5 and (aligned > shifted).float().mean() > 0.9


def test_the_default_shape_is_the_papers():
    model = CrossModalRelevance(1024, 128)
    layers = model.video.encoder.layers
    assert len(layers) == 4 and layers[0].self_attn.num_heads == 4 and layers[0].self_attn.embed_dim == 512
