"""Decoding the MusicGen LM over static shapes: steps captured once as CUDA graphs and replayed.

transformers' `generate()` grows its cache by concatenation, rebuilds masks every step and runs its
sampling from Python, so a step costs a few hundred kernel launches dispatched one by one: on a GPU the
step is bound by launches, not by the maths (11-14 ms a step on an H100 whatever the batch). This
module runs the *same* transformers modules (same weights, same layer order) over buffers whose
shapes never change during a window, so that whole steps (embeddings, every layer, the heads,
guidance, top-k sampling and the forced tokens) can be captured once and replayed with one launch:

- rows: windows are padded up to a batch bucket (1, 2, 4, ..., 64), with guidance twice as many rows
  (conditional rows first, null rows after);
- the key/value cache is sized for the window; the position is a device tensor that the step reads
  and advances. On CUDA a step's self-attention reads as many cached positions as the position says,
  on the device (`split_attention`: the cache split in chunks read side by side, since one thread
  block per row and head cannot read it at the GPU's bandwidth); elsewhere it attends to a span of the
  cache rounded up to `SPAN_STEP` positions, so an early step does not pay for the whole cache (graphs
  per span);
- the tokens fixed in advance (delay-pattern padding, the prompt) sit in a device tensor, and the
  sampled token is written back into the input buffer on the device: no host round-trip in a step,
  so one graph can hold `REPLAY_STEPS` consecutive steps.

On CPU the same steps run eagerly; on CUDA they are captured per (rows, span, sampling, steps) the
first time they are needed and replayed for every later window and video. A replayed graph costs a
few microseconds per kernel however small, so the step is written for few kernels (one fused
attention each, q, k and v from one product, residual additions folded into the products). Tests
check the logits against transformers' own forward pass and the tokens against a plain sampling loop
(on CUDA, the graph replays against the eager steps, and the split attention against PyTorch's).
"""

from __future__ import annotations

import importlib.util
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from transformers import MusicgenForCausalLM

from gvmgen.model.split_attention import split_attention

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
SPAN_STEP = 128          # attention spans are multiples of this: 12 spans cover a 30-s window (1504 steps)
REPLAY_STEPS = 16        # steps per graph replay (divides SPAN_STEP): see `replays`
PREFILL_CHUNK = 256      # prompt positions per prefill pass: bounds the (rows, heads, S, span) scores
MIN_CONDITION = 64       # condition slots (a power of two): a 30-s window has 30 frames + one per sub-second shot
log = logging.getLogger(__name__)


def batch_bucket(windows: int) -> int:
    """The number of rows a batch of `windows` windows is padded to (beyond 64: a multiple of 64)."""
    for bucket in BATCH_BUCKETS:
        if windows <= bucket:
            return bucket
    return BATCH_BUCKETS[-1] * math.ceil(windows / BATCH_BUCKETS[-1])


def replays(position: int, count: int) -> list[int]:
    """How `count` steps from `position` are replayed: REPLAY_STEPS at a time from positions aligned
    to it (such a run never straddles two spans), single steps before and after.

    Why several steps per replay: a replay releases the GIL while it launches, and the host must take
    it back to issue the next; beside a thread running Python that takes up to the interpreter's
    switch interval (5 ms, two batch-1 steps on an H100; bench/gil.py). Sixteen steps per replay keep
    the GPU's queue ahead of such waits.
    """
    head = min(count, -position % REPLAY_STEPS)
    body = (count - head) // REPLAY_STEPS
    return [1] * head + [REPLAY_STEPS] * body + [1] * (count - head - body * REPLAY_STEPS)


