"""The alignment probe: does the mechanism make music follow the picture, in content and in time?

No pretrained weights are needed. A procedural catalog where each shot's picture determines its music:
the hue of a shot is the pitch class of its notes, its stripe density the note rate (1, 2 or 4 a
second); cuts fall at random times; videos last 20 s to 3 min. The music is rendered as steady notes
(a tone and its octave, sounding for 60% of each beat) and tokenised by the tiny preset's codec; the tiny preset is trained on it on the CPU, and on
held-out videos we measure

- token agreement: per second, the overlap of the generated and the true codebook-0 token histograms
  (1 = the same sound), against the same for the true tokens of a random other second (chance);
- conditioning gain: held-out cross-entropy (teacher-forced, so free of sampling noise) with each
  clip's picture swapped for another video's, minus that with its own picture: above 0 when the model
  uses what it sees;
- cut-to-change hit rate: the share of cuts where the generated tokens change within +-0.5 s, against
  the same at shuffled cut times. "Change" at a moment: how much the token histogram of the half-second
  after it differs from that of the half-second before; it counts when above the video's own 75th
  percentile (generated tokens never stand still, so an absolute threshold would count everything).

Variants (three seeds each), every feature-transformation layout: the official one, the residual one,
and the two ablations without queries (mean-pooled patch tokens; the CLS token, the official code's
path without its Q-Former). The best variant (highest
mean conditioning gain) is then run on 3-min videos with the official whole-video conditioning and with
our sliding windows (the same trained models).

To fit the CPU, windows and training clips are 5 s instead of 30 (the mechanism is the same).

    python bench/probe.py [--seeds 3] [--steps 400]
"""

from __future__ import annotations

import argparse
import re
import time

import numpy as np
import torch

from gvmgen.generate import GenerationSettings, MusicGenerator, VisualTokens
from gvmgen.model.checkpoints import fresh_model
from gvmgen.model.config import preset
from gvmgen.training.dataset import Clip
from gvmgen.training.synthetic import WINDOW_S, Tokenised, make_video
from gvmgen.training.trainer import Trainer, TrainSettings

CHANGE_PERCENTILE = 75     # a change counts when above this percentile of the video's own changes


# variant -> feature-transformation layout
VARIANTS = {
    "official": "official",
    "residual": "residual",
    "mean-pooled patches (no queries)": "mean-pool",
    "CLS token (no queries)": "cls",
}


def variant_config(name: str):
    config = preset("tiny")
    config.feature_transformation = VARIANTS[name]
    return config


def generate(model, videos: list[Tokenised], condition: str, seed: int) -> list[torch.Tensor]:
    """Codebook-0 tokens for each video, window by window, each frame from the window that owns it."""
    # cut_snap_s=0: seams stay where they fall, so a change at a cut is the model's, not a seam's
    generator = MusicGenerator(model, GenerationSettings(stitch="parallel", window_s=WINDOW_S, overlap_s=1.0,
                                                         cut_snap_s=0.0, seed=seed, condition=condition,
                                                         batch_size=64))
    with torch.no_grad():
        inputs = [VisualTokens(model.tokens_from_patches(v.patches.float()), torch.from_numpy(v.video.times).double(),
                               v.video.duration, v.video.cuts) for v in videos]
    out = []
    for v, composed in zip(videos, generator.compose_windows(inputs)):
        tokens, plan = torch.zeros(v.codes.shape[-1], dtype=torch.long), composed.plan
        for k, w in enumerate(plan):
            start = w.start if k == 0 else (plan[k - 1].end + w.start) // 2
            end = w.end if k == len(plan) - 1 else (w.end + plan[k + 1].start) // 2
            tokens[start:end] = composed.codes[k][0, start - w.start:end - w.start].cpu()
        out.append(tokens[: v.codes.shape[-1]])
    return out


