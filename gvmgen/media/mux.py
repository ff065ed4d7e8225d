"""Put the music into the video without touching the picture."""

from __future__ import annotations

import subprocess
from pathlib import Path

from ..files import atomic_path
from .probe import MediaError, VideoInfo, ffmpeg_path, raise_machine_faults, tool

MUX_MODES = ("replace", "mix")
# What the muxer must hold, by the output's suffix: ffmpeg writes these containers, and WebM takes only
# VP8/VP9/AV1 picture (the picture is copied, never re-encoded).
CONTAINERS = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".ts", ".m2ts", ".mts", ".avi"}
WEBM_VIDEO = {"vp8", "vp9", "av1"}
AAC_KBPS_PER_CHANNEL, OPUS_KBPS_PER_CHANNEL = 128, 96   # transparent for music: 256 / 192 kb/s in stereo


def check_container(out: Path, codec: str | None) -> None:
    """Raise ValueError (naming `out`) unless a video with `codec` picture (None: not known yet, the
    container alone is checked) can be written as `out`."""
    suffix = Path(out).suffix.lower()
    if suffix not in CONTAINERS:
        raise ValueError(f"{out}: not a video container gvmgen writes (use one of {', '.join(sorted(CONTAINERS))})")
    if suffix == ".webm" and codec is not None and codec not in WEBM_VIDEO:
        raise ValueError(f"{out}: WebM cannot hold {codec} video (the picture is copied, not re-encoded); "
                         f"use .mkv or .mp4")


def mux(info: VideoInfo, music: Path, out: Path, start: float, mode: str = "replace", duck_db: float = 12.0,
        sample_rate: int = 48000, channels: int = 2) -> None:
    """Write `out`: every video, subtitle, data and attachment stream of the source copied packet for
    packet, the music as AAC (Opus for .webm) at `sample_rate` with `channels`, its first sample at
    `start` (the first frame's timestamp: the source's timestamps are kept), and

    - `replace`: the music is the only audio;
    - `mix`: the first original audio track, lowered by `duck_db`, mixed under the music; any further
      original audio tracks are kept as they are.

    The file appears only when complete (written under a temporary name, then renamed).
    """
    if mode not in MUX_MODES:
        raise ValueError(f"mux mode must be one of {MUX_MODES}, got {mode!r}")
    if mode == "mix" and info.audio_streams == 0:
        mode = "replace"  # nothing to mix under
    out = Path(out)
    opus = out.suffix.lower() == ".webm"
    kbps = channels * (OPUS_KBPS_PER_CHANNEL if opus else AAC_KBPS_PER_CHANNEL)
    codec = ["-c:a:0", "libopus" if opus else "aac", "-b:a:0", f"{kbps}k"]
    cmd = [tool("ffmpeg"), "-v", "error", "-nostdin", "-y", "-i", ffmpeg_path(info.path),
           "-itsoffset", f"{start:.6f}", "-i", ffmpeg_path(music)]
    if mode == "replace":
        cmd += ["-map", "0:v", "-map", "1:a:0"]
    else:
        layout = "mono" if channels == 1 else "stereo"
        fmt = f"aformat=sample_rates={sample_rate}:channel_layouts={layout}"
        graph = (f"[0:a:0]{fmt},volume=-{duck_db}dB[bed];[1:a:0]{fmt}[score];"
                 f"[bed][score]amix=inputs=2:duration=first:normalize=0,aresample=async=1[music]")
        cmd += ["-filter_complex", graph, "-map", "0:v", "-map", "[music]", "-map", "0:a?", "-map", "-0:a:0"]
    cmd += ["-map", "0:s?", "-map", "0:d?", "-map", "0:t?", "-map_metadata", "0", "-map_chapters", "0",
            "-copyts",  # keep the source's timestamps; the music is offset to its first frame above
            "-c", "copy", *codec, "-disposition:a:0", "default"]
    with atomic_path(out) as tmp:
        result = subprocess.run([*cmd, ffmpeg_path(tmp)], capture_output=True, text=True)
        if result.returncode != 0:
            raise_machine_faults(result.returncode, result.stderr, "ffmpeg", info.path, "muxing the music into")
            cause = result.stderr.strip()[-400:] or f"ffmpeg's exit status {result.returncode}"
            raise MediaError(info.path, f"muxing the music into {out.name} failed ({cause})")
