"""Video in and out through ffmpeg: probe, 1 fps frames for CLIP, and muxing the music in."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class MediaError(ValueError):
    """A file that cannot be used as a video, with the file and the cause in the message."""


@dataclass
class VideoInfo:
    path: Path
    duration: float   # seconds of video
    start: float      # first timestamp, seconds
    width: int
    height: int


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} not found on PATH; install ffmpeg (Debian: apt-get install ffmpeg)")
    return path


def probe(path: Path) -> VideoInfo:
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: no such file")
    cmd = [_tool("ffprobe"), "-v", "error", "-print_format", "json", "-show_format", "-show_streams", str(path)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise MediaError(f"{path}: not a readable media file ({result.stderr.strip().splitlines()[-1:] or ['ffprobe failed']})")
    data = json.loads(result.stdout)
    video = [s for s in data.get("streams", []) if s.get("codec_type") == "video"
             and not s.get("disposition", {}).get("attached_pic")]
    if not video:
        raise MediaError(f"{path}: has no video stream")
    stream, fmt = video[0], data.get("format", {})
    duration = float(stream.get("duration") or fmt.get("duration") or 0)
    if duration <= 0:
        raise MediaError(f"{path}: video stream has no duration")
    return VideoInfo(path, duration, float(stream.get("start_time") or 0), int(stream["width"]), int(stream["height"]))


def sample_frames(path: Path, size: int, fps: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(N, size, size, 3) uint8 RGB frames at `fps`, upright, resized and centre-cropped by ffmpeg,
    and their (N,) times in seconds from the start of the video."""
    vf = (f"setpts=PTS-STARTPTS,fps={fps},"
          f"scale={size}:{size}:force_original_aspect_ratio=increase:flags=bicubic,crop={size}:{size}")
    cmd = [_tool("ffmpeg"), "-v", "error", "-i", str(path), "-an", "-sn", "-vf", vf,
           "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]
    result = subprocess.run(cmd, capture_output=True)
    if result.returncode != 0:
        raise MediaError(f"{path}: decoding failed ({result.stderr.decode(errors='replace').strip()[-300:]})")
    frames = np.frombuffer(bytearray(result.stdout), dtype=np.uint8).reshape(-1, size, size, 3)
    if len(frames) == 0:
        raise MediaError(f"{path}: no frame could be decoded")
    return frames, np.arange(len(frames), dtype=np.float64) / fps


def mux(video: Path, audio: Path, out: Path) -> None:
    """The video streams copied as they are (no re-encoding) with `audio` as AAC; written atomically."""
    out = Path(out)
    tmp = out.with_name(f".{out.stem}.partial{out.suffix}")
    cmd = [_tool("ffmpeg"), "-v", "error", "-y", "-i", str(video), "-i", str(audio),
           "-map", "0:v", "-map", "1:a:0", "-c:v", "copy", "-c:a", "aac", "-b:a", "192k", str(tmp)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise MediaError(f"{video}: muxing into {out} failed ({result.stderr.strip()[-300:]})")
    tmp.replace(out)
