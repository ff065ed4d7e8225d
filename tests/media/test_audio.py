"""WAV files (the crossfades that join windows: test_stitching.py)."""

import numpy as np

from gvmgen.media.audio import read_wav, write_wav

SR = 32000


def test_wav_round_trip(tmp_path):
    x = 0.5 * np.sin(np.linspace(0, 100, 4000)).astype(np.float32)
    write_wav(tmp_path / "a.wav", x, SR)
    y, sr = read_wav(tmp_path / "a.wav")
    assert sr == SR and np.abs(y - x).max() < 1e-4
