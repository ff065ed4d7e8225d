"""Score one video: the single path that the CLI and the flows both take.

    video file -> probe -> shots + 1 fps frames (one decode) -> visual tokens -> windows of music
    tokens -> audio -> stitched, loudness-normalised track (WAV) -> muxed video
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .generate import GenerationSettings, MusicGenerator, VisualTokens
from .media.audio import write_wav
from .media.frames import Analysis, Frame, ShotDetection, analyse
from .media.loudness import STREAMING, LoudnessReport, normalise
from .media.mux import mux
from .model.gvmgen import GVMGen


@dataclass
class ScoreSettings:
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    detection: ShotDetection = field(default_factory=ShotDetection)
    target_lufs: float = STREAMING      # -14 LUFS; EBU R128 is -23
    ceiling_dbtp: float = -1.0
    mux_mode: str = "replace"           # or "mix": the original audio ducked under the music
    duck_db: float = 12.0


@dataclass
class ScoredVideo:
    video: Path
    track: Path
    duration: float
    shots: int
    frames: int
    windows: int
    loudness: LoudnessReport


def visual_tokens(model: GVMGen, video: Path, detection: ShotDetection | None = None) -> tuple[VisualTokens, Analysis]:
    """Shots, frames and one token per frame, from a single decode; frames never pile up in memory."""
    chunks: list[torch.Tensor] = []
    frames: list[Frame] = []

    def encode(images, infos):
        chunks.append(model.encode_video_frames(torch.from_numpy(images)))
        frames.extend(infos)

    analysis = analyse(video, model.config.image_size, detection, on_frames=encode)
    times = torch.tensor([f.t for f in frames], dtype=torch.float64)
    order = torch.argsort(times)
    tokens = VisualTokens(torch.cat(chunks)[order], times[order], analysis.info.duration, analysis.cuts)
    return tokens, analysis


def score_video(model: GVMGen, video: Path, out: Path, settings: ScoreSettings | None = None,
                progress: Callable[[int, int], None] | None = None) -> ScoredVideo:
    """Write `out` (the video with the music muxed in) and the track beside it as `out`.wav."""
    settings = settings or ScoreSettings()
    video, out = Path(video), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tokens, analysis = visual_tokens(model, video, settings.detection)
    generator = MusicGenerator(model, settings.generation)
    track = generator.generate([tokens], progress=progress)[0]
    track, loudness = normalise(track, model.config.sample_rate, settings.target_lufs, settings.ceiling_dbtp)
    wav = out.with_suffix(".wav")
    tmp = wav.with_name(f".{wav.stem}.partial.wav")
    write_wav(tmp, track, model.config.sample_rate)
    tmp.replace(wav)
    mux(analysis.info, wav, out, settings.mux_mode, settings.duck_db)
    return ScoredVideo(out, wav, analysis.info.duration, len(analysis.shots), len(analysis.frames),
                       len(generator.plan(tokens)), loudness)