@dataclass(frozen=True)
class Sampling:
    guidance: float      # classifier-free guidance scale; 1.0: no null rows
    top_k: int
    temperature: float   # 0 samples greedily

    @property
    def guided(self) -> bool:
        return self.guidance != 1.0


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash with full avalanche (Wellons' lowbias32 family), on int64 tensors holding
    values below 2**32: both multipliers are below 2**31, so no product overflows."""
    x = x ^ (x >> 16)
    x = (x * 0x21F0AAAD) & 0xFFFFFFFF
    x = x ^ (x >> 15)
    x = (x * 0x735A2D97) & 0xFFFFFFFF
    return x ^ (x >> 15)


def window_noise(seeds: torch.Tensor, position: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Exponential noise (W, *shape) for W windows at one decoding position: a pure function of each
    window's seed (W,) and of the position (1,), computed on the device with integer ops. So a window's
    draws do not depend on which windows share its batch, nor on its row, its bucket or the device's
    RNG state, and a step that makes them can be captured as a CUDA graph."""
    count = shape[0] * shape[1]
    counter = position * count + torch.arange(count, device=seeds.device).view(shape)      # shape
    bits = _mix32(_mix32(counter)[None] ^ (seeds.view(-1, 1, 1) & 0xFFFFFFFF))              # (W, *shape)
    uniform = ((bits >> 8).float() + 0.5) * 2.0 ** -24                                      # in (0, 1)
    return -torch.log(uniform)


def sample_top_k(logits: torch.Tensor, top_k: int, temperature: float, seeds: torch.Tensor,
                 position: torch.Tensor) -> torch.Tensor:
    """(W, K, V) logits -> (W, K) token ids, each window drawing with its own seed at `position`;
    temperature 0 takes the argmax.

    The draw is the exponential race (argmax of probs / Exp(1) noise, which picks i with probability
    probs[i], as `torch.multinomial` does), without the host-side check that `multinomial` makes first.
    """
    if temperature == 0:
        return logits.argmax(-1)
    values, indices = logits.float().topk(min(top_k, logits.shape[-1]), dim=-1)      # (W, K, k)
    probs = torch.softmax(values / temperature, dim=-1)
    noise = window_noise(seeds, position, probs.shape[1:])
    return indices.gather(-1, (probs / noise).argmax(-1, keepdim=True))[..., 0]


class StaticDecoder:
    """The LM's decoding step over fixed-size buffers, for one model on one device.

    Buffers are sized for the largest batch, window and condition seen so far and reused; a larger
    request reallocates them (and drops the graphs captured on the old ones). One decoder serves one
    batch at a time (`decode` holds a lock).
    """

    def __init__(self, lm: MusicgenForCausalLM, pad_token: int):
        self.lm = lm
        self.decoder = lm.model.decoder
        self.heads = lm.lm_heads
        cfg = lm.config
        self.num_layers = len(self.decoder.layers)
        self.num_heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.num_codebooks = cfg.num_codebooks
        self.pad_token = pad_token
        weight = next(lm.parameters())
        self.dtype, self.device = weight.dtype, weight.device
        # One-query steps attend through `split_attention` where Triton runs (CUDA; PyTorch's CUDA builds
        # bring it): it reads only the positions written, so the steps of a window share their graphs.
        # Tried once, at the first batch or the first asking (`_try_split`); if Triton fails there, steps
        # use the fused call.
        self._split_steps = (self.device.type == "cuda" and importlib.util.find_spec("triton") is not None
                             and self.head_dim & (self.head_dim - 1) == 0)  # Triton's blocks: powers of two
        self.split_tried = False
        width = cfg.hidden_size
        # Each layer's q, k and v projections stacked into one (3D, D) matrix, so one product serves
        # the three; copied from the LM at every `reset`, so a fine-tuned LM is never read stale.
        self.qkv_weight = torch.empty(self.num_layers, 3 * width, width, dtype=self.dtype, device=self.device)
        self.capacity = (0, 0, 0)                     # (rows, cache positions, condition slots)
        self.rows = 0                                 # rows of the batch in flight
        self.host_position = 0                        # the host's copy of `position` (never read back)
        self.graphs: dict[tuple[int, int, Sampling, int], torch.cuda.CUDAGraph] = {}  # (rows, span, sampling, steps)
        self.graph_pool = None
        self.capture_stream = None                    # one side stream for every capture: the pool is per stream
        self.graphs_failed: str | None = None         # why a capture failed: from then on, steps run eagerly
        self.capture_seconds = 0.0                    # all captures so far, warm-up included
        self.lock = threading.Lock()

    @property
    def split_steps(self) -> bool:
        """Whether one-query steps attend through `split_attention` (tried on first asking)."""
        if not self.split_tried:
            self._try_split()
        return self._split_steps

    @split_steps.setter
    def split_steps(self, on: bool) -> None:
        """Switching the steps' self-attention drops the graphs captured with the other one (their keys
        do not say which), and their memory pool."""
        if on != self._split_steps:
            self.graphs.clear()
            self.graph_pool = None
        self._split_steps = on

    def _try_split(self) -> None:
        """Run `split_attention` once on a small input, eagerly, before any capture: a Triton that cannot
        compile or launch here (no C compiler, an unsupported GPU) leaves the steps on the fused call,
        with a warning, instead of failing every step."""
        self.split_tried = True
        if not self._split_steps:
            return
        try:
            q = torch.zeros(1, 1, self.head_dim, dtype=self.dtype, device=self.device)
            kv = torch.zeros(1, 1, SPAN_STEP, self.head_dim, dtype=self.dtype, device=self.device)
            split_attention(q, kv, kv, torch.ones(1, dtype=torch.long, device=self.device), 1.0)
        except Exception as e:
            self.split_steps = False
            log.warning("split attention failed on this device (%s: %s); decoding steps use the fused "
                        "attention", type(e).__name__, e)

    # ---- buffers ---------------------------------------------------------------------------------
    def _reserve(self, rows: int, positions: int, condition: int) -> None:
        have_rows, have_positions, have_condition = self.capacity
        if rows <= have_rows and positions <= have_positions and condition <= have_condition:
            return
        rows = max(rows, have_rows)
        positions = max(SPAN_STEP * math.ceil(positions / SPAN_STEP), have_positions)
        condition = max(MIN_CONDITION, 2 ** math.ceil(math.log2(max(condition, 1))), have_condition)
        self.graphs.clear()                           # they point into the buffers about to go
        self.graph_pool = None
        self.cache = self.cross_keys = self.cross_values = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        kw = dict(dtype=self.dtype, device=self.device)
        # Keys and values side by side, so one copy stores both. Zeros, not empty: the masked tail of a
        # span gets zero weight, and zero times a NaN that uninitialised memory may hold is still a NaN.
        self.cache = torch.zeros(self.num_layers, 2, rows, self.num_heads, positions, self.head_dim,
                                 **kw)                                              # (L, 2, R, H, T, hd)
        cross = (self.num_layers, rows, self.num_heads, condition, self.head_dim)
        self.cross_keys = torch.zeros(cross, **kw)                                  # (L, R, H, C, hd)
        self.cross_values = torch.zeros(cross, **kw)                                # (L, R, H, C, hd)
        self.cross_bias = torch.full((rows, 1, 1, condition), -math.inf, **kw)     # (R, 1, 1, C): 0 or -inf
        self.inputs = torch.full((rows, self.num_codebooks, positions + 1), self.pad_token,
                                 dtype=torch.long, device=self.device)              # (R, K, T + 1): [BOS, steps...]
        self.forced = torch.full((rows, self.num_codebooks, positions), self.pad_token,
                                 dtype=torch.long, device=self.device)              # (R, K, T); -1: sampled
        self.seeds = torch.zeros(rows, dtype=torch.long, device=self.device)        # (R,) each window's draws
        self.position = torch.zeros(1, dtype=torch.long, device=self.device)
        self.key_index = torch.arange(positions, device=self.device)                # (T,)
        table = self.decoder.embed_positions
        if positions > table.weights.shape[0]:
            table.make_weights(positions, table.embedding_dim)
        self.position_table = table.weights[:positions].to(**kw)                    # (T, D)
        self.capacity = (rows, positions, condition)

    @torch.no_grad()
    def reset(self, condition: torch.Tensor, condition_mask: torch.Tensor, steps: int) -> None:
        """Start a batch: condition (R, F, D), condition_mask (R, F) bool for R rows; room for `steps` positions.
        The cross-attention keys and values of the condition are projected here, once per batch."""
        rows, frames = condition_mask.shape
        if not self.split_tried:
            self._try_split()
        self._reserve(rows, steps, frames)
        self.rows = rows
        condition = condition.to(self.device, self.dtype)
        for i, layer in enumerate(self.decoder.layers):
            attn, cross = layer.self_attn, layer.encoder_attn
            torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight], out=self.qkv_weight[i])
            self.cross_keys[i, :rows, :, :frames] = self._split(cross.k_proj(condition), frames)
            self.cross_values[i, :rows, :, :frames] = self._split(cross.v_proj(condition), frames)
        self.cross_bias[:rows] = -math.inf
        self.cross_bias[:rows, 0, 0, :frames].masked_fill_(condition_mask.to(self.device), 0.0)
        self.seek(0)

    def seek(self, position: int) -> None:
        """Move to `position` (the next step reads and writes there)."""
        self.position.fill_(position)
        self.host_position = position

    def _split(self, x: torch.Tensor, length: int) -> torch.Tensor:
        """(B * T, D) or (B, T, D) -> (B, H, T, hd) for sequences of `length` positions (a view)."""
        return x.view(-1, length, self.num_heads, self.head_dim).transpose(1, 2)

    @staticmethod
    def _merge(h: torch.Tensor) -> torch.Tensor:
        """(B, H, T, hd) -> (B * T, D), the inverse of `_split` (a view when T is 1)."""
        b, heads, t, hd = h.shape
        return h.transpose(1, 2).reshape(b * t, heads * hd)

    def _attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                   scale: float) -> torch.Tensor:
        """One fused attention, q (R, H, S, hd) over k, v (R, H, T, hd) with an additive bias that
        broadcasts to (R, H, S, T). On CUDA the memory-efficient kernel, called by name: it takes an
        additive mask and captures into graphs, where PyTorch may prefer cuDNN's on recent GPUs (a plan
        per shape and per thread, not known to capture a masked one-query step on every release); and
        `sdpa_kernel` would choose it for the whole process, CLIP in other threads included. Its bias
        must have rows aligned to 8 elements: spans are multiples of SPAN_STEP, condition slots of 64."""
        if self.device.type == "cuda":
            bias = bias.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
            return torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, bias, False, scale=scale)[0]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)

    def _span(self, last_position: int) -> int:
        """Cache positions the fused attention spans when the newest position is `last_position`."""
        return min(self.capacity[1], SPAN_STEP * (last_position // SPAN_STEP + 1))

    def _step_span(self, position: int) -> int:
        """The span of a sampled step at `position`, which keys its graph: with `split_steps`, the whole
        cache (the step reads how much of it is written on the device), so a window's steps share graphs."""
        return self.capacity[1] if self.split_steps else self._span(position)

    # ---- the step --------------------------------------------------------------------------------
    @torch.no_grad()
    def feed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Eagerly run tokens (R, K, S) at the next S positions -> logits (R, K, V) of the last one."""
        span = self._span(self.host_position + tokens.shape[-1] - 1)
        self.host_position += tokens.shape[-1]
        return self._forward(tokens, span)

    def _forward(self, tokens: torch.Tensor, span: int) -> torch.Tensor:
        """The LM over tokens (R, K, S) at positions position .. position + S - 1, attending to the
        first `span` cache positions; advances `position`. Returns the last position's logits (R, K, V).
        Nothing here reads a value back to the host, so it can run inside a CUDA graph.

        Written for few kernels, since a replayed step costs a few microseconds per kernel whatever
        its size: each attention is one fused `scaled_dot_product_attention` with an additive mask
        made once per call (self) or once per batch (cross), and each residual branch ends in one
        in-place `addmm_` (no bias in MusicGen's projections) instead of a product and an addition."""
        rows, k, s = tokens.shape
        positions = self.position + self.key_index[:s]                                 # (S,)
        x = self.decoder.embed_tokens[0](tokens[:, 0])                                 # (R, S, D)
        for q in range(1, k):
            x += self.decoder.embed_tokens[q](tokens[:, q])
        x += self.position_table.index_select(0, positions)
        x = x.view(rows * s, -1)                                                       # (R*S, D) the residual stream
        split = self.split_steps and s == 1
        if split:
            length = positions + 1                                                     # (1,) positions to read
        else:
            future = torch.zeros(s, span, dtype=self.dtype, device=self.device)
            future.masked_fill_(self.key_index[:span][None, :] > positions[:, None], -math.inf)  # (S, span)
        width = x.shape[1]
        for i, layer in enumerate(self.decoder.layers):
            attn, cache = layer.self_attn, self.cache[i, :, :rows]                      # (2, R, H, T, hd)
            qkv = torch.mm(layer.self_attn_layer_norm(x), self.qkv_weight[i].t())       # (R*S, 3D)
            new = qkv[:, width:].view(rows, s, 2, self.num_heads, self.head_dim)       # (R, S, 2, H, hd)
            cache.index_copy_(3, positions, new.permute(2, 0, 3, 1, 4))
            if split:
                h = split_attention(qkv[:, :width].view(rows, self.num_heads, self.head_dim), cache[0], cache[1],
                                    length, attn.scaling).view(rows, width)            # (R, D)
            else:
                h = self._merge(self._attention(self._split(qkv[:, :width], s), cache[0, :, :, :span],
                                                cache[1, :, :, :span], future, attn.scaling))  # (R*S, D)
            x.addmm_(h, attn.out_proj.weight.t())

            cross = layer.encoder_attn
            h = layer.encoder_attn_layer_norm(x)
            h = self._attention(self._split(cross.q_proj(h), s), self.cross_keys[i, :rows],
                                self.cross_values[i, :rows], self.cross_bias[:rows], cross.scaling)
            x.addmm_(self._merge(h), cross.out_proj.weight.t())

            h = layer.activation_fn(layer.fc1(layer.final_layer_norm(x)))             # (R*S, F)
            x.addmm_(h, layer.fc2.weight.t())
        self.position.add_(s)
        last = self.decoder.layer_norm(x.view(rows, s, -1)[:, -1])                     # (R, D)
        return torch.stack([head(last) for head in self.heads], dim=1)                 # (R, K, V)

    def _sampled_step(self, windows: int, span: int, sampling: Sampling) -> None:
        """One whole step for `windows` windows, on the device only: read the tokens at `position`,
        run the LM, guide, sample, let the forced tokens win, write the result at `position` + 1."""
        here = self.position.clone()                                                   # (1,)
        tokens = self.inputs[:windows].index_select(2, here)                           # (W, K, 1)
        forced = self.forced[:windows].index_select(2, here)[..., 0]                   # (W, K)
        logits = self._forward(tokens.repeat(self.rows // windows, 1, 1), span)        # (R, K, V)
        if sampling.guided:  # conditional rows first, null rows after
            logits = logits[windows:] + sampling.guidance * (logits[:windows] - logits[windows:])
        token = sample_top_k(logits, sampling.top_k, sampling.temperature, self.seeds[:windows], here)  # (W, K)
        chosen = torch.where(forced >= 0, forced, token)
        self.inputs[:windows].index_copy_(2, here + 1, chosen[..., None])

    @torch.no_grad()
    def advance(self, windows: int, sampling: Sampling, count: int, graphs: bool = True) -> None:
        """`count` sampled steps from the current position. On CUDA (unless `graphs` is False) each run
        of steps that `replays` groups is one graph replay, captured the first time its rows, span,
        sampling and length are met; elsewhere the same steps run eagerly."""
        for steps in replays(self.host_position, count):
            span = self._step_span(self.host_position)
            self.host_position += steps
            graph = self._graph(windows, span, sampling, steps) if graphs and self.device.type == "cuda" else None
            if graph is None:
                for _ in range(steps):
                    self._sampled_step(windows, span, sampling)
            else:
                graph.replay()

    def step(self, windows: int, sampling: Sampling, graphs: bool = True) -> None:
        """One sampled step at the current position (a graph of one step on CUDA)."""
        self.advance(windows, sampling, 1, graphs)

    def _graph(self, windows: int, span: int, sampling: Sampling, steps: int) -> torch.cuda.CUDAGraph | None:
        """The graph of these steps, captured now if new; None once a capture has failed: a failed
        capture can leave PyTorch's capture state behind (the allocator's, the default generator's),
        so no graph is captured or replayed after it, and steps run eagerly (slower, the same tokens)."""
        key = (self.rows, span, sampling, steps)
        if key not in self.graphs and not self.graphs_failed:
            try:
                self.graphs[key] = self._capture(windows, span, sampling, steps)
            except Exception as e:
                self.graphs_failed = f"{type(e).__name__}: {e}"
                self.graphs.clear()
                log.warning("capturing a CUDA graph failed (%s); this model decodes eagerly from now on",
                            self.graphs_failed)
        return None if self.graphs_failed else self.graphs[key]

    @torch.no_grad()
    def capture_bucket(self, windows: int, steps: int, sampling: Sampling,
                       stop: Callable[[], bool] = lambda: False) -> None:
        """On CUDA, capture now every graph that a batch of `windows` windows (a bucket) of up to
        `steps` steps can replay: per span, a run of REPLAY_STEPS steps and a single step; `stop` is
        asked before each graph. Capture the largest bucket first: the buffers are sized for it, and
        smaller ones reuse them."""
        if self.device.type != "cuda":
            return
        rows = windows * (2 if sampling.guided else 1)
        with self.lock:
            self.reset(torch.zeros(rows, 1, self.lm.config.hidden_size), torch.ones(rows, 1, dtype=torch.bool), steps)
            for span in sorted({self._step_span(position) for position in range(0, steps, SPAN_STEP)}):
                self.seek(span - SPAN_STEP)                           # a position the span serves
                for size in (REPLAY_STEPS, 1):
                    if stop() or self._graph(windows, span, sampling, size) is None:
                        return

    def _capture(self, windows: int, span: int, sampling: Sampling, steps: int) -> torch.cuda.CUDAGraph:
        """Capture `steps` consecutive steps as one graph. The warm-up (one step, twice) runs eagerly
        on a side stream (cuBLAS and allocator set-up must not happen inside a capture); the position is
        put back after it, so the replay that follows starts where the warm-up did. The steps leave no
        tensor alive from the graphs' shared memory pool (everything they keep goes into the buffers
        above), so the graphs of all spans can share one pool and replay in any order."""
        started = time.perf_counter()
        position = self.position.clone()
        self.capture_stream = side = self.capture_stream or torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._sampled_step(windows, span, sampling)
                self.position.copy_(position)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # Not `torch.cuda.graph(...)`: it synchronises the device and empties the allocator's cache for
        # every graph, while other threads encode frames on this GPU. thread_local for the same reason.
        try:
            with torch.cuda.stream(side):
                graph.capture_begin(self.graph_pool, capture_error_mode="thread_local")
                try:
                    for _ in range(steps):
                        self._sampled_step(windows, span, sampling)
                finally:
                    graph.capture_end()
        except BaseException:
            self.position.copy_(position)   # go on eagerly (see `_graph`) where the steps were
            raise
        self.graph_pool = self.graph_pool or graph.pool()
        self.position.copy_(position)
        torch.cuda.synchronize(self.device)
        self.capture_seconds += time.perf_counter() - started
        return graph

    # ---- a batch of windows ----------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, condition: torch.Tensor, condition_mask: torch.Tensor, forced: torch.Tensor, known: int,
               sampling: Sampling, seeds: torch.Tensor, room: int = 0, graphs: bool = True) -> torch.Tensor:
        """Sample a batch of W windows (padded to a bucket by the caller).

        condition (R, F, D) and condition_mask (R, F): R = W rows, or 2W with guidance (null rows after);
        forced (W, K, S) delayed steps fixed in advance (delay padding, prompts), -1 where sampled; the
        first `known` steps are known in every row and prefilled at once. `room`: cache positions to
        keep ready (a full window), so graphs captured for a short window serve the long ones too.
        seeds (W,): each window's draws (see `window_noise`). Returns (W, K, S + 1): [BOS, steps...].
        """
        windows, k, steps = forced.shape
        if condition_mask.shape[0] != windows * (2 if sampling.guided else 1):
            raise ValueError(f"{condition_mask.shape[0]} condition rows for {windows} windows")
        with self.lock:
            self.reset(condition, condition_mask, max(steps, room))
            self.inputs[:windows].fill_(self.pad_token)
            self.inputs[:windows, :, 1:known + 1] = forced[:, :, :known]
            self.forced[:windows, :, :steps] = forced
            repeat = self.rows // windows
            for start in range(0, known, PREFILL_CHUNK):
                self.feed(self.inputs[:windows, :, start:min(known, start + PREFILL_CHUNK)].repeat(repeat, 1, 1))
            self.seeds[:windows] = seeds
            self.advance(windows, sampling, steps - known, graphs)
            return self.inputs[:windows, :, :steps + 1].clone()
