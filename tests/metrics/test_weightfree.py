"""Weight-free metrics on known cases."""

import numpy as np
import pytest

from gvmgen.media.audio import decode_audio
from gvmgen.metrics.weightfree import cut_onset_alignment, hit_rate, loudness_range, seam_smoothness

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


def test_hit_rate_counts_the_cuts_with_an_event_within_the_tolerance():
    assert hit_rate(np.array([1.1, 2.2, 10.0]), np.array([1.0, 2.0, 3.0]), 0.25) == pytest.approx(2 / 3)
    assert hit_rate(np.array([1.25, 2.75]), np.array([1.0, 3.0]), 0.25) == 1.0      # the edges count
    assert hit_rate(np.array([]), np.array([1.0]), 0.25) == 0.0


def test_onsets_exactly_at_the_cuts_hit_them_all_and_onsets_between_them_hit_none():
    cuts = [4.0, 9.0, 14.0, 19.0, 24.0, 29.0]
    on_cut = cut_onset_alignment(plucks(cuts, 32), RATE, cuts)
    between = cut_onset_alignment(plucks([c + 2.5 for c in cuts], 32), RATE, cuts)   # 2.5 s from any cut
    assert (on_cut.hit_rate, on_cut.cuts) == (1.0, 6) and on_cut.onsets >= 6
    assert (between.hit_rate, between.cuts) == (0.0, 6) and between.onsets >= 6
    # chance: 6 onsets with a +-0.25 s tolerance cover at most 3 s of the 32 s
    assert between.baseline <= 6 * 0.5 / 32 + 0.05


def test_a_seam_in_steady_noise_is_no_event_and_scores_one():
    noise = np.random.default_rng(3).normal(0, 0.1, 40 * RATE).astype(np.float32)
    seams = [float(s) for s in range(2, 39, 2)]                     # 19 seams that change nothing
    smooth = seam_smoothness(noise, RATE, seams)
    assert smooth.ratio == pytest.approx(1.0, abs=0.15)
    t = np.arange(len(noise)) / RATE                                 # the same seams, now each a hard switch
    switched = np.where(np.floor(t / 2) % 2 == 0, noise, 0.3 * np.sin(2 * np.pi * 1234 * t)).astype(np.float32)
    assert seam_smoothness(switched, RATE, seams).ratio > 1.5
