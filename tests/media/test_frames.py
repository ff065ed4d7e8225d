"""Shot detection and shot-aware 1 fps frames, on the shared fixtures and on videos made here."""

import math

import numpy as np
import pytest

from gvmgen.media.frames import ShotDetection, analyse
from gvmgen.media.probe import MediaError, probe


def _per_second(analysis):
    return [math.floor(f.t) for f in analysis.frames if f.kind == "second"]


def _check_frame_rules(analysis):
    seconds = _per_second(analysis)
    assert seconds == list(range(len(seconds)))                          # exactly one per second, in order
    assert len(seconds) == math.floor(analysis.frames[-1].t) + 1
    assert {f.shot for f in analysis.frames} == set(range(len(analysis.shots)))  # every shot has a frame
    for f in analysis.frames:                                             # a frame lies inside its own shot
        start, end = analysis.shots[f.shot]
        assert start <= f.t < end + 1e-6


def test_known_cuts_of_the_fixture_within_one_frame(fixtures):
    analysis = analyse(fixtures / "video" / "testvideo.mp4", size=32)
    frame = 1001 / 30000
    assert len(analysis.cuts) == 3
    for found, known in zip(analysis.cuts, [30, 180, 394]):
        assert abs(found - known * frame) <= frame + 1e-6
    _check_frame_rules(analysis)
    assert analysis.decoded_frames == 720 and not analysis.vfr


def test_fades_are_not_cuts(fixtures):
    assert analyse(fixtures / "video" / "fades.mp4", size=32).cuts == []


def test_adaptive_detector_is_selectable(fixtures):
    counter = fixtures / "video" / "counter.mp4"
    assert analyse(counter, size=32).cuts == []
    assert analyse(counter, size=32, detection=ShotDetection("adaptive")).cuts == [pytest.approx(2.0)]


def test_a_late_first_timestamp_counts_from_the_first_frame(fixtures):
    analysis = analyse(fixtures / "video" / "delayed_start.mp4", size=32)
    assert analysis.info.start == pytest.approx(1.075, abs=1e-3)
    assert [f.t for f in analysis.frames] == [0.0]


def test_frames_reach_the_callback_in_chunks_of_clip_sized_pictures(fixtures):
    chunks = []
    analysis = analyse(fixtures / "video" / "testvideo.mp4", size=48, chunk=10,
                       on_frames=lambda images, frames: chunks.append((images.shape, len(frames))))
    assert all(shape[1:] == (48, 48, 3) and shape[0] == n <= 10 for shape, n in chunks)
    assert sum(n for _, n in chunks) == len(analysis.frames)


def test_a_short_shot_between_two_cuts_gets_its_own_frame(make_video):
    video = make_video("short.mp4", "-f", "lavfi", "-i", "color=c=red:s=160x90:r=50:d=3",
                       "-f", "lavfi", "-i", "color=c=green:s=160x90:r=50:d=0.4",
                       "-f", "lavfi", "-i", "color=c=blue:s=160x90:r=50:d=3",
                       "-filter_complex", "[0:v][1:v][2:v]concat=n=3:v=1[v]", "-map", "[v]", "-c:v", "libx264")
    analysis = analyse(video, size=32)
    assert analysis.cuts == [pytest.approx(3.0, abs=0.021), pytest.approx(3.4, abs=0.021)]
    short = [f for f in analysis.frames if f.shot == 1]
    assert len(short) == 1 and 3.0 <= short[0].t < 3.4
    _check_frame_rules(analysis)


def test_variable_frame_rate_timestamps_are_exact(make_video):
    # 30 fps for the first second, then 5 fps: frame times, not frame counts.
    video = make_video("vfr.mkv", "-f", "lavfi", "-i", "testsrc=s=160x90:r=30:d=3",
                       "-vf", "select='lt(n,30)+not(mod(n,6))',setpts='if(lt(N,30),N/30,1+(N-30)/5)/TB'",
                       "-fps_mode", "vfr", "-c:v", "libx264")
    analysis = analyse(video, size=32)
    assert analysis.vfr
    assert analysis.decoded_frames == 30 + 10
    _check_frame_rules(analysis)
    real = {round(n / 30, 3) for n in range(30)} | {round(1 + k / 5, 3) for k in range(10)}
    assert all(round(f.t, 3) in real for f in analysis.frames)           # times of frames that exist
    assert [round(f.t, 3) for f in analysis.frames][1:] == [1.4, 2.4]     # mid-second at 5 fps


