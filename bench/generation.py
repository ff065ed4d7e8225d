"""Generation throughput: the static-shape decoder replayed as CUDA graphs, the same step run eagerly,
and transformers' generate() per window (the anchor), side by side in one run.

All three run the same `small`-shaped (or tiny) LM with random weights and the same settings: guidance
3.0 with the zero null condition, top-k 250, temperature 1, one token per frame of a 1 fps window.
Throughput is audio-seconds generated per wall-second (steady state: each batch size is run once to
capture its graphs, and that capture time is reported apart). Also the mean step time over a window
and the cost of one step late in a 30-s window (token 1400) against an early one (token 100).

The anchor is called the way transformers needs it for a decoder-only MusicGen with an external
condition (`--anchor-call fixed`): an explicit attention mask and an encoder-decoder cache. With
transformers' defaults (`--anchor-call default`, how this bench called it before) it computes
something else: BOS equals the pad token, so the mask it infers hides the first position, and it
makes a plain DynamicCache, into which every layer's cross-attention appends the condition's keys and
values next to the self-attention's, so the cache and the positions grow by F + 1 a step.

    python bench/generation.py [--preset small|tiny] [--seconds 10] [--device cuda --dtype bfloat16]
"""

from __future__ import annotations

import argparse
import inspect
import re
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from gvmgen.generate import GenerationSettings, MusicGenerator
from gvmgen.model.checkpoints import fresh_model
from gvmgen.model.config import preset
from gvmgen.model.decoding import SPAN_STEP, batch_bucket
from gvmgen.model.split_attention import split_attention

EAGER_WARMUP_STEPS = 16   # the eager step has nothing to capture: a few steps warm cuBLAS and the allocator


