"""Audio helpers: the delivery format, track files, and decoding any file ffmpeg reads (stitching windows: stitching.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import soundfile
import soxr

from .probe import MediaError, ffmpeg_path, raise_machine_faults, tool


def write_track(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """Float audio in [-1, 1], (samples,) or (samples, channels), as 24-bit PCM: FLAC or WAV, by the
    suffix of `path`."""
    soundfile.write(str(path), np.clip(audio, -1.0, 1.0), sample_rate, subtype="PCM_24")


def read_track(path: Path) -> tuple[np.ndarray, int]:
    """(audio, sample_rate): float32, (samples,) for mono or (samples, channels)."""
    audio, rate = soundfile.read(str(path), dtype="float32")
    return audio, rate


def to_delivery(audio: np.ndarray, sample_rate: int, target_rate: int, channels: int) -> np.ndarray:
    """The model's mono track at the delivery format: resampled with soxr (very high quality), then in
    every channel: (samples,) for one, (samples, channels) for more."""
    if target_rate != sample_rate:
        audio = soxr.resample(np.asarray(audio, dtype=np.float32), sample_rate, target_rate, quality="VHQ")
    return audio if channels == 1 else np.repeat(audio[:, None], channels, axis=1)


def decode_audio(path: Path, sample_rate: int, lead_s: float = 0.0) -> np.ndarray:
    """The first audio stream of `path` as mono float32 at `sample_rate`.

    `lead_s` is how late the audio starts against the timeline it must line up with (a video
    stream's start, say): positive pads silence in front, negative drops the audio before it.
    """
    cmd = [tool("ffmpeg"), "-v", "error", "-nostdin", "-i", ffmpeg_path(path), "-map", "0:a:0", "-ac", "1",
           "-ar", str(sample_rate), "-f", "f32le", "-"]
    result = subprocess.run(cmd, capture_output=True)
    if result.returncode != 0:
        stderr = result.stderr.decode(errors="replace")
        raise_machine_faults(result.returncode, stderr, "ffmpeg", path, "decoding the audio of")
        cause = (stderr.strip().splitlines() or ["no audio stream"])[-1]
        raise MediaError(path, f"cannot decode its audio ({cause})")
    audio = np.frombuffer(result.stdout, dtype=np.float32)
    if not len(audio):
        raise MediaError(path, "has no audio")
    shift = round(lead_s * sample_rate)
    return np.concatenate([np.zeros(shift, np.float32), audio]) if shift > 0 else audio[-shift:].copy()
