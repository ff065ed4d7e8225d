"""A one-page PNG per scored video: where the shots cut, where the windows were joined, how loud it is.

The question an editor asks of a scored video is "why does the music change *there*?"; the answer is
nearly always a cut or a window seam, so the page puts both on one time axis above the short-term
loudness curve (BS.1770 K-weighted, 3-s blocks, as EBU R128 defines "short-term").
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
# Figures made directly, never through pyplot: its registry of open figures is global and not
# thread-safe (reports are drawn on several threads at once), and a figure is freed with its last
# reference even when drawing it fails. The Agg canvas needs no display.
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .media.loudness import short_term_loudness
from .files import atomic_path


@dataclass
class ReportData:
    title: str
    duration: float                      # seconds
    shots: list[tuple[float, float]]     # (start, end) seconds
    windows: list[tuple[float, float]]   # (start, end) seconds of each generated window
    seams: list[float]                   # seconds where one window's music hands over to the next
    integrated_lufs: float
    true_peak_dbtp: float
    target_lufs: float


def _counted(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def write_report(path: Path, data: ReportData, audio: np.ndarray, sample_rate: int) -> Path:
    """Render the page to `path` (atomically: a partial file never carries the final name)."""
    path = Path(path)
    fig = Figure(figsize=(12, 4.8))
    timeline, curve = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1, 1.6]})
    fig.suptitle(f"{_drawable(data.title)} — {data.duration:.1f} s, {_counted(len(data.shots), 'shot')}, "
                 f"{_counted(len(data.windows), 'window')}, {data.integrated_lufs:.1f} LUFS, "
                 f"{data.true_peak_dbtp:.1f} dBTP", fontsize=10)

    for i, (a, b) in enumerate(data.shots):
        timeline.axvspan(a, b, ymin=0.55, ymax=0.95, color=("#9ecae1", "#c6dbef")[i % 2], lw=0)
    for cut in (a for a, _ in data.shots[1:]):
        timeline.axvline(cut, ymin=0.5, ymax=1.0, color="#d62728", lw=1.2)
    for i, (a, b) in enumerate(data.windows):
        y = 0.3 if i % 2 == 0 else 0.1
        timeline.broken_barh([(a, b - a)], (y, 0.15), color="#fdae6b")
    for seam in data.seams:
        timeline.axvline(seam, ymin=0.0, ymax=0.5, color="#31a354", lw=1.2, ls="--")
    timeline.set_yticks([0.75, 0.25], ["shots / cuts", "windows / seams"])
    timeline.set_ylim(0, 1)

    times, lufs = short_term_loudness(audio, sample_rate)
    if not len(times):
        curve.text(0.5, 0.5, "shorter than one 3-s block: no short-term loudness", transform=curve.transAxes,
                   ha="center", va="center", color="grey")
    curve.plot(times, np.where(np.isfinite(lufs), lufs, np.nan), color="#3182bd", lw=1.2, label="short-term (3 s)")
    curve.axhline(data.target_lufs, color="grey", ls=":", lw=1, label=f"target {data.target_lufs:g} LUFS")
    for cut in (a for a, _ in data.shots[1:]):
        curve.axvline(cut, color="#d62728", lw=0.6, alpha=0.5)
    for seam in data.seams:
        curve.axvline(seam, color="#31a354", lw=0.6, ls="--", alpha=0.6)
    finite = lufs[np.isfinite(lufs)]
    low, high = (finite.min(), finite.max()) if len(finite) else (data.target_lufs, data.target_lufs)
    curve.set_ylim(min(low, data.target_lufs - 18) - 2, max(high, data.target_lufs + 4) + 2)  # a fixed span: flat reads flat
    curve.set_ylabel("LUFS")
    curve.set_xlabel("seconds")
    curve.set_xlim(0, max(data.duration, 1e-3))
    curve.legend(loc="lower right", fontsize=8)

    return _save(fig, path)


def write_loss_curve(path: Path, metrics: list[dict], title: str) -> Path:
    """Training and validation loss (log scale), token accuracy, and the validation frame tokens' spread
    (the collapse monitor: near 0, the music no longer depends on the picture) against the step, atomically."""
    path = Path(path)
    fig = Figure(figsize=(15, 3.8))
    loss, accuracy, spread = fig.subplots(1, 3)
    fig.suptitle(_drawable(title), fontsize=10)
    for split, colour in (("train", "#3182bd"), ("validation", "#e6550d")):
        points = [m for m in metrics if m["split"] == split]
        if points:
            steps = [m["step"] for m in points]
            marker = "o" if split == "validation" else None
            loss.plot(steps, [m["loss"] for m in points], color=colour, marker=marker, label=split)
            accuracy.plot(steps, [m["accuracy"] for m in points], color=colour, marker=marker, label=split)
    monitored = [m for m in metrics if m.get("spread") is not None]
    spread.plot([m["step"] for m in monitored], [m["spread"] for m in monitored], color="#e6550d", marker="o",
                label="validation")
    loss.set_yscale("log")
    loss.set_ylabel("cross-entropy")
    accuracy.set_ylabel("token accuracy")
    spread.set_ylabel("frame-token spread")
    spread.set_ylim(bottom=0)
    for ax in (loss, accuracy, spread):
        ax.set_xlabel("step")
        if ax.get_legend_handles_labels()[0]:   # a curve to name (a resumed run's may be recorded elsewhere)
            ax.legend(fontsize=8)
    return _save(fig, path)


@functools.cache
def _font():
    from matplotlib.font_manager import FontProperties, findfont, get_font

    return get_font(findfont(FontProperties()))


def _drawable(text: str) -> str:
    """`text` with the characters the figure's font lacks (a CJK file name, say) as boxes: matplotlib
    would draw them empty all the same, with a warning per character in the user's terminal."""
    return "".join(c if _font().get_char_index(ord(c)) else "\u25a1" for c in text)


def _save(fig: Figure, path: Path) -> Path:
    """Write the figure atomically: a partial file never carries the final name."""
    FigureCanvasAgg(fig)
    fig.tight_layout()
    with atomic_path(path) as partial:
        fig.savefig(partial, dpi=100)
    return path
