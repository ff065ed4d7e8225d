"""Window planning: coverage, overlaps, and seams snapped back to shot cuts.

The expected plans are worked out by hand from the rule: without cuts window k spans
[k * (window - overlap), that + window) and the last one ends with the video; the seam between two
windows lies `overlap - overlap // 2` frames before the first one's end and `overlap // 2` frames
after the second one's start, and it moves back (never forward) to the nearest cut up to `snap`
frames before it.
"""

import signal

import pytest
import torch

from gvmgen.generate import GenerationSettings, MusicGenerator, VisualTokens
from gvmgen.windows import Window, plan_windows

W, O = 10, 4  # a tiny plan: nominal seams at 8, 14, 20, 26 (frames)


def _spans(windows):
    return [(w.start, w.end) for w in windows]


def _seams(windows):
    """Where each window hands over to the next: the middle of their overlap."""
    return [(b.start + a.end) / 2 for a, b in zip(windows, windows[1:])]


@pytest.fixture(autouse=True)
def _planning_is_instant():
    """Fail within a second of CPU time instead of hanging: a plan that stops advancing grows forever.
    (CPU time, this process's: a loaded machine that leaves it waiting does not count.)"""
    def expire(*_):
        raise TimeoutError("planning took over a second")
    previous = signal.signal(signal.SIGVTALRM, expire)
    signal.setitimer(signal.ITIMER_VIRTUAL, 1.0)
    yield
    signal.setitimer(signal.ITIMER_VIRTUAL, 0)
    signal.signal(signal.SIGVTALRM, previous)


def test_short_video_is_one_window():
    assert plan_windows(250, window=1500, overlap=600) == [Window(0, 250, 0)]


def test_a_video_exactly_one_window_long_is_one_window():
    assert plan_windows(W, window=W, overlap=O) == [Window(0, W, 0)]
    assert _spans(plan_windows(2 * W - O, window=W, overlap=O)) == [(0, W), (W - O, 2 * W - O)]


def test_a_tiny_plan_worked_out_by_hand():
    assert plan_windows(30, window=W, overlap=O) == [Window(0, 10, 0), Window(6, 16, 0), Window(12, 22, 0),
                                                     Window(18, 28, 0), Window(24, 30, 0)]


@pytest.mark.parametrize("prompted", [False, True])
def test_windows_cover_the_video_and_overlap_by_the_overlap(prompted):
    windows = plan_windows(15050, window=1500, overlap=600, prompted=prompted)
    p = 600 if prompted else 0
    assert windows == [Window(900 * k, 900 * k + 1500, p if k else 0) for k in range(16)] + [Window(14400, 15050, p)]


def test_windows_are_not_prompted_unless_asked():
    assert [w.prompt for w in plan_windows(30, window=W, overlap=O)] == [0] * 5


def test_a_seam_near_a_cut_moves_to_the_cut_and_a_far_cut_is_ignored():
    nominal = plan_windows(4000, window=1500, overlap=600)
    seam = (nominal[0].end + nominal[1].start) // 2
    moved = plan_windows(4000, window=1500, overlap=600, cuts=[seam - 150], snap=200)
    assert (moved[0].end + moved[1].start) // 2 == seam - 150
    assert plan_windows(4000, window=1500, overlap=600, cuts=[seam - 300], snap=200) == nominal


def test_without_a_snap_distance_cuts_do_not_move_seams():
    assert plan_windows(30, window=W, overlap=O, cuts=[7, 13]) == plan_windows(30, window=W, overlap=O)


def test_a_cut_exactly_snap_frames_before_the_seam_still_moves_it():
    assert _seams(plan_windows(30, window=W, overlap=O, cuts=[5], snap=3))[0] == 5
    assert _seams(plan_windows(30, window=W, overlap=O, cuts=[4], snap=3))[0] == 8


def test_the_seam_snaps_to_the_nearest_of_several_cuts_before_it():
    """Planted bug: snapping to the farthest cut in reach (the earliest) instead of the nearest."""
    windows = plan_windows(4000, window=1500, overlap=600, cuts=[1150, 1050, 1100], snap=200)
    assert _seams(windows)[0] == 1150          # the nominal seam is at 1200
    assert _spans(windows)[:2] == [(0, 1450), (850, 2350)]


def test_a_cut_on_the_seam_keeps_it_there_even_with_cuts_before_it():
    assert _seams(plan_windows(30, window=W, overlap=O, cuts=[6, 8], snap=3))[0] == 8


def test_a_seam_never_moves_forward_to_a_cut_after_it():
    """Planted bug: snapping to a cut after the nominal seam, so a window grows past the window length."""
    nominal = plan_windows(4000, window=1500, overlap=600)
    # the nominal seam is at 1200: one cut 190 frames before it, one 50 after
    windows = plan_windows(4000, window=1500, overlap=600, cuts=[1010, 1250], snap=200)
    assert all(w.end - w.start <= 1500 for w in windows)
    assert all(s <= n for s, n in zip(_seams(windows), _seams(nominal)))
    assert _seams(windows)[0] == 1010
    assert plan_windows(4000, window=1500, overlap=600, cuts=[1201, 1399], snap=200) == nominal


def test_an_odd_overlap_keeps_whole_frames_around_a_snapped_seam():
    """overlap 5: the seam at a cut c joins a window ending at c + 3 to one starting at c - 2."""
    windows = plan_windows(30, window=10, overlap=5, cuts=[6], snap=3)
    assert _spans(windows) == [(0, 9), (4, 14), (9, 19), (14, 24), (19, 29), (24, 30)]
    assert all(isinstance(x, int) for w in windows for x in (w.start, w.end))


def test_a_cut_that_would_stop_the_windows_advancing_is_ignored():
    """With a snap as long as the stride, a cut at the window's own start plus half the overlap would
    make the next window start where this one did."""
    assert plan_windows(30, window=W, overlap=O, cuts=[2], snap=8) == plan_windows(30, window=W, overlap=O)


def test_plan_snaps_to_a_cut_given_in_seconds(tiny_model):
    """Planted bug: cut times handed to the planner in seconds instead of codec frames (50 per second)."""
    gen = MusicGenerator(tiny_model, GenerationSettings(stitch="continue", window_s=30, overlap_s=12, cut_snap_s=4))
    video = VisualTokens(torch.zeros(0, 64), torch.zeros(0), duration=70.0, cuts=[22.5])  # the nominal seam: 24 s
    windows = gen.plan(video)
    assert _seams(windows)[0] / 50 == 22.5
    assert _spans(windows)[0] == (0, round((22.5 + 6) * 50))
    assert windows[-1].end == 70 * 50
