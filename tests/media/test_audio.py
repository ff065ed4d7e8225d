"""Track files and the delivery format (the crossfades that join windows: test_stitching.py)."""

import numpy as np
import pytest

from gvmgen.media.audio import read_track, to_delivery, write_track

SR = 32000


@pytest.mark.parametrize("suffix", [".flac", ".wav"])
def test_tracks_are_lossless_24_bit(tmp_path, suffix):
    x = 0.5 * np.sin(np.linspace(0, 100, 4000)).astype(np.float32)
    write_track(tmp_path / f"a{suffix}", np.stack([x, -x], axis=1), SR)
    y, sr = read_track(tmp_path / f"a{suffix}")
    assert sr == SR and y.shape == (4000, 2) and np.abs(y[:, 0] - x).max() < 2 ** -22  # 24-bit steps
    assert np.abs(y[:, 1] + x).max() < 2 ** -22


def test_the_delivery_format_is_resampled_music_in_every_channel():
    t = np.arange(2 * SR) / SR
    tone = 0.5 * np.sin(2 * np.pi * 1000 * t)
    out = to_delivery(tone, SR, 48000, 2)
    assert out.shape == (96000, 2) and np.array_equal(out[:, 0], out[:, 1])
    expected = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(96000) / 48000)  # the same tone, sampled at 48 kHz
    assert np.abs(out[1000:-1000, 0] - expected[1000:-1000]).max() < 1e-3
