"""Shot detection and shot-aware 1 fps frames, on the shared fixtures and on videos made here."""

import math

import numpy as np
import pytest

from gvmgen.media.frames import ShotDetection, analyse, frame_timing
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
    # The fixture's known cuts hold for PySceneDetect's default minimum of 15 frames: 1.5 s at its 10 fps.
    counter = fixtures / "video" / "counter.mp4"
    assert analyse(counter, size=32, detection=ShotDetection(min_shot_s=1.5)).cuts == []
    assert analyse(counter, size=32, detection=ShotDetection("adaptive", min_shot_s=1.5)).cuts == [pytest.approx(2.0)]


def test_a_late_first_timestamp_counts_from_the_first_frame(fixtures):
    analysis = analyse(fixtures / "video" / "delayed_start.mp4", size=32)
    assert analysis.origin == pytest.approx(1.075, abs=1e-3)
    assert analysis.duration == pytest.approx(0.96, abs=1e-3) and analysis.fps == pytest.approx(25.0)
    # 24 frames at 25 fps, one shot: the candidate (every 1/3 s at least: 0, 0.36, 0.72) nearest 0.48 s
    assert [f.t for f in analysis.frames] == [pytest.approx(0.36)]


def test_frames_reach_the_callback_in_chunks_of_clip_sized_pictures(fixtures):
    chunks = []
    analysis = analyse(fixtures / "video" / "testvideo.mp4", size=48, chunk=10,
                       on_frames=lambda images, frames: chunks.append((images.shape, len(frames))))
    assert all(shape[1:] == (48, 48, 3) and shape[0] == n <= 10 for shape, n in chunks)
    assert sum(n for _, n in chunks) == len(analysis.frames)


# MPEG-TS starting late, with one keyframe: a seek there lands past its target, and must be caught
@pytest.mark.parametrize("name, extra", [("short.mp4", []), ("short.ts", ["-g", "1000", "-output_ts_offset", "1.4"])])
def test_a_short_shot_between_two_cuts_gets_its_own_frame_from_the_full_picture(make_video, ffmpeg, tmp_path,
                                                                                 name, extra):
    # 0.24 s of a detailed picture between two flat ones, falling between the 1/3-s candidates (2.34, 2.68)
    video = make_video(name, "-f", "lavfi", "-i", "color=c=red:s=640x360:r=50:d=2.36",
                       "-f", "lavfi", "-i", "testsrc2=s=640x360:r=50:d=0.24",
                       "-f", "lavfi", "-i", "color=c=black:s=640x360:r=50:d=3",
                       "-filter_complex", "[0:v][1:v][2:v]concat=n=3:v=1[v]", "-map", "[v]",
                       "-c:v", "libx264", "-crf", "12", *extra)
    pictures = {}
    analysis = analyse(video, size=224, detection=ShotDetection(min_shot_s=0.2),
                       on_frames=lambda images, frames: pictures.update((f.t, i) for f, i in zip(frames, images)))
    assert analysis.cuts == [pytest.approx(2.36, abs=0.021), pytest.approx(2.6, abs=0.021)]
    short = [f for f in analysis.frames if f.shot == 1]
    assert len(short) == 1 and short[0].t == pytest.approx(2.48)  # the middle frame of the short shot
    _check_frame_rules(analysis)
    # the same frame, cut and scaled by ffmpeg straight from the file: as sharp, not upscaled from 128 px
    ffmpeg("-i", video, "-vf", f"select='gte(t,{short[0].t - 0.001})',crop=360:360,scale=224:224:flags=area",
           "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", tmp_path / "ref.rgb")
    reference = np.frombuffer((tmp_path / "ref.rgb").read_bytes(), np.uint8).reshape(224, 224, 3).astype(float)
    assert np.abs(pictures[short[0].t] - reference).mean() < 4


def test_the_minimum_shot_length_is_in_seconds_at_any_frame_rate(make_video):
    # cuts 0.4 s apart: shots shorter than a 0.5-s minimum at 60 fps (24 frames, more than 15)
    video = make_video("fast.mp4", "-f", "lavfi", "-i", "color=c=red:s=160x90:r=60:d=2",
                       "-f", "lavfi", "-i", "color=c=green:s=160x90:r=60:d=0.4",
                       "-f", "lavfi", "-i", "color=c=blue:s=160x90:r=60:d=2",
                       "-filter_complex", "[0:v][1:v][2:v]concat=n=3:v=1[v]", "-map", "[v]", "-c:v", "libx264")
    assert analyse(video, size=32).cuts == [pytest.approx(2.0, abs=0.017)]
    assert len(analyse(video, size=32, detection=ShotDetection(min_shot_s=0.3)).cuts) == 2


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


def test_frame_timing_of_constant_rate_video():
    times = [i / 25 for i in range(100)]
    fps, vfr, duration = frame_timing(times, nominal_fps=25.0)
    assert fps == pytest.approx(25.0) and not vfr and duration == pytest.approx(4.0)


def test_frame_timing_of_a_millisecond_time_base_is_still_constant_rate():
    times = [round(i * 1001 / 60000, 3) for i in range(120)]  # 59.94 fps in MKV: 16 and 17 ms steps
    fps, vfr, duration = frame_timing(times, nominal_fps=59.94)
    assert fps == pytest.approx(59.94, rel=1e-3) and not vfr and duration == pytest.approx(times[-1] + 0.017)


def test_frame_timing_of_variable_rate_video():
    times = [i / 30 for i in range(30)] + [1 + i / 5 for i in range(10)]
    fps, vfr, duration = frame_timing(times, nominal_fps=0.0)
    assert vfr and fps == pytest.approx(39 / times[-1]) and duration == pytest.approx(times[-1] + 1 / 30)


@pytest.mark.parametrize("intervals, vfr", [([1 / 30, 1 / 30, 1 / 20], True), ([1 / 30, 1 / 5], True),
                                            ([0.04, 0.043, 0.037], False)])  # 50%, 500% and 7.5% off the median
def test_a_rate_is_variable_when_an_interval_strays_more_than_a_tenth(intervals, vfr):
    times = [0.5 + t for t in np.cumsum([0.0, *intervals])]  # timed from any origin
    fps, found, duration = frame_timing(times, nominal_fps=0.0)
    assert found == vfr and fps == pytest.approx(len(intervals) / sum(intervals))
    assert duration == pytest.approx(times[-1] + float(np.median(intervals)))


@pytest.mark.parametrize("nominal, length", [(30.0, 1 / 30), (0.0, 1 / 25)])
def test_a_single_frame_lasts_one_nominal_frame(nominal, length):
    assert frame_timing([0.0], nominal) == (pytest.approx(1 / length), False, pytest.approx(length))


def test_a_truncated_file_is_refused_with_what_could_be_decoded(make_video, tmp_path):
    whole = make_video("whole.mp4", "-f", "lavfi", "-i", "testsrc=s=320x240:r=25:d=4", "-c:v", "libx264",
                       "-movflags", "+faststart")
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[:whole.stat().st_size * 30 // 100])
    with pytest.raises(MediaError, match=r"cut.mp4: truncated: 0\.\d s of 4\.0 s decodable"):
        analyse(cut, size=32)
    assert analyse(whole, size=32).duration == pytest.approx(4.0)
