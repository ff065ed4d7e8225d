"""Shots and shot-aware 1 fps frames from a single decode of the video.

One ffmpeg process decodes the file once. Its filter graph (after ffmpeg's own autorotation) logs
every frame's timestamp and splits the picture in two: every frame, decimated to 128 px wide, for
PySceneDetect's detector; and a few candidate frames per second (at least every 1/3 s, and the first
of each second), centre-cropped and scaled for CLIP with square pixels. Scaling only the candidates
keeps the whole pass close to the cost of the bare decode. Python then chooses:

- one frame for every second of video, from inside that second and from a single shot: the candidate
  nearest the middle of the longest stretch of one shot within the second, so it never straddles a cut;
- one more frame for any shot that no second chose (a shot shorter than a second, between two cuts).

Every time is seconds from the video's first displayed frame: ffmpeg decodes with the container's own
timestamps (`-copyts`), and the first frame's timestamp is the origin, whatever the container's start
time, edit list or timestamp offset (MPEG-TS starts at 1.4 s, a broadcast capture anywhere). Frame
times are the decoded frames' own timestamps, so variable frame rate is safe, and the length that
counts is the decoded picture's, not what the container claims (a truncated file is refused).

A shot too short to hold a candidate gets its frame from a second, seeking decode of the full
picture, so every frame CLIP sees is scaled from the same picture. Only about a second of frames is
held at a time, and the chosen ones leave in chunks through a callback: memory is the same for a
2-minute and a 2-hour video.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import subprocess
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from queue import Queue
from typing import Callable

import numpy as np

from .probe import MediaError, VideoInfo, ffmpeg_path, probe, raise_machine_faults, tool

DETECTION_WIDTH = 128      # half PySceneDetect's 256: the known cuts still land on their frames, at a quarter of the CPU
CANDIDATE_SPACING_S = 1 / 3  # CLIP-sized candidates: a shot of the default minimum length (0.5 s) holds one
DETECTORS = ("content", "adaptive")
# Missing more than this much of the claimed picture is a truncated file, not rounding or an edit list.
TRUNCATION_TOLERANCE_S, TRUNCATION_TOLERANCE = 0.5, 0.02


@dataclass
class ShotDetection:
    detector: str = "content"          # "content" (PySceneDetect ContentDetector) or "adaptive"
    threshold: float | None = None     # None: PySceneDetect's default (27 content, 3.0 adaptive)
    min_shot_s: float = 0.5            # PySceneDetect's default (15 frames) at 30 fps, in seconds at any rate

    def __post_init__(self):
        if self.detector not in DETECTORS:
            raise ValueError(f"unknown shot detector {self.detector!r}; choose one of {', '.join(DETECTORS)}")
        if self.threshold is not None and not self.threshold > 0:
            raise ValueError(f"the detector threshold must be positive, got {self.threshold}")
        if not 0 <= self.min_shot_s <= 60:
            raise ValueError(f"the minimum shot length must lie between 0 and 60 s, got {self.min_shot_s}")

    def build(self, fps: float):
        """The detector for video at `fps` frames a second (PySceneDetect counts shot lengths in frames)."""
        from scenedetect import AdaptiveDetector, ContentDetector

        min_frames = max(1, round(self.min_shot_s * fps))
        if self.detector == "content":
            return ContentDetector(threshold=self.threshold or 27.0, min_scene_len=min_frames)
        return AdaptiveDetector(adaptive_threshold=self.threshold or 3.0, min_scene_len=min_frames)


@dataclass
class Frame:
    t: float      # seconds from the first frame
    shot: int
    kind: str     # "second": the frame of its second; "shot": the extra frame of a short shot


@dataclass
class Analysis:
    info: VideoInfo
    shots: list[tuple[float, float]]   # (start, end) seconds
    frames: list[Frame]                # in time order
    fps: float                         # measured from the frame timestamps
    vfr: bool
    decoded_frames: int
    duration: float                    # seconds of decoded picture: the first frame to the end of the last
    origin: float                      # the first frame's timestamp in the container, seconds

    @property
    def cuts(self) -> list[float]:
        return [start for start, _ in self.shots[1:]]

    def to_json(self) -> dict:
        i = self.info
        return {"duration": round(self.duration, 6), "start": round(self.origin, 6), "width": i.width, "height": i.height,
                "rotation": i.rotation, "fps": round(self.fps, 3), "vfr": self.vfr, "sar": i.sar,
                "audio_streams": i.audio_streams,
                "shots": [{"start": round(a, 3), "end": round(b, 3)} for a, b in self.shots],
                "frames": [{"t": round(f.t, 3), "shot": f.shot} for f in self.frames]}


FrameSink = Callable[[np.ndarray, list[Frame]], None]


def analyse(path: Path, size: int = 336, detection: ShotDetection | None = None,
            on_frames: FrameSink | None = None, chunk: int = 32) -> Analysis:
    """Detect shots and choose frames in one decode; chosen (N, size, size, 3) RGB frames go to `on_frames`."""
    info = probe(path)
    reader = _DecodedFrames(info, size)
    chooser = _FrameChooser(detection or ShotDetection(), reader, on_frames, chunk)
    for t, small in reader:
        chooser.add(t, small)
    if not reader.times:
        raise MediaError(path, "no frame could be decoded")
    frames, cut_indices = chooser.finish()
    fps, vfr, duration = frame_timing(reader.times, info.nominal_fps)
    if info.duration - duration > max(TRUNCATION_TOLERANCE_S, TRUNCATION_TOLERANCE * info.duration):
        raise MediaError(path, f"truncated: {duration:.1f} s of {info.duration:.1f} s decodable")
    starts = [0.0] + [reader.times[c] for c in cut_indices]
    shots = list(zip(starts, starts[1:] + [duration]))
    return Analysis(info, shots, frames, fps, vfr, len(reader.times), duration, reader.origin)


def frame_timing(times: list[float], nominal_fps: float) -> tuple[float, bool, float]:
    """(fps, vfr, duration) from the frames' own times (seconds from the first frame): the rate is the
    mean interval's; the video is variable-rate when an interval strays more than 10% from the median
    (a millisecond time base rounds 59.94 fps to 16 and 17 ms: 6%); the duration runs to the end of
    the last frame, which lasts one median interval (1/nominal fps for a single frame)."""
    intervals = np.diff(times)
    median = float(np.median(intervals)) if len(intervals) else 1.0 / (nominal_fps or 25.0)
    fps = len(intervals) / (times[-1] - times[0]) if times[-1] > times[0] else 1.0 / median
    vfr = bool((np.abs(intervals - median) > 0.1 * median).any())
    return float(fps), vfr, float(times[-1] + median)


class _DecodedFrames:
    """Iterates (t, BGR detection frame) from one ffmpeg decode and hands out the CLIP-sized candidates on
    request; ffmpeg's three outputs (two raw video pipes and the timestamp log) are read on threads."""

    def __init__(self, info: VideoInfo, size: int):
        self.info, self.size = info, size
        self.times: list[float] = []                 # seconds from the first frame
        self.origin = 0.0                            # the first frame's timestamp
        self.waiting: deque[tuple[float, np.ndarray]] = deque()  # candidates arrived, not yet taken
        self.candidates_done = False
        w, h = info.width, info.height  # as displayed
        self.small_shape = (max(2, 2 * round(DETECTION_WIDTH * h / w / 2)), DETECTION_WIDTH, 3)
        # (+1e-6: 4.8 - 2.8 is 1.9999999999999996 in floating point, and the second would start a frame late)
        pick = (f"isnan(prev_selected_t)+gte(t-prev_selected_t+1e-6\\,{CANDIDATE_SPACING_S})"
                f"+gt(floor(t-start_t+1e-6)\\,floor(prev_selected_t-start_t+1e-6))")
        # the centre square as displayed (pixel aspect applied), cropped before scaling
        self.clip_filter = f"crop=w='min(iw\\,ih/sar)':h='min(ih\\,iw*sar)',scale={size}:{size}:flags=area,setsar=1"
        self.graph = (f"[0:v:0]showinfo@all=checksum=0,split=2[d][c];"
                      f"[d]scale={self.small_shape[1]}:{self.small_shape[0]}:flags=neighbor,setsar=1[small];"
                      f"[c]select='{pick}',showinfo@candidate=checksum=0,{self.clip_filter}[clip]")

    def __iter__(self):
        read_fd, write_fd = os.pipe()
        cmd = [tool("ffmpeg"), "-hide_banner", "-nostats", "-loglevel", "info", "-nostdin",
               "-copyts", "-i", ffmpeg_path(self.info.path),  # the container's own timestamps
               "-filter_complex", self.graph,
               "-map", "[small]", "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "bgr24", "pipe:1",
               "-map", "[clip]", "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", f"pipe:{write_fd}"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(write_fd,))
        os.close(write_fd)
        clip_pipe = os.fdopen(read_fd, "rb")
        self._small, self._clips = Queue(maxsize=256), Queue()
        self._times = {b"all": Queue(), b"candidate": Queue()}
        log: deque[str] = deque(maxlen=20)
        threads = [threading.Thread(target=_read_frames, args=(proc.stdout, self.small_shape, self._small), daemon=True),
                   threading.Thread(target=_read_frames, args=(clip_pipe, (self.size, self.size, 3), self._clips), daemon=True),
                   threading.Thread(target=_read_times, args=(proc.stderr, self._times, log), daemon=True)]
        for thread in threads:
            thread.start()
        small = None
        try:
            while (small := self._small.get()) is not None:
                pts = self._times[b"all"].get()
                if not self.times and pts is not None:
                    self.origin = pts
                self.times.append(self._time(pts))
                yield self.times[-1], small
        finally:
            if small is not None:                          # the caller stopped early: stop ffmpeg,
                proc.kill()                                # and unblock the readers so they end
                while not self._small.empty():
                    self._small.get_nowait()
            code = proc.wait()
            for thread in threads:
                thread.join(timeout=5)
            clip_pipe.close()
        if small is None and code != 0:  # not stopped by us
            raise_machine_faults(code, "\n".join(log), "ffmpeg", self.info.path, "decoding")
            if not self.times:
                raise MediaError(self.info.path, f"decoding failed ({' '.join(log)[-300:]})")

    def _time(self, pts: float | None) -> float:
        """Seconds from the first frame, to the microsecond (showinfo prints no finer, and a floating-point
        difference a hair under a whole second would put its frame in the second before)."""
        return max(0.0, round(pts - self.origin, 6)) if pts is not None else (self.times[-1] if self.times else 0.0)

    def candidates_until(self, t: float) -> list[tuple[float, np.ndarray]]:
        """The candidates with times up to `t`, waiting for them if ffmpeg has not sent them yet."""
        while not self.candidates_done and (not self.waiting or self.waiting[-1][0] <= t):
            image = self._clips.get()
            if image is None:
                self.candidates_done = True
                break
            self.waiting.append((self._time(self._times[b"candidate"].get()), image))
        taken = []
        while self.waiting and self.waiting[0][0] <= t:
            taken.append(self.waiting.popleft())
        return taken

    def full_picture(self, t: float) -> np.ndarray:
        """The frame at `t` (seconds from the first frame), CLIP-sized from the full picture like every
        candidate: a seeking decode, for the rare shot too short to hold a candidate. Seeking is not
        exact in every container (MPEG-TS lands on a keyframe by its byte position, sometimes past the
        target), so the frame's own timestamp is checked, and a miss decodes from the start instead."""
        at = self.origin + t
        for seek in (max(0.0, at - self.info.format_start - 2.0), None):  # -ss counts from the file's start
            cmd = [tool("ffmpeg"), "-hide_banner", "-nostats", "-loglevel", "info", "-nostdin", "-copyts",
                   *(["-ss", f"{seek:.6f}"] if seek else []), "-i", ffmpeg_path(self.info.path), "-map", "0:v:0",
                   "-vf", f"select='gte(t\\,{at - 0.0005:.6f})',showinfo=checksum=0,{self.clip_filter}",
                   "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]
            result = subprocess.run(cmd, capture_output=True)
            if result.returncode != 0:
                raise_machine_faults(result.returncode, result.stderr.decode(errors="replace"), "ffmpeg",
                                     self.info.path, "decoding a frame of")
            found = re.search(rb"pts_time:(-?[0-9.eE+-]+)", result.stderr)
            size = self.size * self.size * 3
            if len(result.stdout) >= size and found and abs(float(found.group(1)) - at) < 0.001:
                return np.frombuffer(result.stdout[:size], dtype=np.uint8).reshape(self.size, self.size, 3)
        raise MediaError(self.info.path, f"the frame at {t:.3f} s cannot be decoded again")


def _read_frames(pipe, shape: tuple[int, int, int], out: Queue) -> None:
    size = shape[0] * shape[1] * shape[2]
    while True:
        data = pipe.read(size)
        if len(data) < size:
            out.put(None)
            return
        out.put(np.frombuffer(data, dtype=np.uint8).reshape(shape))


_PTS = re.compile(rb"\[showinfo@(all|candidate) @ [^]]*\] n:\s*\d+ pts:\s*-?\d+ pts_time:(-?[0-9.eE+-]+)")


def _read_times(pipe, out: dict[bytes, Queue], log: deque) -> None:
    for line in pipe:
        match = _PTS.search(line)
        if match:
            out[match.group(1)].put(float(match.group(2)))
        else:
            log.append(line.decode(errors="replace").strip())
    for q in out.values():
        q.put(None)


class _FrameChooser:
    """Streams decoded frames through the shot detector and picks the frames to keep."""

    def __init__(self, detection: ShotDetection, reader: _DecodedFrames, sink: FrameSink | None, chunk: int):
        self.fps = reader.info.nominal_fps or 30.0   # PySceneDetect counts in frames at this rate
        self.detector = detection.build(self.fps)
        self.reader, self.sink, self.chunk = reader, sink, chunk
        self.lag = getattr(self.detector, "event_buffer_length", 0) + 2
        self.cuts: list[int] = []                     # frame indices that start a new shot
        self.pending: deque = deque()                 # (index, t, detection frame) of undecided seconds
        self.unchosen: dict[int, tuple[int, float, np.ndarray]] = {}  # shot -> (run length, t, image)
        self.covered: set[int] = set()                # shots that have a frame
        self.chosen: list[Frame] = []
        self.batch: list[tuple[np.ndarray, Frame]] = []
        self.index = -1

    def add(self, t: float, small: np.ndarray) -> None:
        from scenedetect import FrameTimecode

        self.index += 1
        cuts = self.detector.process_frame(FrameTimecode(self.index, self.fps), small)  # BGR, as OpenCV decodes
        self.cuts.extend(c.frame_num for c in cuts)
        self.pending.append((self.index, t, small))
        self._decide(final_index=self.index - self.lag)

    def finish(self) -> tuple[list[Frame], list[int]]:
        from scenedetect import FrameTimecode

        self.cuts.extend(c.frame_num for c in self.detector.post_process(FrameTimecode(self.index, self.fps)) or [])
        self.cuts = sorted({c for c in self.cuts if 0 < c <= self.index})
        self._decide(final_index=self.index)
        for shot in sorted(self.unchosen):            # short shots no second chose
            self._keep(shot, "shot", *self.unchosen[shot][1:])
        self._flush()
        self.chosen.sort(key=lambda f: f.t)
        return self.chosen, self.cuts

    def _shot_of(self, index: int) -> int:
        return sum(c <= index for c in self.cuts)

    def _decide(self, final_index: int) -> None:
        """Choose frames for every second that is complete and whose cuts are all known."""
        while self.pending:
            second = math.floor(self.pending[0][1])
            frames = list(itertools.takewhile(lambda f: math.floor(f[1]) == second, self.pending))
            still_growing = len(frames) == len(self.pending) and final_index < self.index
            if still_growing or frames[-1][0] > final_index:
                return
            for _ in frames:
                self.pending.popleft()
            pool = self.reader.candidates_until(frames[-1][1])
            runs: list[tuple[int, list]] = []              # stretches of one shot within the second
            for f in frames:
                shot = self._shot_of(f[0])
                if runs and runs[-1][0] == shot:
                    runs[-1][1].append(f)
                else:
                    runs.append((shot, [f]))
            longest = max(range(len(runs)), key=lambda r: len(runs[r][1]))
            for r, (shot, run) in enumerate(runs):
                if r == longest:
                    self._keep(shot, "second", *self._picture(run, pool))
                elif shot not in self.covered and len(run) > self.unchosen.get(shot, (0,))[0]:
                    self.unchosen[shot] = (len(run), *self._picture(run, pool))
            last_shot = self._shot_of(frames[-1][0])
            for shot in [s for s in self.unchosen if s < last_shot]:  # ended without a frame of its own
                self._keep(shot, "shot", *self.unchosen[shot][1:])

    @staticmethod
    def _picture(run: list, pool: list) -> tuple[float, np.ndarray | None]:
        """The candidate inside the run nearest its middle frame, or that frame's time alone (its
        picture is decoded again only if it is kept)."""
        middle = run[len(run) // 2][1]
        inside = [c for c in pool if run[0][1] <= c[0] <= run[-1][1]]
        if inside:
            return min(inside, key=lambda c: abs(c[0] - middle))
        return middle, None

    def _keep(self, shot: int, kind: str, t: float, image: np.ndarray | None) -> None:
        if image is None:
            image = self.reader.full_picture(t)
        self.covered.add(shot)
        self.unchosen.pop(shot, None)
        frame = Frame(t=t, shot=shot, kind=kind)
        self.chosen.append(frame)
        self.batch.append((image, frame))
        if len(self.batch) >= self.chunk:
            self._flush()

    def _flush(self) -> None:
        if self.batch and self.sink is not None:
            self.sink(np.stack([c for c, _ in self.batch]), [f for _, f in self.batch])
        self.batch = []
