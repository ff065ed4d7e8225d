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


def _columns_rows(image, colour, tolerance=40):
    """(rows, columns) of the pixels within `tolerance` of an RGB colour."""
    distance = np.abs(image.astype(int) - np.array(colour)).max(axis=2)
    return np.nonzero(distance <= tolerance)


def test_the_report_puts_cuts_windows_seams_and_loudness_on_one_time_axis(tmp_path):
    """Where the page draws each thing, read back from its pixels: the time axis calibrated on the two cuts
    (5 s and 14 s), the loudness axis on the two levels of a stepped tone (BS.1770: amplitude 0.1 of a
    997-Hz sine reads -23.0 LUFS, 0.01 reads -43.0) and checked on the target line and on the short-term
    (3-s) window half over each level."""
    t = np.arange(20 * RATE) / RATE
    audio = np.where(t < 10, 0.1, 0.01) * np.sin(2 * np.pi * 997 * t)
    data = ReportData(title="clip.mp4", duration=20.0, shots=[(0, 5), (5, 14), (14, 20)], windows=[(0, 12), (8, 20)],
                      seams=[10.0], integrated_lufs=-27.0, true_peak_dbtp=-20.0, target_lufs=-14.0)
    image = np.asarray(Image.open(write_report(tmp_path / "r.report.png", data, audio, RATE)).convert("RGB"))
    height = image.shape[0]

    rows, cols = _columns_rows(image, (214, 39, 40))                 # the cuts' red, in the timeline
    top = rows < height * 0.4
    cut_columns = sorted(set(cols[top]))
    groups = np.split(cut_columns, np.nonzero(np.diff(cut_columns) > 3)[0] + 1)
    assert len(groups) == 2
    x5, x14 = (float(np.mean(g)) for g in groups)
    px = (x14 - x5) / 9                                               # pixels per second
    seconds = lambda x: 5 + (x - x5) / px                            # noqa: E731

    rows, cols = _columns_rows(image, (49, 163, 84))                 # the seam's green dashes, in the timeline
    assert seconds(np.mean(cols[rows < height * 0.4])) == pytest.approx(10.0, abs=0.1)

    rows, cols = _columns_rows(image, (253, 174, 107), tolerance=10)  # the windows' orange bars, one row each
    bands = np.split(np.unique(rows), np.nonzero(np.diff(np.unique(rows)) > 1)[0] + 1)
    assert len(bands) == 2
    spans = [(seconds(cols[np.isin(rows, band)].min()), seconds(cols[np.isin(rows, band)].max())) for band in bands]
    assert spans == [(pytest.approx(0, abs=0.1), pytest.approx(12, abs=0.1)), (pytest.approx(8, abs=0.1), pytest.approx(20, abs=0.1))]

    rows, cols = _columns_rows(image, (49, 130, 189), tolerance=30)   # the loudness curve's blue, lower panel
    curve = rows > height * 0.45
    y_at = lambda s: float(np.mean(rows[curve & (np.abs(cols - (x5 + (s - 5) * px)) < 1)]))  # noqa: E731
    y23 = np.mean([y_at(s) for s in (4, 6, 8, 9.5)])
    y43 = np.mean([y_at(s) for s in (13.5, 14.5, 15.5)])
    lufs = lambda y: -23 + (y - y23) / (y43 - y23) * -20              # noqa: E731
    assert [lufs(y_at(s)) for s in (4, 9.5, 13.5, 15.5)] == [pytest.approx(v, abs=0.3) for v in (-23, -23, -43, -43)]
    # 3-s blocks: at 11.5 s, half the block is at 0.1 and half at 0.01: -23 + 10 log10((1 + 0.01) / 2) = -25.97
    assert lufs(y_at(11.5)) == pytest.approx(-25.97, abs=0.5)
    rows, cols = _columns_rows(image, (128, 128, 128), tolerance=20)  # the target line, grey dots
    lower = rows > height * 0.45
    target_row = np.bincount(rows[lower]).argmax()
    assert lufs(target_row) == pytest.approx(-14.0, abs=0.5)


def test_silence_after_music_reads_minus_infinity_not_the_filters_tail():
    """The track is K-weighted once, so the filter's decaying tail reaches into the silence after the
    music; BS.1770's -70 LUFS gate makes those blocks silence, as the report's axis expects."""
    times, lufs = short_term_loudness(np.concatenate([tone(6, 0.1), np.zeros(8 * RATE)]), RATE)
    assert np.isfinite(lufs[times <= 6]).all()
    assert np.isneginf(lufs[times >= 9.5]).all()


def test_a_title_in_a_script_the_font_lacks_draws_without_warnings(tmp_path, recwarn):
    data = ReportData(title="映画の予告編.mp4", duration=4.0, shots=[(0, 4)], windows=[(0, 4)], seams=[],
                      integrated_lufs=-14.0, true_peak_dbtp=-3.0, target_lufs=-14.0)
    write_report(tmp_path / "a.report.png", data, tone(4, 0.1), RATE)
    with Image.open(tmp_path / "a.report.png") as image:
        assert image.size == (1200, 480)
    assert [str(w.message) for w in recwarn] == []      # once one per character, in the user's terminal


def test_reports_drawn_on_eight_threads_at_once_each_draw_their_own_cuts(tmp_path):
    """finish_video draws reports on the flow's threads: each page holds its own video's cuts, as drawn alone."""
    from concurrent.futures import ThreadPoolExecutor

    audio = tone(20, 0.1)

    def draw(name: str, cuts: int, folder) -> int:
        shots = [(20 * i / (cuts + 1), 20 * (i + 1) / (cuts + 1)) for i in range(cuts + 1)]
        data = ReportData(title=name, duration=20.0, shots=shots, windows=[(0, 20)], seams=[], integrated_lufs=-23.0,
                          true_peak_dbtp=-20.0, target_lufs=-14.0)
        return red_pixels(write_report(folder / f"{name}.report.png", data, audio, RATE))

    (tmp_path / "alone").mkdir()
    alone = [draw(f"v{cuts}", cuts, tmp_path / "alone") for cuts in range(8)]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda cuts: draw(f"v{cuts}", cuts, tmp_path), range(8)))
    assert together == alone and alone == sorted(alone) and alone[0] == 0 < alone[1]
