"""A procedural catalog where the picture sets the music, for the alignment probe (bench/probe.py) and
the tests: no weights and no footage needed, and what the music should do is known exactly.

The hue of a shot is the pitch class of its notes, its stripe density the note rate (1, 2 or 4 a
second); cuts fall every 2-8 s at random and always change the picture, so they always change the
music. The music is rendered as steady notes (a tone and its octave, sounding for 60% of each beat)
and tokenised by the model's own codec.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
import torch

from .dataset import Clip, plan_clips

WINDOW_S = 5.0             # clip length: short enough to train on a CPU (the mechanism is that of 30 s)
RATES = (1, 2, 4)          # notes per second, by stripe density


@dataclass
class SyntheticVideo:
    duration: float
    cuts: list[float]
    shots: list[tuple[int, int]]        # (pitch class, rate index) per shot
    times: np.ndarray                   # frame times (each second, and each cut)
    frames: np.ndarray                  # (N, S, S, 3) uint8
    audio: np.ndarray                   # float32 at the codec's rate


def make_video(rng: np.random.Generator, duration: float, size: int, rate: int) -> SyntheticVideo:
    cuts, t = [], rng.uniform(2, 8)
    while t < duration - 1:
        cuts.append(round(float(t), 2))
        t += rng.uniform(2, 8)
    bounds = [0.0, *cuts, duration]
    shots, previous = [], None
    for _ in range(len(bounds) - 1):
        shot = (int(rng.integers(12)), int(rng.integers(len(RATES))))
        while shot == previous:  # a cut always changes the picture, so it always changes the music
            shot = (int(rng.integers(12)), int(rng.integers(len(RATES))))
        shots.append(shot)
        previous = shot
    times = np.unique(np.concatenate([np.arange(int(duration)), cuts]))
    shot_of = lambda x: int(np.searchsorted(bounds, x, side="right") - 1)  # noqa: E731
    frames = np.stack([picture(rng, *shots[shot_of(x)], size) for x in times])
    samples = np.zeros(int(duration * rate), np.float32)
    for (pitch, r), a, b in zip(shots, bounds[:-1], bounds[1:]):
        freq, step = 261.63 * 2 ** (pitch / 12), 1.0 / RATES[r]
        for start in np.arange(a, b, step):  # a steady note for 60% of each beat, with 5-ms ramps
            n = int(min(0.6 * step, b - start) * rate)
            i = int(start * rate)
            tt = np.arange(n) / rate
            ramp = np.minimum(1, np.minimum(tt, tt[::-1]) / 0.005)
            samples[i:i + n] += 0.4 * ramp * (np.sin(2 * np.pi * freq * tt) + 0.3 * np.sin(4 * np.pi * freq * tt))
    return SyntheticVideo(duration, cuts, shots, times, frames, samples)


def picture(rng: np.random.Generator, pitch: int, rate_index: int, size: int) -> np.ndarray:
    """A frame of a shot: its hue, stripes as dense as its notes are fast, a random shift and noise."""
    rgb = np.array(colorsys.hsv_to_rgb(pitch / 12, 0.8, 0.9))
    stripes = 2 * 2 ** rate_index
    x = (np.arange(size) / size + rng.uniform()) * stripes
    shade = 0.6 + 0.4 * (np.sin(2 * np.pi * x) > 0)
    image = rgb[None, None, :] * shade[None, :, None] * np.ones((size, 1, 1))
    image += rng.normal(0, 0.03, image.shape)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


class Tokenised:
    """A probe video as the model sees it: patch tokens of its frames and its true codes."""

    def __init__(self, model, video: SyntheticVideo):
        self.video = video
        self.patches = model.patch_tokens(torch.from_numpy(video.frames)).half()
        self.codes = model.encode_audio(torch.from_numpy(video.audio)[None])[0].to(torch.int16)

    def clips(self, rate: int) -> list[Clip]:
        out = []
        for a, b in plan_clips(self.video.duration, self.video.cuts, WINDOW_S):
            inside = torch.from_numpy((self.video.times >= a) & (self.video.times < b))
            out.append(Clip(a, b, torch.from_numpy(self.video.times)[inside].float() - a, self.patches[inside],
                            self.codes[:, round(a * rate):round(b * rate)]))
        return out