def conditions(model, batch, seconds, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = model.config.lm["hidden_size"]
    p = next(model.lm.parameters())
    return [(torch.randn(max(1, int(seconds)), d, generator=g) * 0.1).to(p.device, p.dtype) for _ in range(batch)]


def clock(model):
    if next(model.lm.parameters()).is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter()


def ours(model, batch, seconds, graphs):
    """(audio-s per wall-s, mean seconds per step, seconds spent capturing graphs) for one batch of
    windows; a first run warms up (with graphs: a whole window, capturing every span of the bucket;
    eagerly: a few steps), the second is timed."""
    frames = int(seconds * model.config.frame_rate)
    # the measured window is the settings' window: the decoder's cache is sized for it, no larger
    settings = GenerationSettings(seed=0, batch_size=batch, stitch="parallel", window_s=seconds, overlap_s=seconds / 4)
    conds = conditions(model, batch, seconds)
    decoder = model.static_decoder()
    captured = decoder.capture_seconds
    warmup = frames if graphs else EAGER_WARMUP_STEPS
    MusicGenerator(model, settings, cuda_graphs=graphs).sample(conds, [warmup] * batch)
    capture = decoder.capture_seconds - captured
    t = clock(model)
    MusicGenerator(model, settings, cuda_graphs=graphs).sample(conds, [frames] * batch)
    wall = clock(model) - t
    return batch * seconds / wall, wall / (frames + model.config.num_codebooks - 1), capture


def anchor_codes(model, condition, frames, fixed=True, greedy=False):
    """transformers' MusicgenForCausalLM.generate for one window: condition (1, F, D) -> (1, K, frames)
    codes, guided by its own classifier-free guidance processor against the zero null condition."""
    lm, k, pad = model.lm, model.config.num_codebooks, model.pad_token
    states = torch.cat([condition, torch.zeros_like(condition)])            # conditional, then null rows
    extra = {}
    if fixed:
        cache_name = "cache" if "cache" in inspect.signature(lm.prepare_inputs_for_generation).parameters \
            else "past_key_values"
        extra = {"attention_mask": torch.ones((k, 1), dtype=torch.long, device=condition.device),
                 cache_name: EncoderDecoderCache(DynamicCache(), DynamicCache())}
    return lm.generate(input_ids=torch.full((k, 1), pad, device=condition.device), encoder_hidden_states=states,
                       do_sample=not greedy, top_k=model.config.top_k, temperature=1.0,
                       guidance_scale=model.config.guidance_scale, max_new_tokens=frames + k - 1,
                       num_return_sequences=1, pad_token_id=pad, bos_token_id=pad, decoder_start_token_id=pad,
                       **extra)


def anchor(model, seconds, fixed):
    """Audio-s per wall-s of transformers' generate(), once per window (batch 1)."""
    condition = conditions(model, 1, seconds)[0][None]
    t = clock(model)
    anchor_codes(model, condition, int(seconds * model.config.frame_rate), fixed)
    return seconds / (clock(model) - t)


def late_decoder(model, position, batch, room):
    """The static decoder set for `batch` guided windows (2 * batch rows) at `position`, with room for
    `room` more steps; its cache is filled with noise instead of `position` prefilled tokens (a step
    costs the same whatever the cache holds). Returns (decoder, sampling)."""
    d, pad = model.config.lm["hidden_size"], model.pad_token
    p = next(model.lm.parameters())
    sampling = MusicGenerator(model, GenerationSettings(seed=0)).sampling
    rows = 2 * batch
    decoder = model.static_decoder()
    decoder.reset(torch.randn(rows, 30, d, device=p.device, dtype=p.dtype) * 0.1,
                  torch.ones(rows, 30, dtype=torch.bool, device=p.device), steps=position + room + 1)
    decoder.cache[:, :, :rows].normal_()
    decoder.forced[:batch] = -1
    decoder.inputs[:batch] = pad
    decoder.seek(position)
    return decoder, sampling


def step_time(model, position, batch, graphs, repeats=10):
    """Seconds per sampled step at `position` for `batch` guided windows (2 * batch rows)."""
    decoder, sampling = late_decoder(model, position, batch, repeats)
    for _ in range(repeats):   # warm-up: captures the graph of every span the timed steps meet
        decoder.step(batch, sampling, graphs)
    decoder.seek(position)
    t = clock(model)
    for _ in range(repeats):
        decoder.step(batch, sampling, graphs)
    return (clock(model) - t) / repeats


class OperatorCount(TorchDispatchMode):
    """Counts the aten operators dispatched inside it, views left out: each is a kernel on a GPU."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        # _unsafe_view is a reshape that the dispatcher does not mark as a view
        self.count += not (func.is_view or func.overloadpacket is torch.ops.aten._unsafe_view)
        return func(*args, **(kwargs or {}))


def profile(model, batch, position=1400, steps=5):
    """The operators of `steps` eager steps late in a window for `batch` guided windows, by their own
    device time (on CUDA: each kernel's time, which a graph replay spends too), top 20; and how many
    operators (on CUDA: kernels) one step runs, which bounds a replayed step at a few microseconds each."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiled

    decoder, sampling = late_decoder(model, position, batch, 2 * steps + 1)
    decoder.step(batch, sampling, graphs=False)   # warm-up
    with OperatorCount() as ops:
        decoder.step(batch, sampling, graphs=False)
    print(f"RESULT operators_per_step_b{batch}={ops.count}")
    cuda = next(model.lm.parameters()).is_cuda
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profiled(activities=activities) as prof:
        for _ in range(steps):
            decoder.step(batch, sampling, graphs=False)
        clock(model)
    if cuda:
        kernels = sum(e.device_type == DeviceType.CUDA for e in prof.events())
        print(f"RESULT kernels_per_step_b{batch}={kernels / steps:.0f}")
    print(f"profile: {steps} eager steps at token {position}, batch {batch} guided ({2 * batch} rows)")
    print(prof.key_averages().table(sort_by="self_device_time_total" if cuda else "self_cpu_time_total",
                                    row_limit=20, max_name_column_width=60))


def attention_calls(model, batch, position):
    """One layer's self-attention late in a window for `batch` guided windows, per kernel that could run
    it: the span-masked fused call (on CUDA the memory-efficient kernel over the step's span rounded
    to SPAN_STEP, with its mask: the decoder's before `split_attention`), plain products with a softmax,
    and on CUDA: `split_attention` (the decoder's), flash attention over exactly the positions written
    so far (a lower bound: its shapes change every step) and flash attention's variable-length call
    over the whole cache, told the length on the device (capturable; it wants the cache as (R, T, H,
    hd), copied here). Returns (name -> call, bytes of keys and values in the span, layers, span);
    "fused, span" comes first. (A reduction over the same keys and values is no memory roof: on an
    H100 `sum()` read them at 1.1 TB/s, slower than every kernel here.)"""
    decoder, _ = late_decoder(model, position, batch, 1)
    rows, span = 2 * batch, min(decoder.capacity[1], SPAN_STEP * (position // SPAN_STEP + 1))
    keys, values = decoder.cache[0, 0, :rows, :, :span], decoder.cache[0, 1, :rows, :, :span]   # (R, H, span, hd)
    query = torch.randn_like(keys[:, :, :1])                                                     # (R, H, 1, hd)
    mask = torch.zeros(1, span, dtype=keys.dtype, device=keys.device)
    mask[:, position + 1:] = -float("inf")
    scale = model.lm.model.decoder.layers[0].self_attn.scaling

    def products():
        scores = (query @ keys.transpose(-1, -2)).float() * scale + mask
        return torch.softmax(scores, -1).to(values.dtype) @ values

    calls = {"fused, span": lambda: decoder._attention(query, keys, values, mask, scale), "products": products}
    if keys.is_cuda:
        used = slice(0, position + 1)
        length = torch.tensor([position + 1], device=keys.device)
        whole_k, whole_v = decoder.cache[0, 0, :rows], decoder.cache[0, 1, :rows]                # (R, H, T, hd)
        calls["split (decoder)"] = lambda: split_attention(query[:, :, 0], whole_k, whole_v, length, scale)
        calls["flash, exact length"] = lambda: torch.ops.aten._scaled_dot_product_flash_attention(
            query, keys[:, :, used], values[:, :, used], scale=scale)[0]
        heads, t, hd = whole_k.shape[1:]
        packed_k, packed_v = (x.transpose(1, 2).reshape(rows * t, heads, hd) for x in (whole_k, whole_v))
        starts = torch.arange(rows + 1, dtype=torch.int32, device=keys.device)
        filled = torch.full((rows,), position + 1, dtype=torch.int32, device=keys.device)
        calls["flash, varlen"] = lambda: torch.ops.aten._flash_attention_forward(
            query[:, :, 0], packed_k, packed_v, starts, starts * t, 1, t, 0.0, False, False, scale=scale,
            seqused_k=filled)[0]
    return calls, 2 * keys.numel() * keys.element_size(), decoder.num_layers, span


def attention_kernels(model, batch, position=1400, repeats=50):
    """`attention_calls` timed: microseconds a call, keys and values read per second, and that time for
    all the layers of a step."""
    calls, read, layers, span = attention_calls(model, batch, position)
    print(f"attention: one layer's self-attention at token {position} (span {span}), batch {batch} guided "
          f"({2 * batch} rows), {read / 1e6:.0f} MB of keys and values")
    reference = None
    for name, call in calls.items():
        try:
            out = call().flatten()              # each kernel's largest difference from the fused call's
            reference = out if reference is None else reference
            print(f"  {name:22} differs from the fused call's output by {(out - reference).abs().max():.2e}")
            for _ in range(2):
                call()
            t = clock(model)
            for _ in range(repeats):
                call()
            seconds = (clock(model) - t) / repeats
        except RuntimeError as e:   # a kernel this device or dtype lacks
            print(f"  {name:22} not run: {str(e).splitlines()[0]}")
            continue
        print(f"  {name:22} {seconds * 1e6:9.1f} us a call, {read / seconds / 1e9:7.1f} GB/s, "
              f"{seconds * layers * 1e3:6.2f} ms for {layers} layers")
        tag = "_".join(re.findall(r"[a-z0-9]+", name.split("(")[0]))
        print(f"RESULT attention_us_b{batch}_{tag}={seconds * 1e6:.1f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", choices=["small", "tiny"])
    parser.add_argument("--seconds", type=float, default=10.0, help="window length measured (the model's is 30)")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--parts", default="anchor,eager,graphs,steps", help="what to measure (a CUDA error in "
                        "one part poisons the process, so a GPU run takes the anchor in a separate process); "
                        "`profile`: the operators of a late eager step at the largest batch, by device time; "
                        "`attention`: a late self-attention at the largest batch, kernel by kernel; "
                        "`spans`: on CUDA, the graph path again with the span-masked fused attention "
                        "instead of `split_attention` (the decoder before it)")
    parser.add_argument("--anchor-call", default="fixed", choices=["fixed", "default"])
    args = parser.parse_args()
    parts = args.parts.split(",")
    torch.manual_seed(0)
    model = fresh_model(preset(args.preset)).to(args.device, getattr(torch, args.dtype)).eval()
    cuda = model.lm.device.type == "cuda"
    where = torch.cuda.get_device_name() if cuda else f"cpu, {torch.get_num_threads()} threads"
    print(f"preset {args.preset}, {args.seconds:g}-s windows, {args.dtype}, {where}")
    batches = [int(x) for x in args.batches.split(",")]

    if "anchor" in parts:
        rate = anchor(model, args.seconds, fixed=args.anchor_call == "fixed")
        print(f"anchor  transformers generate() ({args.anchor_call} call), batch 1: {rate:8.3f} audio-s/s")
        print(f"RESULT anchor_{args.anchor_call}_audio_s_per_s_b1={rate:.3f}")
    paths = [("eager", False)] + ([("graph", True)] if cuda and "graphs" in parts else [])
    if "eager" not in parts:
        paths = paths[1:]
    rates: dict[tuple[str, int], float] = {}
    decoder = model.static_decoder()
    split = decoder.split_steps
    for name, graphs in paths + ([("graph_spans", True)] if cuda and split and "spans" in parts else []):
        decoder.split_steps = split and name != "graph_spans"
        for b in batches:
            rate, step, capture = ours(model, b, args.seconds, graphs)
            rates[name, b] = rate
            print(f"{name:11}  batch {b:>2} (bucket {batch_bucket(b)}, {2 * batch_bucket(b)} rows): {rate:8.3f} audio-s/s, "
                  f"{step * 1e3:6.2f} ms a step" + (f", graphs captured in {capture:.2f} s" if graphs else ""))
            print(f"RESULT {name}_audio_s_per_s_b{b}={rate:.3f}")
            print(f"RESULT {name}_step_ms_b{b}={step * 1e3:.3f}")
            if graphs:
                print(f"RESULT {name}_capture_s_b{b}={capture:.3f}")
    decoder.split_steps = split
    for b in batches:
        if ("graph", b) in rates and ("eager", b) in rates:
            print(f"RESULT graph_vs_eager_b{b}={rates['graph', b] / rates['eager', b]:.2f}")
        if ("graph", b) in rates and ("graph_spans", b) in rates:
            print(f"RESULT split_vs_spans_b{b}={rates['graph', b] / rates['graph_spans', b]:.2f}")
    if "profile" in parts:
        profile(model, max(batches))
    if "attention" in parts:
        attention_kernels(model, max(batches))
    for b in (1, 8) if "steps" in parts else ():
        for name, graphs in paths:
            early, late = step_time(model, 100, b, graphs), step_time(model, 1400, b, graphs)
            print(f"{name:6}  step time, batch {b} guided: {early * 1e3:.2f} ms at token 100, {late * 1e3:.2f} ms "
                  f"at token 1400 (ratio {late / early:.2f})")
            print(f"RESULT {name}_step_time_ratio_1400_vs_100_b{b}={late / early:.2f}")


if __name__ == "__main__":
    main()
