"""Decoding the MusicGen LM over static shapes: one step, captured once as a CUDA graph and replayed.

transformers' `generate()` grows its cache by concatenation, rebuilds masks every step and runs its
sampling from Python, so a step costs a few hundred kernel launches dispatched one by one: on a GPU the
step is bound by launches, not by the maths (11-14 ms a step on an H100 whatever the batch). This
module runs the *same* transformers modules (same weights, same layer order) over buffers whose
shapes never change during a window, so that one whole step (embeddings, every layer, the heads,
guidance, top-k sampling and the forced tokens) can be captured once and replayed with one launch:

- rows: windows are padded up to a batch bucket (1, 2, 4, ..., 64), with guidance twice as many rows
  (conditional rows first, null rows after);
- the key/value cache is sized for the window; the position is a device tensor that the step reads
  and advances, and a step attends to a span of the cache rounded up to `SPAN_STEP` positions, so a
  step early in a window does not pay for the whole cache (one graph per span);
- the tokens fixed in advance (delay-pattern padding, the prompt) sit in a device tensor, and the
  sampled token is written back into the input buffer on the device: no host round-trip in a step.

On CPU the same step runs eagerly; on CUDA it is captured per (rows, span, sampling) the first time it
is needed and replayed for every later window and video. Keys and values are stored transposed,
(B, H, head_dim, T), which turns both products of a step into matrix-vector products over contiguous
rows. Tests check the logits against transformers' own forward pass and the tokens against a plain
sampling loop.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import MusicgenForCausalLM

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
SPAN_STEP = 128          # attention spans are multiples of this: 12 graphs cover a 30-s window (1504 steps)
PREFILL_CHUNK = 256      # prompt positions per prefill pass: bounds the (rows, heads, S, span) scores
MIN_CONDITION = 64       # condition slots (a power of two): a 30-s window has 30 frames + one per sub-second shot


def batch_bucket(windows: int) -> int:
    """The number of rows a batch of `windows` windows is padded to (beyond 64: a multiple of 64)."""
    for bucket in BATCH_BUCKETS:
        if windows <= bucket:
            return bucket
    return BATCH_BUCKETS[-1] * math.ceil(windows / BATCH_BUCKETS[-1])


@dataclass(frozen=True)
class Sampling:
    guidance: float      # classifier-free guidance scale; 1.0: no null rows
    top_k: int
    temperature: float   # 0 samples greedily

    @property
    def guided(self) -> bool:
        return self.guidance != 1.0


def sample_top_k(logits: torch.Tensor, top_k: int, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """(..., V) logits -> (...) token ids; temperature 0 takes the argmax.

    Draws exactly what `torch.multinomial(probs, 1, generator=generator)` draws (the same exponential
    noise over the same elements, then the argmax of probs / noise), without the host-side check that
    `multinomial` makes first, so that the step can be captured as a CUDA graph.
    """
    if temperature == 0:
        return logits.argmax(-1)
    values, indices = logits.float().topk(min(top_k, logits.shape[-1]), dim=-1)      # (..., k)
    probs = torch.softmax(values / temperature, dim=-1)
    noise = torch.empty_like(probs).exponential_(generator=generator)
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
        self.generator = torch.Generator(self.device)  # the graphs' RNG; callers lend it their state
        self.capacity = (0, 0, 0)                     # (rows, cache positions, condition slots)
        self.rows = 0                                 # rows of the batch in flight
        self.host_position = 0                        # the host's copy of `position` (never read back)
        self.graphs: dict[tuple[int, int, Sampling], torch.cuda.CUDAGraph] = {}
        self.graph_pool = None
        self.capture_seconds = 0.0                    # all captures so far, warm-up included
        self.lock = threading.Lock()

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
        self.keys = self.values = self.cross_keys = self.cross_values = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        kw = dict(dtype=self.dtype, device=self.device)
        cache = (self.num_layers, rows, self.num_heads, self.head_dim, positions)
        # Zeros, not empty: a step multiplies the unused tail of the cache by zero probabilities, and
        # uninitialised memory may hold NaNs.
        self.keys = torch.zeros(cache, **kw)                                        # (L, R, H, hd, T)
        self.values = torch.zeros(cache, **kw)                                      # (L, R, H, hd, T)
        cross = (self.num_layers, rows, self.num_heads, condition, self.head_dim)
        self.cross_keys = torch.zeros(cross, **kw)                                  # (L, R, H, C, hd)
        self.cross_values = torch.zeros(cross, **kw)                                # (L, R, H, C, hd)
        self.cross_mask = torch.zeros(rows, 1, 1, condition, dtype=torch.bool, device=self.device)
        self.inputs = torch.full((rows, self.num_codebooks, positions + 1), self.pad_token,
                                 dtype=torch.long, device=self.device)              # (R, K, T + 1): [BOS, steps...]
        self.forced = torch.full((rows, self.num_codebooks, positions), self.pad_token,
                                 dtype=torch.long, device=self.device)              # (R, K, T); -1: sampled
        self.position = torch.zeros(1, dtype=torch.long, device=self.device)
        self.key_index = torch.arange(positions, device=self.device)                # (T,)
        table = self.decoder.embed_positions
        if positions > table.weights.shape[0]:
            table.make_weights(positions, table.embedding_dim)
        self.position_table = table.weights[:positions].to(**kw)                    # (T, D)
        self.capacity = (rows, positions, condition)

    def reset(self, condition: torch.Tensor, condition_mask: torch.Tensor, steps: int) -> None:
        """Start a batch: condition (R, F, D), condition_mask (R, F) bool for R rows; room for `steps` positions.
        The cross-attention keys and values of the condition are projected here, once per batch."""
        rows, frames = condition_mask.shape
        self._reserve(rows, steps, frames)
        self.rows = rows
        condition = condition.to(self.device, self.dtype)
        for i, layer in enumerate(self.decoder.layers):
            cross = layer.encoder_attn
            self.cross_keys[i, :rows, :, :frames] = self._split(cross.k_proj(condition))
            self.cross_values[i, :rows, :, :frames] = self._split(cross.v_proj(condition))
        self.cross_mask[:rows] = False
        self.cross_mask[:rows, 0, 0, :frames] = condition_mask.to(self.device)
        self.seek(0)

    def seek(self, position: int) -> None:
        """Move to `position` (the next step reads and writes there)."""
        self.position.fill_(position)
        self.host_position = position

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)           # (B, H, T, hd)

    def _span(self, last_position: int) -> int:
        """Cache positions a step attends to when its newest position is `last_position`."""
        return min(self.capacity[1], SPAN_STEP * (last_position // SPAN_STEP + 1))

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
        Nothing here reads a value back to the host, so it can run inside a CUDA graph."""
        rows, k, s = tokens.shape
        positions = self.position + self.key_index[:s]                                 # (S,)
        x = sum(self.decoder.embed_tokens[q](tokens[:, q]) for q in range(k))          # (R, S, D)
        x = x + self.position_table.index_select(0, positions)
        future = self.key_index[:span][None, :] > positions[:, None]                   # (S, span)
        for i, layer in enumerate(self.decoder.layers):
            attn = layer.self_attn
            keys, values = self.keys[i, :rows], self.values[i, :rows]                  # (R, H, hd, T)
            h = layer.self_attn_layer_norm(x)
            q = self._split(attn.q_proj(h))                                            # (R, H, S, hd)
            keys.index_copy_(3, positions, self._split(attn.k_proj(h)).transpose(2, 3))
            values.index_copy_(3, positions, self._split(attn.v_proj(h)).transpose(2, 3))
            scores = torch.matmul(q, keys[..., :span]).float() * attn.scaling          # (R, H, S, span)
            probs = scores.masked_fill(future, float("-inf")).softmax(-1).to(q.dtype)
            h = torch.matmul(values[..., :span], probs.transpose(2, 3))                # (R, H, hd, S)
            x = x + attn.out_proj(h.permute(0, 3, 1, 2).reshape(rows, s, -1))

            cross = layer.encoder_attn
            h = layer.encoder_attn_layer_norm(x)
            h = F.scaled_dot_product_attention(self._split(cross.q_proj(h)), self.cross_keys[i, :rows],
                                               self.cross_values[i, :rows], attn_mask=self.cross_mask[:rows],
                                               scale=cross.scaling)                    # (R, H, S, hd)
            x = x + cross.out_proj(h.transpose(1, 2).reshape(rows, s, -1))

            h = layer.final_layer_norm(x)
            x = x + layer.fc2(layer.activation_fn(layer.fc1(h)))
        self.position.add_(s)
        last = self.decoder.layer_norm(x[:, -1])                                       # (R, D)
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
        token = sample_top_k(logits, sampling.top_k, sampling.temperature, self.generator)  # (W, K)
        chosen = torch.where(forced >= 0, forced, token)
        self.inputs[:windows].index_copy_(2, here + 1, chosen[..., None])

    @torch.no_grad()
    def step(self, windows: int, sampling: Sampling, graphs: bool = True) -> None:
        """One sampled step at the current position: a CUDA graph replay on CUDA (captured the first
        time this rows/span/sampling is met) unless `graphs` is False, else the same step eagerly."""
        span = self._span(self.host_position)
        self.host_position += 1
        if not (graphs and self.device.type == "cuda"):
            self._sampled_step(windows, span, sampling)
            return
        key = (self.rows, span, sampling)
        if key not in self.graphs:
            self.graphs[key] = self._capture(windows, span, sampling)
        self.graphs[key].replay()

    def _capture(self, windows: int, span: int, sampling: Sampling) -> torch.cuda.CUDAGraph:
        """Capture one step. The warm-up runs eagerly on a side stream (cuBLAS and allocator set-up must
        not happen inside a capture); position and RNG state are put back after it, so the replay that
        follows computes exactly the step the warm-up did. The step leaves no tensor alive from the
        graphs' shared memory pool (everything it keeps goes into the buffers above), so the graphs
        of all spans can share one pool and replay in any order."""
        started = time.perf_counter()
        position, rng = self.position.clone(), self.generator.get_state()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._sampled_step(windows, span, sampling)
                self.position.copy_(position)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        graph.register_generator_state(self.generator)
        # thread_local: media threads may encode frames on this GPU while a step is being captured
        with torch.cuda.graph(graph, pool=self.graph_pool, capture_error_mode="thread_local"):
            self._sampled_step(windows, span, sampling)
        self.graph_pool = self.graph_pool or graph.pool()
        self.position.copy_(position)
        self.generator.set_state(rng)
        torch.cuda.synchronize(self.device)
        self.capture_seconds += time.perf_counter() - started
        return graph

    # ---- a batch of windows ----------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, condition: torch.Tensor, condition_mask: torch.Tensor, forced: torch.Tensor, known: int,
               sampling: Sampling, generator: torch.Generator, room: int = 0, graphs: bool = True) -> torch.Tensor:
        """Sample a batch of W windows (padded to a bucket by the caller).

        condition (R, F, D) and condition_mask (R, F): R = W rows, or 2W with guidance (null rows after);
        forced (W, K, S) delayed steps fixed in advance (delay padding, prompts), -1 where sampled; the
        first `known` steps are known in every row and prefilled at once. `room`: cache positions to
        keep ready (a full window), so graphs captured for a short window serve the long ones too.
        Draws from `generator` and leaves it advanced. Returns (W, K, S + 1): [BOS, steps...].
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
            self.generator.set_state(generator.get_state())
            for _ in range(known, steps):
                self.step(windows, sampling, graphs)
            generator.set_state(self.generator.get_state())
            return self.inputs[:windows, :, :steps + 1].clone()
