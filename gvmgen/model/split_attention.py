"""One query a row over a long key/value cache, split across the cache (flash-decoding), in Triton.

A decoding step asks each (row, head) for one query over up to a window's 1,500 cached positions. A
fused attention kernel built for long queries gives each (row, head) one thread block that walks the
whole cache alone: at batch 32 with guidance (64 rows x 16 heads) the GPU then holds too few loads in
flight to read the cache at its bandwidth, and the step is bound by that walk. Here each (row, head)
is split into chunks of CHUNK positions, one program each, run side by side; a second kernel merges
the chunks' partial softmaxes. How many positions are valid is read on the device (`length`), so
the shapes never change within a window and the two launches capture into a CUDA graph: no span
rounding, no mask tensor. Chunks past `length` do no work.

Triton is imported on first use: it comes with PyTorch's CUDA builds, and only CUDA steps call this.
"""

from __future__ import annotations

import contextlib
import functools

import torch

CHUNK = 256      # cache positions per program: 6 programs per (row, head) for a 30-s window
BLOCK = 64       # positions loaded at once inside a chunk


@functools.cache
def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def split_attention_partial(q, k, v, length, acc, stats, heads, scale,
                sq_r, sq_h, sk_r, sk_h, sk_t, sv_r, sv_h, sv_t,
                HEAD_DIM: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
        rh, split = tl.program_id(0), tl.program_id(1)
        splits = tl.num_programs(1)
        r, h = rh // heads, rh % heads
        d = tl.arange(0, HEAD_DIM)
        query = tl.load(q + r * sq_r + h * sq_h + d).to(tl.float32) * scale             # (hd,)
        start = split * CHUNK
        end = tl.minimum(start + CHUNK, tl.load(length))
        best = tl.full((), float("-inf"), tl.float32)                                     # running max
        total = tl.zeros((), tl.float32)                                                  # running sum of exp
        out = tl.zeros((HEAD_DIM,), tl.float32)                                           # running weighted sum
        for at in range(start, end, BLOCK):
            t = at + tl.arange(0, BLOCK)
            valid = t < end
            keys = tl.load(k + r * sk_r + h * sk_h + t[:, None] * sk_t + d[None, :], mask=valid[:, None], other=0.0)
            scores = tl.where(valid, tl.sum(keys.to(tl.float32) * query[None, :], axis=1), float("-inf"))  # (BLOCK,)
            new_best = tl.maximum(best, tl.max(scores, axis=0))                           # finite: a key is valid
            weights = tl.exp(scores - new_best)
            rescale = tl.exp(best - new_best)
            values = tl.load(v + r * sv_r + h * sv_h + t[:, None] * sv_t + d[None, :], mask=valid[:, None], other=0.0)
            out = out * rescale + tl.sum(weights[:, None] * values.to(tl.float32), axis=0)
            total = total * rescale + tl.sum(weights, axis=0)
            best = new_best
        slot = rh * splits + split
        tl.store(acc + slot * HEAD_DIM + d, out)
        tl.store(stats + 2 * slot, best)
        tl.store(stats + 2 * slot + 1, total)

    @triton.jit
    def split_attention_merge(acc, stats, o, heads, so_r, so_h, splits,
              HEAD_DIM: tl.constexpr, SPLITS: tl.constexpr):
        rh = tl.program_id(0)
        r, h = rh // heads, rh % heads
        s = tl.arange(0, SPLITS)
        used = s < splits
        best = tl.load(stats + 2 * (rh * splits + s), mask=used, other=float("-inf"))    # (SPLITS,)
        total = tl.load(stats + 2 * (rh * splits + s) + 1, mask=used, other=0.0)
        weight = tl.exp(best - tl.max(best, axis=0))                                      # 0 for empty chunks
        d = tl.arange(0, HEAD_DIM)
        parts = tl.load(acc + (rh * splits + s)[:, None] * HEAD_DIM + d[None, :], mask=used[:, None], other=0.0)
        result = tl.sum(weight[:, None] * parts, axis=0) / tl.sum(weight * total, axis=0)
        tl.store(o + r * so_r + h * so_h + d, result.to(o.dtype.element_ty))

    return triton, split_attention_partial, split_attention_merge


def split_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, length: torch.Tensor,
                    scale: float) -> torch.Tensor:
    """q (R, H, hd) over the first `length` (a (1,) int tensor on the device, at least 1) positions of
    k, v (R, H, T, hd), any strides with hd contiguous -> (R, H, hd), contiguous."""
    triton, partial, merge = _kernels()
    rows, heads, positions, head_dim = k.shape
    splits = triton.cdiv(positions, CHUNK)
    acc = torch.empty(rows * heads * splits, head_dim, dtype=torch.float32, device=q.device)
    stats = torch.empty(rows * heads * splits, 2, dtype=torch.float32, device=q.device)
    out = torch.empty(rows, heads, head_dim, dtype=q.dtype, device=q.device)
    # Triton launches on the current device and its current stream (on CPU: Triton's interpreter)
    with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext():
        partial[(rows * heads, splits)](q, k, v, length, acc, stats, heads, scale,
                                        q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2),
                                        v.stride(0), v.stride(1), v.stride(2),
                                        HEAD_DIM=head_dim, CHUNK=CHUNK, BLOCK=BLOCK)
        merge[(rows * heads,)](acc, stats, out, heads, out.stride(0), out.stride(1), splits,
                               HEAD_DIM=head_dim, SPLITS=triton.next_power_of_2(splits))
    return out
