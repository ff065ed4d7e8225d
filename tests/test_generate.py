"""Windowed generation: conditioning per window, guidance, exact lengths (the planning: test_windows.py)."""

import numpy as np
import pytest
import torch

from gvmgen.generate import Composer, GenerationSettings, MusicGenerator, VisualTokens, window_seed
from gvmgen.model.decoding import batch_bucket, sample_top_k
from gvmgen.model.delay import delay, undelay


def _video(duration, d=64, seed=0, cuts=()):
    n = int(np.ceil(duration))
    g = torch.Generator().manual_seed(seed)
    return VisualTokens(torch.randn(n, d, generator=g), torch.arange(n, dtype=torch.float64), float(duration), list(cuts),
                        identity=f"video {seed}")


def test_each_window_is_conditioned_on_the_frames_of_its_own_span_only(tiny_model):
    video = _video(95)
    gen = MusicGenerator(tiny_model, GenerationSettings(stitch="parallel"))
    for window in gen.plan(video):
        start, end = window.start / 50, window.end / 50
        inside = [i for i, t in enumerate(video.times.tolist()) if start <= t < end]
        torch.testing.assert_close(gen.window_condition(video, window), video.tokens[inside])


def _first_step_logits(model, condition):
    """(1, K, V) logits of the first step for one window's (F, D) condition."""
    decoder = model.static_decoder()
    decoder.reset(condition[None], torch.ones(1, len(condition), dtype=torch.bool), steps=1)
    return decoder.feed(torch.full((1, 4, 1), model.pad_token))


def _first_step_logits_per_window(model, gen, video):
    return [_first_step_logits(model, gen.window_condition(video, window)) for window in gen.plan(video)]


def test_changing_one_frame_changes_only_the_windows_that_cover_it(tiny_model):
    video = _video(95)
    gen = MusicGenerator(tiny_model, GenerationSettings(stitch="parallel"))
    before = _first_step_logits_per_window(tiny_model, gen, video)
    video.tokens[40] += 1.0                         # the frame at t = 40 s
    after = _first_step_logits_per_window(tiny_model, gen, video)
    covering = [w.start <= 40 * 50 < w.end for w in gen.plan(video)]
    assert any(covering) and not all(covering)
    for cover, a, b in zip(covering, before, after):
        assert (not torch.allclose(a, b)) == cover


def test_guidance_combines_the_condition_with_the_null_condition(tiny_model):
    video = _video(3)
    gen = MusicGenerator(tiny_model, GenerationSettings(guidance_scale=3.0, temperature=0))
    cond = gen.window_condition(video, gen.plan(video)[0])
    codes = gen.sample([cond], [1])[0]              # greedy, so the first token is the guided argmax
    c = _first_step_logits(tiny_model, cond)
    u = _first_step_logits(tiny_model, tiny_model.null_tokens(1)[0])
    guided = u + 3.0 * (c - u)
    assert codes[0, 0] == guided[0, 0].argmax()
    assert guided[0, 0].argmax() != c[0, 0].argmax() or guided[0, 0].argmax() != u[0, 0].argmax()


def test_the_same_seed_gives_the_same_music(tiny_model):
    video = _video(4)
    a, b, c = (MusicGenerator(tiny_model, GenerationSettings(seed=s)).generate([video])[0] for s in (5, 5, 6))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("stitch", ["continue", "parallel"])
def test_a_video_gets_the_same_music_whichever_videos_share_its_batches(tiny_model, stitch):
    """Alone, or composed with others (another row, another bucket, other batch-mates, two at a time so
    that it joins mid-catalog): the same seed gives a video the same tokens. Another picture gets other
    music from the same seed."""
    settings = GenerationSettings(stitch=stitch, window_s=1.0, overlap_s=0.25, batch_size=4, seed=3)
    video = _video(2.4, seed=7)
    alone = MusicGenerator(tiny_model, settings).compose_windows([video])[0].codes
    others = [_video(1.5, seed=8), _video(3.2, seed=9), _video(0.8, seed=10)]
    for batch, at_once in (([video, *others], None), ([*others, video], 2)):
        together = MusicGenerator(tiny_model, settings).compose_windows(batch, at_once=at_once)
        codes = together[next(i for i, v in enumerate(batch) if v is video)].codes
        assert len(codes) == len(alone) == 3 and all(torch.equal(a, b) for a, b in zip(alone, codes))
    renamed = VisualTokens(video.tokens, video.times, video.duration, video.cuts, identity="another picture")
    assert not torch.equal(MusicGenerator(tiny_model, settings).compose_windows([renamed])[0].codes[0], alone[0])


