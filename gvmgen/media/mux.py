"""Put the music into the video without touching the picture."""

from __future__ import annotations

import subprocess
from pathlib import Path

from .probe import MediaError, VideoInfo, tool

MUX_MODES = ("replace", "mix")


def mux(info: VideoInfo, music: Path, out: Path, mode: str = "replace", duck_db: float = 12.0) -> None:
    """Write `out`: every video, subtitle, data and attachment stream of the source copied packet for
    packet, the music as AAC (Opus for .webm) starting with the first frame, and

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
    tmp = out.with_name(f".{out.stem}.partial{out.suffix}")
    codec = ["-c:a", "libopus", "-b:a", "160k"] if out.suffix.lower() == ".webm" else ["-c:a", "aac", "-b:a", "192k"]
    cmd = [tool("ffmpeg"), "-v", "error", "-y", "-i", str(info.path), "-itsoffset", f"{info.start:.6f}", "-i", str(music)]
    if mode == "replace":
        cmd += ["-map", "0:v", "-map", "1:a:0"]
    else:
        graph = (f"[0:a:0]volume=-{duck_db}dB[bed];[bed][1:a:0]amix=inputs=2:duration=first:normalize=0,"
                 f"aresample=async=1[music]")
        cmd += ["-filter_complex", graph, "-map", "0:v", "-map", "[music]", "-map", "0:a?", "-map", "-0:a:0"]
    cmd += ["-map", "0:s?", "-map", "0:d?", "-map", "0:t?", "-map_metadata", "0", "-map_chapters", "0",
            "-copyts",  # keep the source's timestamps; the music is offset to its first frame above
            "-c", "copy", *codec, "-disposition:a:0", "default", str(tmp)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise MediaError(info.path, f"muxing the music into {out} failed ({result.stderr.strip()[-400:]})")
    tmp.replace(out)
