"""Audio helpers: decoding any file ffmpeg reads, and WAV files (stitching windows: stitching.py)."""

from __future__ import annotations

import subprocess
import wave
from pathlib import Path

import numpy as np

from .probe import MediaError, tool


def write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """Mono float audio in [-1, 1] -> 16-bit PCM WAV."""
    pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(pcm.tobytes())


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as f:
        pcm = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2")
        return pcm.astype(np.float32) / 32767.0, f.getframerate()


def decode_audio(path: Path, sample_rate: int, lead_s: float = 0.0) -> np.ndarray:
    """The first audio stream of `path` as mono float32 at `sample_rate`.

    `lead_s` is how late the audio starts against the timeline it must line up with (a video
    stream's start, say): positive pads silence in front, negative drops the audio before it.
    """
    cmd = [tool("ffmpeg"), "-v", "error", "-nostdin", "-i", str(path), "-map", "0:a:0", "-ac", "1",
           "-ar", str(sample_rate), "-f", "f32le", "-"]
    result = subprocess.run(cmd, capture_output=True)
    if result.returncode != 0:
        cause = (result.stderr.decode(errors="replace").strip().splitlines() or ["no audio stream"])[-1]
        raise MediaError(path, f"cannot decode its audio ({cause})")
    audio = np.frombuffer(result.stdout, dtype=np.float32)
    if not len(audio):
        raise MediaError(path, "has no audio")
    shift = round(lead_s * sample_rate)
    return np.concatenate([np.zeros(shift, np.float32), audio]) if shift > 0 else audio[-shift:].copy()
