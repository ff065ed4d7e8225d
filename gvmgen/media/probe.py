"""What a media file holds, from ffprobe: streams, timing, orientation and pixel shape."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path


class MediaError(ValueError):
    """A file that cannot be used as a video: the fault of the file, never of the machine. `cause`
    says why without naming the file, so a caller can name it its own way (its URI, say)."""

    def __init__(self, path, cause: str):
        super().__init__(f"{path}: {cause}")
        self.path, self.cause = path, cause

    def __reduce__(self):  # picklable (Dask ships exceptions between processes)
        return type(self), (self.path, self.cause)


class MachineFault(RuntimeError):
    """ffmpeg or ffprobe failed for the machine, never for the file: not a MediaError."""


class ToolStopped(MachineFault):
    """ffmpeg or ffprobe was killed from outside (the out-of-memory killer's SIGKILL, say)."""


# Signals that come from outside. A crash (SIGSEGV, SIGABRT) on a malformed file is the file's fault, and
# ffmpeg exits 255 after catching SIGINT or SIGTERM, which newer releases also return for some errors:
# a Ctrl-C that reaches ffmpeg stops the whole run, which then blames no video (flows.score_catalog.fail).
STOPPING_SIGNALS = {signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


# What ffmpeg prints when the machine fails it: the system's words for a full disk or a read-only one, and
# an encoder this build of ffmpeg lacks. (Not EIO nor ENOMEM: demuxers say them of damaged files too.)
MACHINE_ERRORS = (*(os.strerror(code) for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)), "Unknown encoder")


def raise_machine_faults(returncode: int, stderr: str, tool_name: str, path, doing: str) -> None:
    """Raise MachineFault when a failed tool was stopped from outside (ToolStopped) or says that the machine
    failed it (MACHINE_ERRORS); else return, and the caller blames the file."""
    if -returncode in STOPPING_SIGNALS:
        raise ToolStopped(f"{tool_name} was stopped by {signal.Signals(-returncode).name} while {doing} {Path(path).name}")
    said = next((line.strip() for line in stderr.splitlines() if any(e in line for e in MACHINE_ERRORS)), None)
    if said:
        raise MachineFault(f"{tool_name} failed while {doing} {Path(path).name}: {said}")


def ffmpeg_path(path) -> str:
    """A local path as ffmpeg and ffprobe must be given it: absolute and behind the `file:` protocol,
    so that neither a leading `-` (an option) nor a colon (`a:b.mp4`, a protocol) changes its meaning."""
    return "file:" + str(Path(path).absolute())


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} not found on PATH; install ffmpeg (Debian: apt-get install ffmpeg)")
    return path


@dataclass
class VideoInfo:
    path: Path
    duration: float              # seconds of picture, as the container claims (the decode has the last word)
    start: float                 # the video stream's first timestamp, seconds
    format_start: float          # the file's first timestamp (of any stream): where ffmpeg's -ss counts from
    width: int                   # as displayed: rotation and pixel aspect applied
    height: int
    rotation: int                # degrees the picture is turned for display (0, 90, 180, 270)
    sar: str                     # sample (pixel) aspect ratio, "1:1" for square pixels
    nominal_fps: float           # the container's average rate; exact times come from the frames
    codec: str
    audio_streams: int
    streams: list[dict] = field(default_factory=list)  # every stream: index, type, codec


def _fraction(text: str | None) -> Fraction | None:
    """"16:11" or "30000/1001" -> a Fraction; None for "0:1", "0/0" or nothing."""
    try:
        num, den = (text or "").replace("/", ":").split(":")
        return Fraction(int(num), int(den)) if int(num) > 0 and int(den) > 0 else None
    except ValueError:
        return None


def _clock(text: str | None) -> float | None:
    """Matroska's per-stream "DURATION" tag, "00:01:02.500000000" -> 62.5: the stream's own end (the
    format's would include a longer audio track)."""
    try:
        h, m, sec = (text or "").split(":")
        return int(h) * 3600 + int(m) * 60 + float(sec)
    except ValueError:
        return None


def _rotation(stream: dict) -> int:
    for side in stream.get("side_data_list", []):
        if "rotation" in side:
            return int(round(-float(side["rotation"]))) % 360  # display matrix: counter-clockwise
    return int(stream.get("tags", {}).get("rotate", 0)) % 360


def probe(path: Path) -> VideoInfo:
    path = Path(path)
    if not path.is_file():
        raise MediaError(path, "no such file")
    if path.stat().st_size == 0:
        raise MediaError(path, "an empty file (0 bytes)")
    cmd = [tool("ffprobe"), "-v", "error", "-print_format", "json", "-show_format", "-show_streams", ffmpeg_path(path)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise_machine_faults(result.returncode, result.stderr, "ffprobe", path, "probing")
        cause = (result.stderr.strip().splitlines() or ["ffprobe could not read it"])[-1].removeprefix(f"{ffmpeg_path(path)}: ")
        raise MediaError(path, f"not a readable media file ({cause})")
    data = json.loads(result.stdout)
    streams = data.get("streams", [])
    video = [s for s in streams if s.get("codec_type") == "video" and not s.get("disposition", {}).get("attached_pic")]
    if not video:
        raise MediaError(path, "has no video stream")
    v, fmt = video[0], data.get("format", {})
    start = float(v.get("start_time") or 0)
    tagged_end = _clock(v.get("tags", {}).get("DURATION"))  # Matroska: where the stream ends, not its length
    duration = float(v.get("duration") or (tagged_end and tagged_end - start) or fmt.get("duration") or 0)
    if duration <= 0:
        raise MediaError(path, "the video stream has no duration")
    rotation = _rotation(v)
    sar = _fraction(v.get("sample_aspect_ratio")) or Fraction(1)
    width, height = round(int(v["width"]) * sar), int(v["height"])
    if rotation in (90, 270):
        width, height = height, width
    return VideoInfo(
        path=path, duration=duration, start=start,
        format_start=float(fmt.get("start_time") or 0), width=width, height=height,
        rotation=rotation, sar=f"{sar.numerator}:{sar.denominator}", nominal_fps=float(_fraction(v.get("avg_frame_rate")) or 0),
        codec=v.get("codec_name", "?"), audio_streams=sum(s.get("codec_type") == "audio" for s in streams),
        streams=[{"index": s["index"], "type": s.get("codec_type"), "codec": s.get("codec_name"),
                  "start": float(s.get("start_time") or 0)} for s in streams],
    )