def test_rotated_video_comes_out_upright(make_video, ffmpeg, tmp_path):
    # A landscape picture, red on top, tagged to be shown turned by 90 degrees.
    plain = make_video("plain.mp4", "-f", "lavfi", "-i", "color=c=blue:s=160x90:r=10:d=2",
                       "-vf", "drawbox=x=0:y=0:w=160:h=30:color=red:t=fill", "-c:v", "libx264", "-pix_fmt", "yuv420p")
    rotated = tmp_path / "rotated.mp4"
    ffmpeg("-i", plain, "-c", "copy", "-metadata:s:v:0", "rotate=90", rotated)
    info = probe(rotated)
    assert info.rotation in (90, 270) and (info.width, info.height) == (90, 160)
    images = []
    analyse(rotated, size=90, on_frames=lambda im, fr: images.append(im))
    red = images[0][0, ..., 0].astype(float) - images[0][0, ..., 2]       # (H, W): red minus blue
    columns = red.mean(axis=0)
    # The red band, once along the top, now runs down one side: the side the rotation names.
    side = "right" if info.rotation == 90 else "left"
    assert (columns[-10:].mean() > 100) == (side == "right") and (columns[:10].mean() > 100) == (side == "left")
    assert abs(red.mean(axis=1)[:10].mean() - red.mean(axis=1)[-10:].mean()) < 30  # not along top or bottom


def test_non_square_pixels_are_shown_at_their_display_width(make_video):
    video = make_video("sar.mp4", "-f", "lavfi", "-i", "testsrc=s=352x288:r=10:d=1", "-vf", "setsar=16/11",
                       "-c:v", "libx264")
    info = probe(video)
    assert info.sar == "16:11" and (info.width, info.height) == (512, 288)


@pytest.mark.parametrize("sar", ["2/1", "1/2"])
def test_a_circle_on_anamorphic_pixels_reaches_clip_round(make_video, sar):
    """A circle as displayed, stored squeezed (coded 200x200, pixels 2:1 wide or 1:2 narrow, so displayed
    400x200 or 100x200): the picture CLIP gets is the display's centre square, in which the circle is round."""
    from gvmgen.pipeline import extract_frames

    wide = sar == "2/1"
    # radius 80 display pixels on the wide display, 40 on the narrow one: in coded pixels, an ellipse
    inside = "lt(pow((X-100)*2,2)+pow(Y-100,2),6400)" if wide else "lt(pow(X-100,2)+pow((Y-100)*2,2),6400)"
    video = make_video("anamorphic.mp4", "-f", "lavfi", "-i", "color=c=black:s=200x200:r=10:d=1",
                       "-vf", f"format=gray,geq=lum='if({inside},255,0)',setsar={sar},format=yuv420p",
                       "-c:v", "libx264", "-crf", "10")
    info = probe(video)
    assert (info.width, info.height) == ((400, 200) if wide else (100, 200))
    size = 100
    frames = extract_frames(video, size)
    assert frames.pixels.shape == (1, size, size, 3)
    bright = frames.pixels[0].mean(axis=2) > 128
    rows, cols = np.nonzero(bright.any(axis=1))[0], np.nonzero(bright.any(axis=0))[0]
    height, width = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    # the display's centre square (200 or 100 display pixels a side) scaled to 100: a circle 80 px across
    assert height == pytest.approx(80, abs=3) and width == pytest.approx(80, abs=3)
    assert bright.sum() == pytest.approx(np.pi * 40 ** 2, rel=0.06)
    centre = np.argwhere(bright).mean(axis=0)
    assert centre == pytest.approx([49.5, 49.5], abs=1.5)


def test_a_single_frame_video(make_video):
    video = make_video("one.mp4", "-f", "lavfi", "-i", "testsrc=s=160x90:r=25", "-frames:v", "1", "-c:v", "libx264")
    analysis = analyse(video, size=32)
    assert analysis.decoded_frames == 1 and len(analysis.frames) == 1 and analysis.shots == [(0.0, pytest.approx(0.04))]


def test_a_truncated_file_is_refused_with_its_name(fixtures, tmp_path):
    data = (fixtures / "video" / "testvideo.mp4").read_bytes()
    cut = tmp_path / "truncated.mp4"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(MediaError, match="truncated.mp4"):
        analyse(cut, size=32)


@pytest.mark.slow
def test_two_hours_stream_through_in_chunks(make_video):
    video = make_video("long.mp4", "-f", "lavfi", "-i", "testsrc=s=64x36:r=2:d=7200",
                       "-c:v", "libx264", "-preset", "ultrafast", "-g", "600")
    largest = []
    analysis = analyse(video, size=16, chunk=64, on_frames=lambda im, fr: largest.append(len(fr)))
    assert len(_per_second(analysis)) == 7200 and max(largest) <= 64
