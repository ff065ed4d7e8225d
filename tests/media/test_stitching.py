"""Equal-power crossfades: no level dip for independent windows, no bulge for continued ones, no click."""

import numpy as np

from gvmgen.media.stitching import stitch

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
