"""Joining generated windows into one track: equal-power crossfades over their overlaps.

Apart from audio.py (file I/O) so that mutation testing (`make mutate`) scores exactly the crossfade math.
"""

from __future__ import annotations

import numpy as np


def crossfade_gains(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Equal-power fade-out/fade-in gains for joining `a` into `b` over their common length.

    Plain sin/cos gains keep the power constant only when the two signals are uncorrelated (windows
    generated independently); over correlated material (a continued window repeats its prompt) they
    bulge by up to 3 dB. So the gains are divided by the power the mix would have at each point,
    1 + 2*rho*g_out*g_in, with rho the measured correlation: the output power stays that of the inputs
    whatever their correlation, and rho = 0 gives the textbook sin/cos curves.
    """
    n = len(a)
    x = (np.arange(n) + 0.5) / n
    fade_out, fade_in = np.cos(0.5 * np.pi * x), np.sin(0.5 * np.pi * x)
    denom = float(np.sqrt(np.dot(a, a) * np.dot(b, b)))
    rho = min(max(float(np.dot(a, b)) / denom, 0.0), 1.0) if denom > 0 else 0.0
    norm = np.sqrt(1.0 + 2.0 * rho * fade_out * fade_in)
    return fade_out / norm, fade_in / norm


def stitch(segments: list[tuple[int, np.ndarray]], total: int) -> np.ndarray:
    """Join (start_sample, audio) segments in start order into one track of `total` samples.

    Where a segment overlaps the track so far, the two are crossfaded over the overlap.
    """
    out = np.zeros(total, dtype=np.float32)
    end = 0
    for start, audio in segments:
        audio = audio[: max(0, total - start)].astype(np.float32)
        overlap = max(0, min(end, start + len(audio)) - start)
        if overlap:
            g_out, g_in = crossfade_gains(out[start:start + overlap], audio[:overlap])
            out[start:start + overlap] = out[start:start + overlap] * g_out + audio[:overlap] * g_in
        out[start + overlap:start + len(audio)] = audio[overlap:]
        end = max(end, start + len(audio))
    return out
