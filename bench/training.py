"""Training throughput and memory: one optimizer step on batches of 30-s clips, per LM mode.

Synthetic clips with the real shapes (30 frames of CLIP patch tokens in fp16, 1500 frames of 4
codebooks), a randomly initialised model of the chosen preset; bf16 autocast on CUDA. Prints the
seconds per step, clips per second, the peak GPU memory, and the loss of the first and last steps
(finite: bf16 autocast did not overflow; random codes leave little to learn beyond their frequencies).

    python bench/training.py [--preset small|tiny] [--device cuda] [--steps 12] [--batch 4]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from gvmgen.model.checkpoints import fresh_model
from gvmgen.model.config import preset
from gvmgen.training.dataset import Clip
from gvmgen.training.trainer import Trainer, TrainSettings


def synthetic_clips(model, count: int, seconds: float, seed: int = 0) -> list[Clip]:
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    patches = (cfg.image_size // cfg.clip["patch_size"]) ** 2 + 1
    frames = int(seconds * cfg.frame_rate)
    return [Clip(0.0, seconds, torch.arange(int(seconds)).float(),
                 torch.randn(int(seconds), patches, cfg.clip["hidden_size"], generator=g).half(),
                 torch.randint(0, cfg.lm["vocab_size"], (cfg.num_codebooks, frames), generator=g).to(torch.int16))
            for _ in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="small")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--modes", default="cross,lora,full")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    clips = None
    for mode in args.modes.split(","):
        model = fresh_model(preset(args.preset)).to(args.device)
        clips = clips or synthetic_clips(model, args.batch, args.seconds)
        losses = []
        settings = TrainSettings(steps=args.steps, batch_size=args.batch, lr=1e-3, warmup_steps=2, lm=mode,
                                 checkpoint_every=10 ** 9, eval_every=10 ** 9)
        with tempfile.TemporaryDirectory() as work:
            trainer = Trainer(model, clips, [], settings, work, on_metrics=lambda m: losses.append(m["loss"]))
            trainable = sum(p.numel() for p in trainer.params)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
                torch.cuda.synchronize()
            start = time.perf_counter()
            trainer.s.steps = 2                         # warm-up steps (allocations, kernels), untimed
            trainer.run()
            if cuda:
                torch.cuda.synchronize()
            warm = time.perf_counter()
            trainer.s.steps = args.steps
            trainer.run()
            if cuda:
                torch.cuda.synchronize()
            per_step = (time.perf_counter() - warm) / (args.steps - 2)
        peak = torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else float("nan")
        print(f"{args.preset} lm={mode:5s} trainable {trainable / 1e6:7.1f}M  batch {args.batch} x {args.seconds:g} s: "
              f"{per_step:.3f} s/step, {args.batch / per_step:.1f} clips/s, peak {peak:.1f} GiB, "
              f"loss {losses[0]:.3f} -> {losses[-1]:.3f} (warm-up took {warm - start:.1f} s)", flush=True)
        del model, trainer
        if cuda:
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
