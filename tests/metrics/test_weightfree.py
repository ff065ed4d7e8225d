"""Weight-free metrics on known cases."""

import numpy as np
import pytest

from gvmgen.media.audio import decode_audio
from gvmgen.metrics.weightfree import cut_onset_alignment, loudness_range, seam_smoothness

RATE = 22050


def plucks(times, seconds, rate=RATE, seed=0):
    """A soft drone with a loud decaying pluck at each of `times`."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    audio = 0.01 * np.sin(2 * np.pi * 110 * t) + 0.001 * rng.normal(size=len(t))
    for start in times:
        i = int(start * rate)
        n = min(len(t) - i, int(0.6 * rate))
        audio[i:i + n] += 0.5 * np.sin(2 * np.pi * 660 * t[:n]) * np.exp(-8 * t[:n])
    return audio.astype(np.float32)


def test_onsets_at_the_cuts_hit_and_the_same_track_two_seconds_late_scores_like_chance():
    rng = np.random.default_rng(1)
    cuts = np.sort(rng.uniform(2, 58, 10))
    on_cut = cut_onset_alignment(plucks(cuts, 62), RATE, list(cuts))
    late = cut_onset_alignment(plucks(cuts + 2.0, 62), RATE, list(cuts))
    assert on_cut.hit_rate >= 0.9 and on_cut.baseline < 0.3
    assert abs(late.hit_rate - late.baseline) <= 2.5 * late.baseline_std + 0.05
    assert on_cut.hit_rate > late.hit_rate + 0.5


def test_an_abrupt_seam_scores_above_a_crossfaded_one(fixtures):
    music = decode_audio(fixtures / "music" / "bach.mp3", RATE)
    other = 0.3 * np.sin(2 * np.pi * 1234 * np.arange(len(music)) / RATE).astype(np.float32)
    seam = 5.0
    cut = np.concatenate([music[: int(seam * RATE)], other[int(seam * RATE):]])
    fade = np.clip((np.arange(len(music)) / RATE - (seam - 1)) / 2, 0, 1)
    faded = (np.sqrt(1 - fade) * music + np.sqrt(fade) * other).astype(np.float32)
    assert seam_smoothness(cut, RATE, [seam]).ratio > 2 * seam_smoothness(faded, RATE, [seam]).ratio


def test_loudness_range_measures_the_spread_of_a_stepped_tone():
    t = np.arange(20 * RATE) / RATE
    tone = np.sin(2 * np.pi * 997 * t)
    steady = 0.1 * tone
    stepped = np.where(t < 10, 0.1, 0.01) * tone     # -20 dB for the second half: LRA ~ 20 LU
    assert loudness_range(steady, RATE) == pytest.approx(0, abs=0.5)
    assert loudness_range(stepped, RATE) == pytest.approx(20, abs=1.5)
