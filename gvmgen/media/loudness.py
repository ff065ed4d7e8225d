"""Loudness normalisation (ITU-R BS.1770 via pyloudnorm) under a true-peak ceiling.

pyloudnorm measures integrated loudness but has no limiter, and a plain gain to -14 LUFS pushes
generated music well past 0 dBFS. So: gain to the target, then a look-ahead peak limiter driven by the
*true* peak (4x oversampled, as BS.1770 specifies for dBTP), then a second measurement and a small
correction, since limiting lowers the loudness a little. A correction is a gain on the limited track,
which the next limiting can only make quieter, so the target is approached from below, never
overshot. The limiter's gain never jumps: it ramps down over the look-ahead before each peak and
recovers slowly after it, so it does not click. The true peak, the costly part, is computed twice
per track (the input's, then the output's), not once per limiting pass: see `normalise`. pyloudnorm and
SciPy are imported on first use: the settings read STREAMING from here, and must import fast.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STREAMING = -14.0   # LUFS: what the streaming platforms normalise to
EBU_R128 = -23.0    # LUFS: broadcast


MISS_TOLERANCE_LU = 0.5  # a track further than this from its target is reported
TOLERANCE_LU = 0.1       # normalisation stops this close to the target
ABSOLUTE_GATE_LUFS = -70.0  # BS.1770: quieter blocks are silence


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
    for (samples, channels) audio, of every channel). In float32: its error (~1e-7) is far below a
    meter's 0.1 dB, and it halves the memory the 4x signal streams through, the cost here."""
    from scipy.signal import resample_poly

    audio = np.asarray(audio, dtype=np.float32).reshape(len(audio), -1)
    up = resample_poly(audio, 4, 1, axis=0)                                    # (4 * samples, channels)
    np.abs(up, out=up)
    return up.reshape(len(audio), -1).max(axis=1)


def true_peak_db(audio: np.ndarray) -> float:
    return _db(float(true_peak(audio).max()) if len(audio) else 0.0)


def _db(peak: float) -> float:
    return float(20 * np.log10(peak)) if peak > 0 else float("-inf")


def limiter_gain(peaks: np.ndarray, sample_rate: int, ceiling_db: float, lookahead_s: float = 0.005,
                 release_s: float = 0.05) -> np.ndarray:
    """The gain (samples,), at most 1, that brings a track whose true peaks are `peaks` (as `true_peak`
    gives them) to `ceiling_db` or below. It is flat over +-lookahead/2 around every peak it lowers (far
    more than the 4x interpolation's reach of 10 samples), ramps down before it and recovers after."""
    from scipy.ndimage import minimum_filter1d, uniform_filter1d

    ceiling = 10 ** (ceiling_db / 20) * 0.995   # a hair of margin for the meter's own interpolation
    need = np.minimum(1.0, ceiling / np.maximum(peaks, 1e-12))            # the gain each sample needs
    ahead, release = max(1, int(lookahead_s * sample_rate)), max(1, int(release_s * sample_rate))
    gain = minimum_filter1d(need, size=2 * ahead + 1)                      # flat over +-ahead of a peak
    gain = minimum_filter1d(gain, size=release, origin=-(release // 2))    # held a while after it
    # A moving average no wider than the flat top ramps the gain in and out without touching the top.
    return uniform_filter1d(gain, size=ahead)


def _gained(audio: np.ndarray, gain: np.ndarray) -> np.ndarray:
    return audio * (gain if audio.ndim == 1 else gain[:, None])  # every channel alike: the image holds


def normalise(audio: np.ndarray, sample_rate: int, target_lufs: float = STREAMING,
              ceiling_dbtp: float = -1.0) -> tuple[np.ndarray, LoudnessReport]:
    """Float audio, (samples,) or (samples, channels) -> the same at `target_lufs` integrated (BS.1770
    sums the channels' power), true peak <= `ceiling_dbtp`.

    The search works on a gain curve over the input, not on the output: the output's true peaks are
    taken as gain x the input's, computed once. That is exact where the gain is flat, which it is
    around every peak the limiter lowers; elsewhere it is close, and the output's true peak is measured
    once at the end, with one more limiting pass in the rare case it still exceeds the ceiling. The 4x
    oversampled peak is the costly part (two passes instead of one per limiting)."""
    import pyloudnorm

    meter = pyloudnorm.Meter(sample_rate)
    audio = np.asarray(audio, dtype=np.float64)
    measured = meter.integrated_loudness(audio)
    if not np.isfinite(measured):  # silence, or shorter than one 400 ms block
        return audio.astype(np.float32), LoudnessReport(float(measured), float(measured), true_peak_db(audio), 0.0)

    peaks = true_peak(audio)                                                   # (samples,)
    gain_db = target_lufs - measured
    gain = np.full(len(audio), 10 ** (gain_db / 20))                           # (samples,)
    for _ in range(3):
        gain *= limiter_gain(gain * peaks, sample_rate, ceiling_dbtp)
        out = _gained(audio, gain)
        output_lufs = meter.integrated_loudness(out)
        error = target_lufs - output_lufs
        if abs(error) < TOLERANCE_LU:
            break
        gain *= 10 ** (error / 20)
        gain_db += error
    else:  # the last correction may have lifted a peak past the ceiling again
        gain *= limiter_gain(gain * peaks, sample_rate, ceiling_dbtp)
        out = _gained(audio, gain)
        output_lufs = meter.integrated_loudness(out)
    out_peaks = true_peak(out)
    if out_peaks.max() > 10 ** (ceiling_dbtp / 20):  # an estimate fell short: limit the output itself
        out = _gained(out, limiter_gain(out_peaks, sample_rate, ceiling_dbtp))
        output_lufs = meter.integrated_loudness(out)
        out_peaks = true_peak(out)
    report = LoudnessReport(float(measured), float(output_lufs), _db(float(out_peaks.max())), float(gain_db))
    return out.astype(np.float32), report


def short_term_loudness(audio: np.ndarray, sample_rate: int, hop_s: float = 0.5,
                        block_s: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """(times, LUFS): K-weighted loudness of the `block_s` seconds ending at each time (-inf in silence).
    The signal is K-weighted once, continuously, as a loudness meter does (EBU Tech 3341), and each
    block is one of pyloudnorm's gating blocks of that length and hop."""
    block, hop = int(block_s * sample_rate), max(1, int(hop_s * sample_rate))
    audio = np.asarray(audio, dtype=np.float64)
    ends = np.arange(block, len(audio) + 1, hop)
    if not len(ends):
        return ends / sample_rate, np.zeros(0)
    import pyloudnorm

    meter = pyloudnorm.Meter(sample_rate, block_size=block / sample_rate, overlap=1 - hop / block)
    meter.integrated_loudness(audio)
    values = np.asarray(meter.blockwise_loudness[:len(ends)], dtype=np.float64)
    values[~(values > ABSOLUTE_GATE_LUFS)] = -np.inf   # silence (the K-filter's decaying tail reads -3000)
    return ends / sample_rate, values
