"""Music for a video of any length: sliding 30-s windows, batched sampling, crossfaded seams.

A video longer than one window is scored in overlapping windows, and *the video window slides with
the audio window*: each window's LM cross-attends only to the frames inside its own span (the
official code gives every window the whole video, and its long results sound like several pieces).

Two ways to join windows:
- `continue`: window k is prompted with the last `overlap` seconds of window k-1's tokens (MusicGen's
  extend_stride), so the music carries on; windows of different videos are batched stage by stage.
- `parallel`: every window of every video is generated independently, all in large batches.
Both are joined by an equal-power crossfade over the overlap, and a seam near a shot cut moves to it.

Each window draws its samples from a seed of its own, made of the settings' seed, the video's picture
and the window's place in the video (`window_seed`): a video gets the same music whichever videos share
its batches, in a catalog run or alone, and when it is scored again.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from dataclasses import dataclass, field
from collections.abc import Callable, Hashable

import numpy as np
import torch

from .media.stitching import stitch
from .model.decoding import BATCH_BUCKETS, Sampling, batch_bucket
from .model.delay import delay, undelay
from .model.gvmgen import GVMGen
from .settings import GenerationSettings
from .windows import Window, plan_windows

@dataclass
class VisualTokens:
    """What generation needs of a video: one token per sampled frame, and where the shots cut."""
    tokens: torch.Tensor            # (N, D)
    times: torch.Tensor             # (N,) seconds from the start of the video
    duration: float                 # seconds
    cuts: list[float] = field(default_factory=list)  # shot-cut times, seconds
    identity: str = ""              # what the picture is (a digest of its frames): part of its windows' seeds


def window_seed(seed: int, identity: str, window: int) -> int:
    """The seed of one window's draws: the settings' seed, the video's identity, the window's index."""
    digest = hashlib.blake2b(f"{seed}:{identity}:{window}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


class MusicGenerator:
    """Batched, guided, windowed generation with a GVMGen model.

    `cuda_graphs`: on CUDA, replay each decoding step as a captured graph (False: the same step, eagerly).
    """

    def __init__(self, model: GVMGen, settings: GenerationSettings | None = None, cuda_graphs: bool = True):
        self.model = model.eval()
        self.cuda_graphs = cuda_graphs
        self.settings = settings or GenerationSettings()
        cfg = model.config
        s = self.settings
        self.sampling = Sampling(guidance=float(cfg.guidance_scale if s.guidance_scale is None else s.guidance_scale),
                                 top_k=int(cfg.top_k if s.top_k is None else s.top_k),
                                 temperature=float(cfg.temperature if s.temperature is None else s.temperature))
        self.rate = cfg.frame_rate
        self.device = next(model.lm.parameters()).device
        self.dtype = next(model.lm.parameters()).dtype
        self.seed = secrets.randbits(32) if s.seed is None else s.seed

    # ---- planning ----------------------------------------------------------------------------------
    def plan(self, video: VisualTokens) -> list[Window]:
        s = self.settings
        return plan_windows(
            num_frames=self.num_frames(video.duration), window=round(s.window_s * self.rate),
            overlap=round(s.overlap_s * self.rate), cuts=[round(c * self.rate) for c in video.cuts],
            snap=round(s.cut_snap_s * self.rate), prompted=s.stitch == "continue",
        )

    def num_frames(self, duration: float) -> int:
        return max(1, math.ceil(self.num_samples(duration) * self.rate / self.model.config.sample_rate))

    def num_samples(self, duration: float) -> int:
        return round(duration * self.model.config.sample_rate)

    def window_condition(self, video: VisualTokens, window: Window) -> torch.Tensor:
        """(F, D) the tokens of the frames inside the window, timed from the window's start."""
        start, end = window.start / self.rate, window.end / self.rate
        inside = (video.times >= start) & (video.times < end)
        if self.settings.condition == "video":  # the official code: every window hears the whole video
            inside = torch.ones_like(inside)
        if not inside.any():  # a window between two sampled frames: take the nearest one
            inside = (video.times - (start + end) / 2).abs() == (video.times - (start + end) / 2).abs().min()
        tokens = video.tokens[inside].to(self.device, self.dtype)
        return self.model.window_condition(tokens, video.times[inside] - start)

    # ---- generation --------------------------------------------------------------------------------
    def generate(self, videos: list[VisualTokens], progress: Callable[[int, int], None] | None = None,
                 at_once: int | None = None) -> list[np.ndarray]:
        """One mono track per video, exactly as long as the video (to the sample). `at_once`: at most this
        many videos compose together (None: all), the next one joining as one is done (see `Composer`)."""
        return [self.track(composed) for composed in self.compose_windows(videos, progress, at_once)]

    def compose_windows(self, videos: list[VisualTokens], progress: Callable[[int, int], None] | None = None,
                        at_once: int | None = None) -> list[Composing]:
        """Every window's token frames, per video (in order); `progress(done, total)` in token frames."""
        composer, waiting, done = Composer(self), list(enumerate(videos)), {}
        total = sum(Composing(v, self.plan(v)).frames_left(self.model.config.num_codebooks) for v in videos)
        produced = 0

        def after_pass(frames: int) -> None:
            nonlocal produced
            produced += frames
            if progress:
                progress(produced, total)

        while waiting or composer.videos:
            while waiting and len(composer.videos) < (at_once or len(videos)):
                composer.add(*waiting.pop(0))
            done.update(composer.stage(after_pass=after_pass))
        return [done[i] for i in range(len(videos))]

    def track(self, composed: Composing) -> np.ndarray:
        """A video's windows decoded to audio and crossfaded into one track as long as the video."""
        hop = self.model.config.sample_rate // self.rate
        segments = [(w.start * hop, self.model.decode_audio(codes[None])[0].float().cpu().numpy())
                    for w, codes in zip(composed.plan, composed.codes)]
        return stitch(segments, self.num_samples(composed.video.duration))

    def buckets(self, videos: int) -> list[int]:
        """The batch buckets that composing `videos` videos at a time can use, largest first."""
        most = self.settings.batch_size if self.settings.stitch == "parallel" else min(videos, self.settings.batch_size)
        top = batch_bucket(most)
        return [top] + [b for b in reversed(BATCH_BUCKETS) if b < top]

    def capture_graphs(self, videos: int, stop: Callable[[], bool] = lambda: False) -> None:
        """On CUDA, capture every graph that composing `videos` videos at a time can replay (every
        bucket, every span of a window), so that no batch waits on a capture later; a no-op elsewhere
        or without graphs. Meant for a moment when the GPU is idle, as the flow's first prepares;
        `stop` is asked before each graph (a few tenths of a second each). Not with `condition="video"`:
        its windows hear every frame, so a long video outgrows the condition slots captured for."""
        if self.cuda_graphs and self.settings.condition == "window":
            steps = round(self.settings.window_s * self.rate) + self.model.config.num_codebooks - 1
            for bucket in self.buckets(videos):
                self.model.static_decoder().capture_bucket(bucket, steps, self.sampling, stop)

    @torch.no_grad()
    def sample(self, conditions: list[torch.Tensor], lengths: list[int],
               prompts: list[torch.Tensor | None] | None = None, seeds: list[int] | None = None) -> list[torch.Tensor]:
        """Sample token frames for a batch of windows.

        conditions: per window (F_i, D) tokens; lengths: frames per window; prompts: per window
        (K, P_i) frames it must start with, or None; seeds: per window (default: by its place in the
        batch, see `window_seed`). Returns per window (K, lengths[i]) codes. The batch is padded to a
        bucket of the static decoder with windows of padding tokens only.
        """
        model, k = self.model, self.model.config.num_codebooks
        pad = model.pad_token
        b = len(conditions)
        bucket = batch_bucket(b)
        prompts = prompts or [None] * b
        seeds = seeds or [window_seed(self.seed, "", i) for i in range(b)]
        steps = max(lengths) + k - 1                       # delayed steps to produce

        # Tokens fixed in advance: padding of the delay pattern and the prompt; -1 where we sample.
        forced = torch.full((bucket, k, steps), pad, dtype=torch.long, device=self.device)
        for i, (n, prompt) in enumerate(zip(lengths, prompts)):
            frames = torch.full((1, k, n), -1, dtype=torch.long, device=self.device)
            if prompt is not None:
                frames[0, :, :prompt.shape[-1]] = prompt.to(self.device)
            forced[i, :, :n + k - 1] = delay(frames, pad)[0]
        known = min(p.shape[-1] if p is not None else 0 for p in prompts)  # steps known in every window

        condition, mask = self._condition_batch(conditions, bucket)
        window_steps = round(self.settings.window_s * self.rate) + k - 1
        seeds = torch.tensor(seeds + [0] * (bucket - b), dtype=torch.long, device=self.device)
        inputs = model.static_decoder().decode(condition, mask, forced, known, self.sampling, seeds,
                                               room=window_steps, graphs=self.cuda_graphs)
        frames = undelay(inputs[:b, :, 1:])                # (b, K, max(lengths))
        return [frames[i, :, :n] for i, n in enumerate(lengths)]

    def _condition_batch(self, conditions: list[torch.Tensor], bucket: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad the windows' tokens into (rows, F, D) with a (rows, F) mask for `bucket` windows: the
        windows, then padding windows (one zero token, so no row is fully masked); guidance adds
        `bucket` null rows after them."""
        b, f = len(conditions), max(c.shape[0] for c in conditions)
        d = conditions[0].shape[-1]
        rows = 2 * bucket if self.sampling.guided else bucket
        condition = torch.zeros(rows, f, d, dtype=self.dtype, device=self.device)
        mask = torch.zeros(rows, f, dtype=torch.bool, device=self.device)
        for i, c in enumerate(conditions):
            condition[i, :len(c)] = c
            mask[i, :len(c)] = True
        mask[b:, 0] = True
        if self.sampling.guided:
            condition[bucket:, :1] = self.model.null_tokens(bucket, self.dtype)
        return condition, mask


def _frames_to_sample(window: Window, num_codebooks: int) -> int:
    """Token frames a window samples: its prompt is given, its delay pattern adds K - 1."""
    return window.end - window.start - window.prompt + num_codebooks


@dataclass
class Composing:
    """A video in a `Composer`: its windows and the token frames (K, frames) of those done so far."""
    video: VisualTokens
    plan: list[Window]
    codes: list[torch.Tensor] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return len(self.codes) == len(self.plan)

    def frames_left(self, num_codebooks: int) -> int:
        return sum(_frames_to_sample(w, num_codebooks) for w in self.plan[len(self.codes):])

    def prompt(self, k: int) -> torch.Tensor | None:
        """(K, P) the frames window k starts with: the end of window k - 1 (continue mode), or None."""
        window = self.plan[k]
        if not window.prompt:
            return None
        return self.codes[k - 1][:, window.start - self.plan[k - 1].start:][:, :window.prompt]


class Composer:
    """Windows of several videos through one `MusicGenerator`, a stage at a time, videos joining and
    leaving between stages: continuous batching, window by window.

    In `continue` mode window k of a video is prompted with window k - 1's tokens, so a stage runs the
    next window of every video composing, `batch_size` windows a pass. A video whose last window is done
    leaves at once, and a video added meanwhile starts at the next stage: with videos waiting, the
    batch stays full, where a fixed batch of videos shrinks as its shorter videos run out of windows.
    In `parallel` mode every window is independent, and a stage is the next `batch_size` of them, in
    the order the videos came. Videos are named by any hashable key.
    """

    def __init__(self, generator: MusicGenerator):
        self.generator = generator
        self.videos: dict[Hashable, Composing] = {}

    def add(self, key: Hashable, video: VisualTokens) -> None:
        self.videos[key] = Composing(video, self.generator.plan(video))

    def stage(self, keys: list[Hashable] | None = None, after_pass: Callable[[int], None] | None = None
              ) -> list[tuple[Hashable, Composing]]:
        """Run the next stage of `keys` (None: every video composing); `after_pass(frames)` after each
        model pass. Returns the videos it completed, which leave the composer. A stage that raises
        changes nothing: its windows are kept back until all its passes are done."""
        g, k = self.generator, self.generator.model.config.num_codebooks
        keys = list(self.videos) if keys is None else keys
        if g.settings.stitch == "parallel":
            todo = [(key, i) for key in keys for i in range(len(self.videos[key].codes), len(self.videos[key].plan))]
            todo = todo[:g.settings.batch_size]
        else:
            todo = [(key, len(self.videos[key].codes)) for key in keys]
        sampled: list[tuple[Composing, torch.Tensor]] = []
        for first in range(0, len(todo), g.settings.batch_size):
            batch = [(self.videos[key], i) for key, i in todo[first:first + g.settings.batch_size]]
            windows = [c.plan[i] for c, i in batch]
            prompts = [c.prompt(i) for c, i in batch]
            lengths = [w.end - w.start for w in windows]
            seeds = [window_seed(g.seed, c.video.identity, i) for c, i in batch]
            codes = g.sample([g.window_condition(c.video, w) for (c, _), w in zip(batch, windows)], lengths, prompts,
                             seeds)
            sampled += [(c, window_codes) for (c, _), window_codes in zip(batch, codes)]
            if after_pass:
                after_pass(sum(_frames_to_sample(w, k) for w in windows))
        for c, window_codes in sampled:  # in window order: a parallel stage may hold several of one video
            c.codes.append(window_codes)
        return [(key, self.videos.pop(key)) for key in dict.fromkeys(key for key, _ in todo) if self.videos[key].done]
