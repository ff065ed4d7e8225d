"""Equal-power crossfades: no level dip for independent windows, no bulge for continued ones, no click."""

import numpy as np
import pytest

from gvmgen.media.stitching import crossfade_gains, stitch

SR = 32000


def _rms_db(x):
    return 20 * np.log10(np.sqrt(np.mean(x ** 2)))


def test_independent_windows_keep_their_level_across_the_seam():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 0.1, 10 * SR), rng.normal(0, 0.1, 10 * SR)
    out = stitch([(0, a), (6 * SR, b)], 16 * SR)     # 4 s overlap
    middle = out[int(7.5 * SR):int(8.5 * SR)]        # the heart of the fade
    assert abs(_rms_db(middle) - _rms_db(a)) < 0.5   # a linear fade would dip by 3 dB here


def test_identical_material_passes_through_a_seam_unchanged():
    rng = np.random.default_rng(1)
    music = rng.normal(0, 0.1, 16 * SR).astype(np.float32)
    out = stitch([(0, music[:10 * SR]), (6 * SR, music[6 * SR:])], 16 * SR)
    np.testing.assert_allclose(out, music, atol=1e-5)  # sin/cos alone would bulge by 3 dB


def test_no_click_at_the_seam():
    t = np.arange(10 * SR) / SR
    a, b = 0.5 * np.sin(2 * np.pi * 220 * t), 0.5 * np.sin(2 * np.pi * 330 * t + 1.0)
    out = stitch([(0, a), (6 * SR, b)], 16 * SR)
    largest_step = max(np.abs(np.diff(a)).max(), np.abs(np.diff(b)).max())
    for edge in (6 * SR, 10 * SR):                   # where the fade starts and ends: a jump would click
        assert np.abs(np.diff(out[edge - 2:edge + 2])).max() <= largest_step
    hard_cut = np.concatenate([a[:8 * SR], b[8 * SR - 6 * SR:]])
    assert np.abs(np.diff(hard_cut)).max() > 2 * largest_step  # the check does catch a click


def test_stitch_is_cut_to_the_requested_length():
    out = stitch([(0, np.ones(100)), (80, np.ones(100))], 150)
    assert len(out) == 150 and np.all(out[180 - 80:] == 1)


# Equal-power gains sampled at the middle of each sample: cos and sin of (pi / 2) * (i + 1/2) / n, here n = 4.
COS_4 = np.array([0.980785, 0.831470, 0.555570, 0.195090])   # cos(pi/16), cos(3pi/16), cos(5pi/16), cos(7pi/16)
SIN_4 = COS_4[::-1]


def test_uncorrelated_windows_fade_along_sin_and_cos():
    g_out, g_in = crossfade_gains(np.array([1.0, 0, 1, 0]), np.array([0, 1.0, 0, 1]))  # orthogonal: rho = 0
    np.testing.assert_allclose(g_out, COS_4, atol=1e-6)
    np.testing.assert_allclose(g_in, SIN_4, atol=1e-6)


def test_a_silent_window_fades_along_sin_and_cos():
    for a, b in [(np.zeros(4), np.ones(4)), (np.ones(4), np.zeros(4)), (np.zeros(4), np.zeros(4))]:
        g_out, g_in = crossfade_gains(a, b)
        np.testing.assert_allclose(g_out, COS_4, atol=1e-6)
        np.testing.assert_allclose(g_in, SIN_4, atol=1e-6)


@pytest.mark.parametrize("c", [1.0, 0.7, 0.3, 0.0, -0.5])
def test_the_mix_keeps_the_power_whatever_the_correlation(c):
    """b = 2 (c x + s y) with x, y orthogonal and of equal norm: its correlation with a = x is c. The mix
    g_out a + g_in b of two signals of correlation rho has the power of its inputs when
    g_out^2 + g_in^2 + 2 rho g_out g_in = 1 at every point; a negative correlation fades like none (rho 0)."""
    x, y = np.ones(8), np.array([1.0, -1] * 4)
    b = 2 * (c * x + np.sqrt(1 - c * c) * y)
    g_out, g_in = crossfade_gains(x, b)
    rho = max(c, 0.0)
    np.testing.assert_allclose(g_out ** 2 + g_in ** 2 + 2 * rho * g_out * g_in, 1.0, atol=1e-9)


def test_quiet_identical_material_passes_through_unchanged():
    a = np.array([0.1, 0.2, -0.1, 0.05])     # far below unit power: the correlation is still measured
    g_out, g_in = crossfade_gains(a, a)
    np.testing.assert_allclose(g_out + g_in, 1.0, atol=1e-9)


def test_a_tiny_stitch_worked_out_by_hand():
    """Two samples of overlap into silence: the fade-out gains are cos(pi/8) and cos(3pi/8)."""
    out = stitch([(0, np.ones(4)), (2, np.zeros(4))], 6)
    np.testing.assert_allclose(out, [1, 1, 0.923880, 0.382683, 0, 0], atol=1e-6)


def test_the_track_is_float32_whatever_the_segments_are():
    out = stitch([(0, np.ones(4, dtype=np.float64)), (2, np.ones(4, dtype=np.int16))], 6)
    assert out.dtype == np.float32


def test_a_segment_starting_at_or_past_the_end_is_dropped():
    for start in (150, 200):
        out = stitch([(0, np.ones(100)), (start, np.ones(100))], 150)
        assert len(out) == 150 and np.all(out[:100] == 1) and np.all(out[100:] == 0)
