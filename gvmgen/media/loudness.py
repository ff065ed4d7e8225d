"""Loudness normalisation (ITU-R BS.1770 via pyloudnorm) under a true-peak ceiling.

pyloudnorm measures integrated loudness but has no limiter, and a plain gain to -14 LUFS pushes
generated music well past 0 dBFS. So: gain to the target, then a look-ahead peak limiter driven by the
*true* peak (4x oversampled, as BS.1770 specifies for dBTP), then a second measurement and a small
correction, since limiting lowers the loudness a little. The limiter's gain never jumps: it ramps down
over the look-ahead before each peak and recovers slowly after it, so it does not click.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyloudnorm
from scipy.ndimage import minimum_filter1d, uniform_filter1d
from scipy.signal import resample_poly

STREAMING = -14.0   # LUFS: what the streaming platforms normalise to
EBU_R128 = -23.0    # LUFS: broadcast


@dataclass
class LoudnessReport:
    input_lufs: float
    output_lufs: float
    true_peak_dbtp: float
    gain_db: float


def true_peak(audio: np.ndarray) -> np.ndarray:
    """|x| upsampled 4x, folded back to one value per input sample (the max of its 4 sub-samples)."""
    up = np.abs(resample_poly(audio, 4, 1))
    up = np.pad(up, (0, 4 * len(audio) - len(up)))
    return up.reshape(len(audio), 4).max(axis=1)


def true_peak_db(audio: np.ndarray) -> float:
    peak = float(true_peak(audio).max()) if len(audio) else 0.0
    return float(20 * np.log10(peak)) if peak > 0 else float("-inf")


def limit(audio: np.ndarray, sample_rate: int, ceiling_db: float, lookahead_s: float = 0.005,
          release_s: float = 0.05) -> np.ndarray:
    """Gain-reduce so that the true peak stays at or below `ceiling_db`."""
    ceiling = 10 ** (ceiling_db / 20) * 0.995   # a hair of margin for the meter's own interpolation
    need = np.minimum(1.0, ceiling / np.maximum(true_peak(audio), 1e-12))  # the gain each sample needs
    ahead, release = max(1, int(lookahead_s * sample_rate)), max(1, int(release_s * sample_rate))
    gain = minimum_filter1d(need, size=2 * ahead + 1)                      # flat over +-ahead of a peak
    gain = minimum_filter1d(gain, size=release, origin=-(release // 2))    # held a while after it
    # A moving average no wider than the flat top ramps the gain in and out without touching the top.
    return audio * uniform_filter1d(gain, size=ahead)


def normalise(audio: np.ndarray, sample_rate: int, target_lufs: float = STREAMING,
              ceiling_dbtp: float = -1.0) -> tuple[np.ndarray, LoudnessReport]:
    """Mono float audio -> the same at `target_lufs` integrated, true peak <= `ceiling_dbtp`."""
    meter = pyloudnorm.Meter(sample_rate)
    audio = np.asarray(audio, dtype=np.float64)
    measured = meter.integrated_loudness(audio)
    if not np.isfinite(measured):  # silence, or shorter than one 400 ms block
        return audio.astype(np.float32), LoudnessReport(float(measured), float(measured), true_peak_db(audio), 0.0)
    gain_db = target_lufs - measured
    out = audio * 10 ** (gain_db / 20)
    for _ in range(3):
        out = limit(out, sample_rate, ceiling_dbtp)
        error = target_lufs - meter.integrated_loudness(out)
        if abs(error) < 0.1:
            break
        out = out * 10 ** (error / 20)
        gain_db += error
    out = limit(out, sample_rate, ceiling_dbtp)
    report = LoudnessReport(float(measured), float(meter.integrated_loudness(out)), true_peak_db(out), float(gain_db))
    return out.astype(np.float32), report


def short_term_loudness(audio: np.ndarray, sample_rate: int, hop_s: float = 0.5,
                        block_s: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """(times, LUFS): K-weighted loudness of the 3 s ending at each time (-inf in silence)."""
    meter = pyloudnorm.Meter(sample_rate, block_size=block_s)
    block, hop = int(block_s * sample_rate), max(1, int(hop_s * sample_rate))
    audio = np.asarray(audio, dtype=np.float64)
    ends = np.arange(block, len(audio) + 1, hop)
    # One gating block per segment: the gated "integrated" value of exactly block_s is the short-term value.
    values = np.array([meter.integrated_loudness(audio[e - block:e]) for e in ends])
    return ends / sample_rate, values