def test_each_window_draws_each_token_with_its_probability():
    """The exponential race over a window's own noise is a multinomial draw: 40,000 windows (seeds) over
    four tokens come out in proportion to their probabilities, for each codebook and at each position."""
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(40_000, 2, 4)
    seeds = torch.tensor([window_seed(0, "v", i) for i in range(40_000)])
    for position in (0, 1, 700):
        tokens = sample_top_k(logits, 4, 1.0, seeds, torch.tensor([position]))          # (W, K)
        for codebook in range(2):
            share = torch.bincount(tokens[:, codebook], minlength=4) / len(seeds)
            assert torch.allclose(share, probs, atol=4 * (0.25 / len(seeds)) ** 0.5)   # four standard errors
    first, again, later = (sample_top_k(logits[:64], 4, 1.0, seeds[:64], torch.tensor([p])) for p in (0, 0, 1))
    assert torch.equal(first, again) and not torch.equal(first, later)
    assert torch.equal(sample_top_k(logits[:64], 4, 1.0, seeds[:64].flip(0), torch.tensor([0])), first.flip(0))


@pytest.mark.slow
@pytest.mark.parametrize("stitch", ["continue", "parallel"])
def test_generated_length_is_exact_for_any_duration(tiny_model, stitch):
    durations = [5, 30, 31, 95]  # one window, exactly one, just over one, four
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


