"""Metrics that need no model weights: they read the audio and the video's cuts and seams.

- cut-to-onset hit rate: the share of shot cuts with a musical onset within +-0.25 s, against the same
  rate for cuts shuffled uniformly over the video (what chance gives with this many onsets);
- seam smoothness: spectral flux at window seams against the flux elsewhere (1 = a seam is no more
  of an event than any other moment; 3 = a seam is three times as abrupt);
- loudness range (EBU Tech 3342): the spread, in LU, of the gated short-term loudness.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..media.loudness import short_term_loudness


@dataclass
class CutAlignment:
    hit_rate: float        # share of cuts with an onset within the tolerance
    baseline: float        # the same for shuffled cuts (mean over shuffles)
    baseline_std: float
    cuts: int
    onsets: int


def onset_times(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    import librosa

    return librosa.onset.onset_detect(y=np.asarray(audio, dtype=np.float32), sr=sample_rate, units="time")


def hit_rate(events: np.ndarray, cuts: np.ndarray, tolerance: float) -> float:
    if not len(cuts):
        return float("nan")
    if not len(events):
        return 0.0
    distance = np.abs(np.asarray(cuts)[:, None] - np.asarray(events)[None, :]).min(axis=1)
    return float((distance <= tolerance).mean())


def cut_onset_alignment(audio: np.ndarray, sample_rate: int, cuts: list[float], tolerance: float = 0.25,
                        shuffles: int = 200, seed: int = 0) -> CutAlignment:
    events = onset_times(audio, sample_rate)
    duration = len(audio) / sample_rate
    rng = np.random.default_rng(seed)
    chance = [hit_rate(events, rng.uniform(0, duration, len(cuts)), tolerance) for _ in range(shuffles)]
    return CutAlignment(hit_rate(events, np.asarray(cuts), tolerance), float(np.mean(chance)),
                        float(np.std(chance)), len(cuts), len(events))


def spectral_flux(audio: np.ndarray, sample_rate: int, hop: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(times, flux): the positive change of the log-magnitude spectrum from one frame to the next."""
    import librosa

    spectrum = np.log1p(np.abs(librosa.stft(np.asarray(audio, dtype=np.float32), n_fft=2048, hop_length=hop)))
    flux = np.maximum(np.diff(spectrum, axis=1), 0).sum(axis=0)
    times = librosa.frames_to_time(np.arange(1, spectrum.shape[1]), sr=sample_rate, hop_length=hop)
    return times, flux


@dataclass
class SeamSmoothness:
    flux_at_seams: float    # mean of the largest flux within +-tolerance of each seam
    flux_elsewhere: float   # the same statistic at every other moment (the median over the track)
    ratio: float


def seam_smoothness(audio: np.ndarray, sample_rate: int, seams: list[float], tolerance: float = 0.1) -> SeamSmoothness:
    times, flux = spectral_flux(audio, sample_rate)
    if not seams or not len(flux):
        return SeamSmoothness(float("nan"), float("nan"), float("nan"))
    width = max(1, int(round(tolerance / (times[1] - times[0])))) if len(times) > 1 else 1
    local_max = np.array([flux[max(0, i - width):i + width + 1].max() for i in range(len(flux))])
    near = np.zeros(len(flux), dtype=bool)
    for seam in seams:
        near |= np.abs(times - seam) <= tolerance
    at_seams = float(np.mean([local_max[np.argmin(np.abs(times - s))] for s in seams]))
    elsewhere = float(np.median(local_max[~near])) if (~near).any() else float("nan")
    return SeamSmoothness(at_seams, elsewhere, at_seams / elsewhere if elsewhere > 0 else float("nan"))


def loudness_range(audio: np.ndarray, sample_rate: int) -> float:
    """LRA, LU (EBU Tech 3342): 95th minus 10th percentile of short-term loudness, gated at -70 LUFS
    and 20 LU below the power mean of what passed that gate."""
    _, values = short_term_loudness(audio, sample_rate, hop_s=0.1)
    values = values[np.isfinite(values) & (values > -70)]
    if len(values) < 2:
        return float("nan")
    mean = 10 * np.log10(np.mean(10 ** (values / 10)))
    values = values[values > mean - 20]
    return float(np.percentile(values, 95) - np.percentile(values, 10))
