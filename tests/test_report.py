"""The per-video PNG report: its loudness curve is BS.1770 short-term loudness, and it draws the cuts."""

import numpy as np
import pytest
from PIL import Image

from gvmgen.media.loudness import short_term_loudness
from gvmgen.report import ReportData, write_report

RATE = 32000


def tone(seconds: float, amplitude: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return amplitude * np.sin(2 * np.pi * 997 * t)


def test_short_term_loudness_of_a_997_hz_tone_follows_bs1770():
    # BS.1770: a full-scale 997 Hz sine reads -3.01 LUFS, so amplitude 0.1 (-20 dB) reads -23.01.
    audio = np.concatenate([tone(6, 0.1), tone(6, 0.01)])
    times, lufs = short_term_loudness(audio, RATE)
    assert lufs[times <= 6] == pytest.approx(-23.01, abs=0.05)
    assert lufs[times >= 9] == pytest.approx(-43.01, abs=0.05)


def red_pixels(path) -> int:
    r, g, b = np.asarray(Image.open(path).convert("RGB")).astype(int).transpose(2, 0, 1)
    return int(((r > 150) & (g < 110) & (b < 110)).sum())  # the cut lines' red, antialiased


def test_the_report_is_a_png_with_a_line_per_cut(tmp_path):
    audio = tone(20, 0.1)
    data = dict(title="clip.mp4", duration=20.0, windows=[(0, 12), (8, 20)], seams=[10.0],
                integrated_lufs=-23.0, true_peak_dbtp=-20.0, target_lufs=-14.0)
    one_shot = write_report(tmp_path / "a.report.png", ReportData(shots=[(0, 20)], **data), audio, RATE)
    cut = write_report(tmp_path / "b.report.png", ReportData(shots=[(0, 5), (5, 20)], **data), audio, RATE)
    two_cuts = write_report(tmp_path / "c.report.png", ReportData(shots=[(0, 5), (5, 14), (14, 20)], **data),
                            audio, RATE)
    assert Image.open(cut).size == (1200, 480)
    assert red_pixels(one_shot) == 0
    assert 0 < red_pixels(cut) < red_pixels(two_cuts)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.report.png", "b.report.png", "c.report.png"]