def _plain_loop_codes(model, conditions, lengths, prompts, seed, guidance=3.0, top_k=250, temperature=1.0):
    """The reference: the sampling loop as it was before the static decoder, written plainly: at every
    step transformers' own forward over the whole prefix (no cache), guidance against null rows, and
    each window's draw over the top-k from its seed (test_each_window_draws_each_token_with_its_probability
    checks the draw)."""
    k, pad, b = 4, model.pad_token, len(conditions)
    steps = max(lengths) + k - 1
    forced = torch.full((b, k, steps), pad)
    for i, (n, prompt) in enumerate(zip(lengths, prompts)):
        frames = torch.full((1, k, n), -1)
        if prompt is not None:
            frames[0, :, :prompt.shape[-1]] = prompt
        forced[i, :, :n + k - 1] = delay(frames, pad)[0]
    known = min(p.shape[-1] if p is not None else 0 for p in prompts)
    f = max(len(c) for c in conditions)
    rows = 2 * b if guidance != 1.0 else b
    condition, mask = torch.zeros(rows, f, 64), torch.zeros(rows, f, dtype=torch.long)
    for i, c in enumerate(conditions):
        condition[i, :len(c)], mask[i, :len(c)] = c, 1
    mask[b:, 0] = 1                                   # null rows: one zero token
    seeds = torch.tensor([window_seed(seed, "", i) for i in range(b)])
    inputs = torch.full((b, k, steps + 1), pad)
    inputs[:, :, 1:known + 1] = forced[:, :, :known]
    for j in range(known, steps):
        ids = inputs[:, :, :j + 1].repeat(rows // b, 1, 1).reshape(rows * k, j + 1)
        with torch.no_grad():
            out = model.lm(input_ids=ids, encoder_hidden_states=condition, encoder_attention_mask=mask, use_cache=False)
        logits = out.logits.reshape(rows, k, j + 1, -1)[:, :, -1]
        if rows > b:
            logits = logits[b:] + guidance * (logits[:b] - logits[b:])
        token = sample_top_k(logits, top_k, temperature, seeds, torch.tensor([j]))
        inputs[:, :, j + 1] = torch.where(forced[:, :, j] >= 0, forced[:, :, j], token)
    frames = undelay(inputs[:, :, 1:])
    return [frames[i, :, :n] for i, n in enumerate(lengths)]


@pytest.mark.parametrize("case", ["one window", "two prompted windows", "no guidance"])
def test_the_static_decoder_samples_exactly_what_the_plain_loop_samples(tiny_model, case):
    g = torch.Generator().manual_seed(1)
    conditions = [torch.randn(n, 64, generator=g) for n in (5, 3)]
    lengths, prompts, guidance = [40, 33], [None, None], 3.0
    if case == "one window":
        conditions, lengths, prompts = conditions[:1], lengths[:1], prompts[:1]
    elif case == "two prompted windows":
        prompts = [torch.randint(0, 2048, (4, 12), generator=g), torch.randint(0, 2048, (4, 7), generator=g)]
    else:
        guidance = 1.0
    gen = MusicGenerator(tiny_model, GenerationSettings(seed=11, guidance_scale=guidance))
    ours = gen.sample(conditions, lengths, prompts)
    reference = _plain_loop_codes(tiny_model, conditions, lengths, prompts, seed=11, guidance=guidance)
    for a, b in zip(ours, reference):
        assert torch.equal(a, b)


def test_windows_padded_up_to_a_bucket_do_not_change_the_real_ones(tiny_model):
    """Three windows run as a bucket of four: greedy tokens equal the plain loop's on the three."""
    g = torch.Generator().manual_seed(2)
    conditions = [torch.randn(n, 64, generator=g) for n in (4, 2, 6)]
    lengths = [30, 21, 26]
    gen = MusicGenerator(tiny_model, GenerationSettings(seed=0, temperature=0))
    ours = gen.sample(conditions, lengths)
    reference = _plain_loop_codes(tiny_model, conditions, lengths, [None] * 3, seed=0, temperature=0)
    for a, b in zip(ours, reference):
        assert torch.equal(a, b)


@pytest.mark.parametrize("stitch, used_buckets", [("continue", {4, 2, 1}), ("parallel", {4})])
def test_the_buckets_captured_ahead_are_the_ones_generation_uses(tiny_model, stitch, used_buckets):
    used = []

    class Recording(MusicGenerator):
        def sample(self, conditions, lengths, prompts=None, seeds=None):
            used.append(batch_bucket(len(conditions)))
            return super().sample(conditions, lengths, prompts, seeds)

    generator = Recording(tiny_model, GenerationSettings(stitch=stitch, window_s=1.0, overlap_s=0.25, batch_size=4))
    videos = [_video(duration) for duration in (4, 2, 3)]
    generator.compose_windows(videos)
    assert set(used) == used_buckets     # continue: stages shrink as videos run out of windows
    assert set(used) <= set(generator.buckets(len(videos))) and max(used) == max(generator.buckets(len(videos)))


def test_a_video_joins_the_batch_as_soon_as_another_one_is_done(tiny_model):
    """Composing two at a time, videos of 1, 3 and 2 windows take three full passes: the third video
    starts in the place the first one leaves, not after the second one's last window."""
    passes = []

    class Recording(MusicGenerator):
        def sample(self, conditions, lengths, prompts=None, seeds=None):
            passes.append([p is not None for p in prompts])
            return super().sample(conditions, lengths, prompts, seeds)

    generator = Recording(tiny_model, GenerationSettings(window_s=1.0, overlap_s=0.25, batch_size=4))
    videos = [_video(duration, seed=i) for i, duration in enumerate((0.8, 2.4, 1.5))]
    assert [len(generator.plan(v)) for v in videos] == [1, 3, 2]
    tracks = generator.generate(videos, at_once=2)
    assert passes == [[False, False], [True, False], [True, True]]   # (video 0, 1), (1, 2), (1, 2)
    assert [len(t) for t in tracks] == [round(v.duration * 32000) for v in videos]
    passes.clear()
    generator.generate(videos)                                          # all at once: stages shrink
    assert [len(p) for p in passes] == [3, 2, 1]


def test_a_stage_that_fails_leaves_every_video_where_it_was(tiny_model):
    """Three videos one window a pass: the stage's second pass fails (out of memory, say), so the first
    pass's window is kept back too: no video is a window ahead of the others when the stage is run again."""
    class FailingSecondPass(MusicGenerator):
        calls = 0

        def sample(self, conditions, lengths, prompts=None, seeds=None):
            FailingSecondPass.calls += 1
            if FailingSecondPass.calls == 2:
                raise RuntimeError("CUDA out of memory")
            return super().sample(conditions, lengths, prompts, seeds)

    composer = Composer(FailingSecondPass(tiny_model, GenerationSettings(window_s=1.0, overlap_s=0.25, batch_size=1)))
    for key, duration in enumerate((0.8, 1.5, 0.8)):
        composer.add(key, _video(duration, seed=key))
    with pytest.raises(RuntimeError, match="out of memory"):
        composer.stage()
    assert [len(c.codes) for c in composer.videos.values()] == [0, 0, 0]
    assert [key for key, _ in composer.stage()] == [0, 2]          # one-window videos leave, done
    assert [len(c.codes) for c in composer.videos.values()] == [1]
