"""Windowed generation: window planning, conditioning per window, guidance, exact lengths."""

import numpy as np
import pytest
import torch

from gvmgen.generate import GenerationSettings, MusicGenerator, VisualTokens, Window, plan_windows
from gvmgen.model.decoding import CachedMusicgen


def _video(duration, d=64, seed=0, cuts=()):
    n = int(np.ceil(duration))
    g = torch.Generator().manual_seed(seed)
    return VisualTokens(torch.randn(n, d, generator=g), torch.arange(n, dtype=torch.float64), float(duration), list(cuts))


def test_short_video_is_one_window():
    assert plan_windows(250, window=1500, overlap=600) == [Window(0, 250, 0)]


@pytest.mark.parametrize("prompted", [False, True])
def test_windows_cover_the_video_and_overlap_by_the_overlap(prompted):
    windows = plan_windows(15050, window=1500, overlap=600, prompted=prompted)
    assert windows[0].start == 0 and windows[-1].end == 15050
    assert all(w.end - w.start <= 1500 for w in windows)
    assert all(a.end - b.start == 600 for a, b in zip(windows, windows[1:]))
    assert [w.prompt for w in windows] == [0] + [600 if prompted else 0] * (len(windows) - 1)


def test_a_seam_near_a_cut_moves_to_the_cut_and_a_far_cut_is_ignored():
    nominal = plan_windows(4000, window=1500, overlap=600)
    seam = (nominal[0].end + nominal[1].start) // 2
    moved = plan_windows(4000, window=1500, overlap=600, cuts=[seam - 150], snap=200)
    assert (moved[0].end + moved[1].start) // 2 == seam - 150
    assert plan_windows(4000, window=1500, overlap=600, cuts=[seam - 300], snap=200) == nominal


def test_each_window_is_conditioned_on_the_frames_of_its_own_span_only(tiny_model):
    video = _video(95)
    gen = MusicGenerator(tiny_model, GenerationSettings(stitch="parallel"))
    for window in gen.plan(video):
        start, end = window.start / 50, window.end / 50
        inside = [i for i, t in enumerate(video.times.tolist()) if start <= t < end]
        torch.testing.assert_close(gen.window_condition(video, window), video.tokens[inside])


def _first_step_logits(model, gen, video):
    out = []
    for window in gen.plan(video):
        cond = gen.window_condition(video, window)[None]
        cache = CachedMusicgen(model.lm, cond, torch.ones(cond.shape[:2], dtype=torch.bool), max_steps=1)
        out.append(cache.step(torch.full((1, 4, 1), model.pad_token)))
    return out


def test_changing_one_frame_changes_only_the_windows_that_cover_it(tiny_model):
    video = _video(95)
    gen = MusicGenerator(tiny_model, GenerationSettings(stitch="parallel"))
    before = _first_step_logits(tiny_model, gen, video)
    video.tokens[40] += 1.0                         # the frame at t = 40 s
    after = _first_step_logits(tiny_model, gen, video)
    covering = [w.start <= 40 * 50 < w.end for w in gen.plan(video)]
    assert any(covering) and not all(covering)
    for cover, a, b in zip(covering, before, after):
        assert (not torch.allclose(a, b)) == cover


def test_guidance_combines_the_condition_with_the_null_condition(tiny_model):
    video = _video(3)
    gen = MusicGenerator(tiny_model, GenerationSettings(guidance_scale=3.0, temperature=0))
    cond = gen.window_condition(video, gen.plan(video)[0])
    codes = gen.sample([cond], [1])[0]              # greedy, so the first token is the guided argmax
    bos = torch.full((1, 4, 1), tiny_model.pad_token)
    with torch.no_grad():
        c = CachedMusicgen(tiny_model.lm, cond[None], torch.ones(1, len(cond), dtype=torch.bool), 1).step(bos)
        u = CachedMusicgen(tiny_model.lm, tiny_model.null_tokens(1), torch.ones(1, 1, dtype=torch.bool), 1).step(bos)
    guided = u + 3.0 * (c - u)
    assert codes[0, 0] == guided[0, 0].argmax()
    assert guided[0, 0].argmax() != c[0, 0].argmax() or guided[0, 0].argmax() != u[0, 0].argmax()


def test_the_same_seed_gives_the_same_music(tiny_model):
    video = _video(4)
    a, b, c = (MusicGenerator(tiny_model, GenerationSettings(seed=s)).generate([video])[0] for s in (5, 5, 6))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.slow
@pytest.mark.parametrize("stitch", ["continue", "parallel"])
def test_generated_length_is_exact_for_any_duration(tiny_model, stitch):
    durations = [5, 30, 31, 95, 301]
    gen = MusicGenerator(tiny_model, GenerationSettings(stitch=stitch, seed=0, batch_size=16))
    seen = []
    tracks = gen.generate([_video(d, seed=i) for i, d in enumerate(durations)], progress=lambda d, t: seen.append((d, t)))
    assert [len(t) for t in tracks] == [d * 32000 for d in durations]
    assert seen[-1][0] == seen[-1][1]               # progress reaches its total
    assert all(np.isfinite(t).all() and np.abs(t).max() > 0 for t in tracks)


def test_continued_windows_start_with_their_prompt(tiny_model):
    gen = MusicGenerator(tiny_model, GenerationSettings(seed=0))
    prompt = torch.randint(0, 2048, (4, 30))
    codes = gen.sample([torch.randn(3, 64)], [50], [prompt])[0]
    assert codes.shape == (4, 50) and torch.equal(codes[:, :30], prompt)