def histogram(tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    h = torch.bincount(tokens, minlength=vocab).float()
    return h / h.sum().clamp(min=1)


def agreement(generated: torch.Tensor, truth: torch.Tensor, rate: int, rng: np.random.Generator) -> tuple[float, float]:
    """Mean per-second histogram overlap with the truth, and with the truth of a random other second."""
    vocab = 2049
    seconds = len(truth) // rate
    same, chance = [], []
    for s in range(seconds):
        g = histogram(generated[s * rate:(s + 1) * rate], vocab)
        same.append(torch.minimum(g, histogram(truth[s * rate:(s + 1) * rate], vocab)).sum().item())
        o = int(rng.integers(seconds))
        chance.append(torch.minimum(g, histogram(truth[o * rate:(o + 1) * rate], vocab)).sum().item())
    return float(np.mean(same)), float(np.mean(chance))


def change_curve(tokens: torch.Tensor, rate: int, half: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(times, change): 1 - overlap of the token histograms of the half-seconds before and after."""
    n, w = len(tokens), int(half * rate)
    times, change = [], []
    for i in range(w, n - w, rate // 10):
        before, after = histogram(tokens[i - w:i], 2049), histogram(tokens[i:i + w], 2049)
        times.append(i / rate)
        change.append(1 - torch.minimum(before, after).sum().item())
    return np.array(times), np.array(change)


def cut_hits(tokens: torch.Tensor, cuts: list[float], duration: float, rate: int, rng: np.random.Generator,
             shuffles: int = 50) -> tuple[float, float]:
    times, change = change_curve(tokens, rate)
    threshold = np.percentile(change, CHANGE_PERCENTILE)

    def rate_at(moments) -> float:
        return float(np.mean([(change[np.abs(times - c) <= 0.5].max(initial=0) > threshold) for c in moments]))

    baseline = np.mean([rate_at(rng.uniform(1, duration - 1, len(cuts))) for _ in range(shuffles)])
    return rate_at(cuts), float(baseline)


def train(name: str, clips: list[Clip], seed: int, steps: int):
    torch.manual_seed(seed)
    model = fresh_model(variant_config(name))
    settings = TrainSettings(steps=steps, batch_size=8, lr=3e-3, warmup_steps=30, weight_decay=0.0, lm="full",
                             checkpoint_every=10 ** 9, eval_every=10 ** 9, seed=seed)
    import tempfile

    with tempfile.TemporaryDirectory() as work:
        Trainer(model, clips, [], settings, work).run()
    return model.eval()


def picture_use(model, videos: list[Tokenised]) -> dict:
    """The trainer's validation measures of picture use: the conditioning gain (held-out cross-entropy with
    each clip's picture taken from another clip, minus that with its own: > 0 when the model uses what it
    sees) and the frame tokens' spread across frames (near 0: the visual side ignores the picture)."""
    import tempfile

    clips = [c for v in videos for c in v.clips(model.config.frame_rate)]
    with tempfile.TemporaryDirectory() as work:
        measured = Trainer(model, clips, [], TrainSettings(steps=0, batch_size=8), work).evaluate(clips)
    model.requires_grad_(False)
    return {"conditioning_gain": measured["conditioning_gain"], "spread": measured["spread"]}


def evaluate(model, videos: list[Tokenised], condition: str, seed: int) -> dict:
    rate = model.config.frame_rate
    rng = np.random.default_rng(seed)
    generated = generate(model, videos, condition, seed)
    agree, chance, hits, shuffled = [], [], [], []
    for tokens, v in zip(generated, videos):
        a, c = agreement(tokens, v.codes[0].long(), rate, rng)
        h, b = cut_hits(tokens, v.video.cuts, v.video.duration, rate, rng)
        agree.append(a), chance.append(c), hits.append(h), shuffled.append(b)
    return {"agreement": np.mean(agree), "agreement_chance": np.mean(chance), "hit_rate": np.mean(hits),
            "hit_rate_shuffled": np.mean(shuffled), **picture_use(model, videos)}


def slug(name: str) -> str:
    return re.sub(r"\W+", "_", name.split(" (")[0]).strip("_")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--train-videos", type=int, default=24)
    parser.add_argument("--test-videos", type=int, default=6)
    parser.add_argument("--long-videos", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    began = time.perf_counter()

    base = fresh_model(preset("tiny"))           # the frozen encoders every variant shares
    size, rate = base.config.image_size, base.config.sample_rate
    data_rng = np.random.default_rng(1234)
    with torch.no_grad():
        train_set = [Tokenised(base, make_video(data_rng, data_rng.uniform(20, 60), size, rate))
                     for _ in range(args.train_videos)]
        test_set = [Tokenised(base, make_video(data_rng, data_rng.uniform(20, 60), size, rate))
                    for _ in range(args.test_videos)]
        long_set = [Tokenised(base, make_video(data_rng, 180.0, size, rate)) for _ in range(args.long_videos)]
    clips = [c for v in train_set for c in v.clips(base.config.frame_rate)]
    truth = np.mean([cut_hits(v.codes[0].long(), v.video.cuts, v.video.duration, base.config.frame_rate,
                              np.random.default_rng(0))[0] for v in test_set])
    print(f"catalog: {len(train_set)} training videos ({len(clips)} clips of <= {WINDOW_S:g} s), "
          f"{len(test_set)} held-out 20-60 s, {len(long_set)} held-out 3-min; true tokens' cut hit rate "
          f"{truth:.2f} ({time.perf_counter() - began:.0f} s)", flush=True)

    rows: dict[str, list[dict]] = {}
    models: dict[str, list] = {}
    for seed in range(args.seeds):
        for name in VARIANTS:
            at_start = picture_use(fresh_model(variant_config(name)), test_set)["spread"]
            model = train(name, clips, seed, args.steps)
            models.setdefault(name, []).append(model)
            rows.setdefault(name, []).append(evaluate(model, test_set, "window", seed))
            rows[name][-1]["spread_kept"] = rows[name][-1]["spread"] / at_start  # what the collapse monitor reads
            print(f"seed {seed} {name}: {rows[name][-1]} ({time.perf_counter() - began:.0f} s)", flush=True)
    best = max(VARIANTS, key=lambda name: np.mean([r["conditioning_gain"] for r in rows[name]]))
    sliding, whole = f"3-min, sliding windows ({best})", f"3-min, whole video, official conditioning ({best})"
    for seed, model in enumerate(models[best]):
        rows.setdefault(sliding, []).append(evaluate(model, long_set, "window", seed))
        rows.setdefault(whole, []).append(evaluate(model, long_set, "video", seed))
        print(f"seed {seed} 3-min: {rows[sliding][-1]} / {rows[whole][-1]} ({time.perf_counter() - began:.0f} s)",
              flush=True)

    def cell(name, key):
        values = [r[key] for r in rows[name]]
        return f"{np.mean(values):.3f} ± {np.std(values):.3f}"

    print(f"\n| variant ({args.seeds} seeds) | token agreement | (chance) | cut hit rate | (shuffled cuts) "
          f"| conditioning gain (nats) | frame-token spread, of its value at step 0 |")
    print("|---|---|---|---|---|---|---|")
    for name in rows:
        print(f"| {name} | {cell(name, 'agreement')} | {cell(name, 'agreement_chance')} | {cell(name, 'hit_rate')} "
              f"| {cell(name, 'hit_rate_shuffled')} | {cell(name, 'conditioning_gain')} "
              f"| {cell(name, 'spread_kept') if 'spread_kept' in rows[name][0] else '(same models)'} |")

    def compare(label, better, worse, key, at_least=False, against=None):
        """The claim: `better` above `worse` by more than the spread over seeds (or, `at_least`, not
        below it by more than the spread); `against`: compared with `worse`'s measure of that name."""
        a, b = [r[key] for r in rows[better]], [r[against or key] for r in rows[worse]]
        spread = max(np.std(a), np.std(b))
        gap = np.mean(a) - np.mean(b)
        holds = gap >= -spread if at_least else gap > spread
        print(f"RESULT {label}_{key}_gap={gap:+.4f} spread={spread:.4f} {'holds' if holds else 'does not hold'}")

    print()
    for key in ("agreement", "hit_rate"):
        for name in VARIANTS:  # above chance by more than the spread over seeds?
            compare(f"{slug(name)}_vs_chance", name, name, key, against=f"{key}_chance" if key == "agreement"
                    else "hit_rate_shuffled")
    for key in ("agreement", "hit_rate", "conditioning_gain"):
        compare("best_vs_official", best, "official", key)
        compare("best_vs_mean_pool", best, "mean-pooled patches (no queries)", key, at_least=True)
    for key in ("agreement", "hit_rate"):  # the same trained models: only the conditioning differs
        compare("sliding_vs_whole_video_3min", sliding, whole, key)
    gains = {name: [r["conditioning_gain"] for r in rows[name]] for name in VARIANTS}
    print(f"RESULT conditioning_gain_official={np.mean(gains['official']):.4f}")
    print(f"RESULT best_variant={slug(best)}")
    print(f"RESULT conditioning_gain_best={np.mean(gains[best]):.4f}")
    print(f"RESULT conditioning_gain_best_spread={np.std(gains[best]):.4f}")
    margin = np.mean(gains[best]) - np.mean(gains["official"])  # the bar: more than twice the spread
    print(f"RESULT best_minus_official_gain={margin:+.4f} twice_spread={2 * np.std(gains[best]):.4f} "
          f"{'holds' if margin > 2 * np.std(gains[best]) else 'does not hold'}")
    print(f"probe took {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
