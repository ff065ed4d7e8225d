"""Generation throughput: our batched, cached generator vs. transformers' generate() per window.

Both run the same `small`-shaped (or tiny) LM with random weights and the same settings: guidance 3.0
with the zero null condition, top-k 250, temperature 1, one token per frame of a 1 fps window.
Throughput is audio-seconds generated per wall-second. Also the cost of one decoding step late in a
30-s window (token 1400) against an early one (token 100).

    python bench/generation.py [--preset small|tiny] [--seconds 10] [--device cuda --dtype bfloat16]
"""

from __future__ import annotations

import argparse
import time

import torch

from gvmgen.generate import GenerationSettings, MusicGenerator
from gvmgen.model.checkpoints import fresh_model
from gvmgen.model.config import preset
from gvmgen.model.decoding import CachedMusicgen


def conditions(model, batch, seconds, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = model.config.lm["hidden_size"]
    p = next(model.lm.parameters())
    return [(torch.randn(int(seconds), d, generator=g) * 0.1).to(p.device, p.dtype) for _ in range(batch)]


def clock(model):
    if next(model.lm.parameters()).is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter()


def ours(model, batch, seconds):
    gen = MusicGenerator(model, GenerationSettings(seed=0, batch_size=batch))
    frames = int(seconds * model.config.frame_rate)
    conds = conditions(model, batch, seconds)
    t = clock(model)
    gen.sample(conds, [frames] * batch)
    return batch * seconds / (clock(model) - t)


def anchor(model, seconds):
    """transformers' MusicgenForCausalLM.generate, once per window (batch 1), guidance by its own processor."""
    lm, k, pad = model.lm, model.config.num_codebooks, model.pad_token
    cond = conditions(model, 1, seconds)[0][None]
    states = torch.cat([cond, torch.zeros_like(cond)])                     # conditional, then null rows
    t = clock(model)
    lm.generate(input_ids=torch.full((k, 1), pad, device=cond.device), encoder_hidden_states=states,
                do_sample=True, top_k=model.config.top_k, temperature=1.0, guidance_scale=model.config.guidance_scale,
                max_new_tokens=int(seconds * model.config.frame_rate) + k - 1, num_return_sequences=1,
                pad_token_id=pad, bos_token_id=pad, decoder_start_token_id=pad)
    return seconds / (clock(model) - t)


def step_time(model, position, batch=8, repeats=10):
    """Seconds per decoding step at `position` for `batch` guided windows (2 * batch rows)."""
    d, k, pad = model.config.lm["hidden_size"], model.config.num_codebooks, model.pad_token
    rows = 2 * batch
    p = next(model.lm.parameters())
    cache = CachedMusicgen(model.lm, torch.randn(rows, 30, d, device=p.device, dtype=p.dtype) * 0.1,
                           torch.ones(rows, 30, dtype=torch.bool, device=p.device), max_steps=position + repeats + 1)
    cache.keys.normal_()                        # a step costs the same whatever the cache holds,
    cache.values.normal_()                      # so fill it instead of prefilling `position` tokens
    cache.position = position
    token = torch.full((rows, k, 1), pad, device=p.device)
    t = clock(model)
    for _ in range(repeats):
        cache.step(token)
    return (clock(model) - t) / repeats


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", choices=["small", "tiny"])
    parser.add_argument("--seconds", type=float, default=10.0, help="window length measured (the model's is 30)")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--parts", default="anchor,ours,steps", help="what to measure (a CUDA error in one "
                        "part poisons the process, so a GPU run may take them in separate processes)")
    args = parser.parse_args()
    parts = args.parts.split(",")
    torch.manual_seed(0)
    model = fresh_model(preset(args.preset)).to(args.device, getattr(torch, args.dtype)).eval()
    where = torch.cuda.get_device_name() if model.lm.device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"preset {args.preset}, {args.seconds:g}-s windows, {args.dtype}, {where}")

    base = anchor(model, args.seconds) if "anchor" in parts else float("nan")
    print(f"anchor  transformers generate(), batch 1: {base:7.3f} audio-s/s")
    results = {}
    for b in [int(x) for x in args.batches.split(",")] if "ours" in parts else []:
        results[b] = ours(model, b, args.seconds)
        print(f"ours    batch {b:>2}: {results[b]:7.3f} audio-s/s  = {results[b] / base:5.2f}x anchor")
    ratios = {}
    for b in (1, 8) if "steps" in parts else ():
        early, late = step_time(model, 100, batch=b), step_time(model, 1400, batch=b)
        ratios[b] = late / early
        print(f"step time, batch {b} guided: {early * 1e3:.1f} ms at token 100, {late * 1e3:.1f} ms at token 1400 "
              f"(ratio {ratios[b]:.2f})")
    for b, r in results.items():
        if b != 8:
            print(f"RESULT generation_speedup_b{b}={r / base:.2f}")
    for b, r in ratios.items():
        print(f"RESULT step_time_ratio_1400_vs_100_b{b}={r:.2f}")
    if 8 in results:  # the headline, last
        print(f"RESULT generation_speedup_b8={results[8] / base:.2f}")


if __name__ == "__main__":
    main()
