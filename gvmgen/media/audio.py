"""Audio helpers: crossfade stitching, decoding any file ffmpeg reads, and WAV files."""

from __future__ import annotations

import subprocess
import wave
from pathlib import Path

import numpy as np

from .probe import MediaError, tool


def crossfade_gains(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Equal-power fade-out/fade-in gains for joining `a` into `b` over their common length.

    Plain sin/cos gains keep the power constant only when the two signals are uncorrelated (windows
    generated independently); over correlated material (a continued window repeats its prompt) they
    bulge by up to 3 dB. So the gains are divided by the power the mix would have at each point,
    1 + 2*rho*g_out*g_in, with rho the measured correlation: the output power stays that of the inputs
    whatever their correlation, and rho = 0 gives the textbook sin/cos curves.
    """
    n = len(a)
    x = (np.arange(n) + 0.5) / n
    fade_out, fade_in = np.cos(0.5 * np.pi * x), np.sin(0.5 * np.pi * x)
    denom = float(np.sqrt(np.dot(a, a) * np.dot(b, b)))
    rho = min(max(float(np.dot(a, b)) / denom, 0.0), 1.0) if denom > 0 else 0.0
    norm = np.sqrt(1.0 + 2.0 * rho * fade_out * fade_in)
    return fade_out / norm, fade_in / norm


def stitch(segments: list[tuple[int, np.ndarray]], total: int) -> np.ndarray:
    """Join (start_sample, audio) segments in start order into one track of `total` samples.

    Where a segment overlaps the track so far, the two are crossfaded over the overlap.
    """
    out = np.zeros(total, dtype=np.float32)
    end = 0
    for start, audio in segments:
        audio = audio[: max(0, total - start)].astype(np.float32)
        overlap = max(0, min(end, start + len(audio)) - start)
        if overlap:
            g_out, g_in = crossfade_gains(out[start:start + overlap], audio[:overlap])
            out[start:start + overlap] = out[start:start + overlap] * g_out + audio[:overlap] * g_in
        out[start + overlap:start + len(audio)] = audio[overlap:]
        end = max(end, start + len(audio))
    return out


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
