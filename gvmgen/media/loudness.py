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


MISS_TOLERANCE_LU = 0.5  # a track further than this from its target is reported


@dataclass
class LoudnessReport:
    input_lufs: float
    output_lufs: float
    true_peak_dbtp: float
    gain_db: float

    def miss(self, target_lufs: float) -> str | None:
        """Why the track missed `target_lufs`, or None when it did not (silence never reaches it; a track
        with extreme peaks cannot reach a loud target under the ceiling without heavy limiting)."""
        if np.isfinite(self.output_lufs) and abs(self.output_lufs - target_lufs) <= MISS_TOLERANCE_LU:
            return None
        return f"loudness {self.output_lufs:.1f} LUFS misses the target {target_lufs:g} LUFS"


def true_peak(audio: np.ndarray) -> np.ndarray:
    """|x| upsampled 4x, folded back to one value per input sample (the max of its 4 sub-samples and,
    for (samples, channels) audio, of every channel)."""
    audio = audio.reshape(len(audio), -1)
    up = np.abs(resample_poly(audio, 4, 1, axis=0))
    up = np.pad(up, ((0, 4 * len(audio) - len(up)), (0, 0)))
    return up.reshape(len(audio), 4 * audio.shape[1]).max(axis=1)


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
    gain = uniform_filter1d(gain, size=ahead)
    return audio * (gain if audio.ndim == 1 else gain[:, None])  # every channel alike: the image holds


def normalise(audio: np.ndarray, sample_rate: int, target_lufs: float = STREAMING,
              ceiling_dbtp: float = -1.0) -> tuple[np.ndarray, LoudnessReport]:
    """Float audio, (samples,) or (samples, channels) -> the same at `target_lufs` integrated (BS.1770
    sums the channels' power), true peak <= `ceiling_dbtp`."""
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
