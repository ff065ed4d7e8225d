"""Window planning: where each 30-s window of a long video starts and ends, in codec frames.

A module of its own so that mutation testing (`make mutate`) scores exactly the planner. Everything
here counts codec frames, never seconds: the caller converts (`MusicGenerator.plan`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    start: int   # codec frames
    end: int
    prompt: int  # leading frames repeated from the previous window (continue mode), else 0


def plan_windows(num_frames: int, window: int, overlap: int, cuts: list[int] = (), snap: int = 0,
                 prompted: bool = False) -> list[Window]:
    """Cover [0, num_frames) with windows of at most `window` frames overlapping by `overlap`.

    The seam between two windows is the middle of their overlap; when a cut lies up to `snap` frames
    before the nominal seam, the seam moves to the cut (never later: a window cannot grow).
    """
    windows, start, half = [], 0, overlap // 2
    cuts = sorted(cuts)
    while start + window < num_frames:
        seam = start + window - (overlap - half)
        near = [c for c in cuts if seam - snap <= c <= seam and c - half > start]
        if near:
            seam = near[-1]
        end = seam + (overlap - half)
        windows.append(Window(start, end, overlap if prompted and windows else 0))
        start = seam - half
    windows.append(Window(start, num_frames, overlap if prompted and windows else 0))
    return windows


def seams(windows: list[tuple[float, float]]) -> list[float]:
    """Where each window of (start, end) hands over to the next: the middle of their overlap (as the
    stitching fades)."""
    return [(b[0] + a[1]) / 2 for a, b in zip(windows, windows[1:])]
