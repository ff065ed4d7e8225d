"""Score one video: the single path that the CLI and the flows both take.

    video file -> probe -> 1 fps frames -> visual tokens -> windows of music tokens -> audio
    -> stitched track (WAV) -> muxed video
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .generate import GenerationSettings, MusicGenerator, VisualTokens
from .media.audio import write_wav
from .media.video import mux, probe, sample_frames
from .model.gvmgen import GVMGen


@dataclass
class ScoredVideo:
    video: Path
    track: Path
    duration: float
    frames: int
    windows: int


def visual_tokens(model: GVMGen, video: Path) -> VisualTokens:
    info = probe(video)
    frames, times = sample_frames(video, model.config.image_size, model.config.frames_per_second)
    tokens = model.encode_video_frames(torch.from_numpy(frames))
    return VisualTokens(tokens=tokens, times=torch.from_numpy(times), duration=info.duration)


def score_video(model: GVMGen, video: Path, out: Path, settings: GenerationSettings | None = None,
                progress: Callable[[int, int], None] | None = None) -> ScoredVideo:
    """Write `out` (the video with the music muxed in) and the track beside it as `out`.wav."""
    video, out = Path(video), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tokens = visual_tokens(model, video)
    generator = MusicGenerator(model, settings)
    track: np.ndarray = generator.generate([tokens], progress=progress)[0]
    wav = out.with_suffix(".wav")
    tmp = wav.with_name(f".{wav.stem}.partial.wav")
    write_wav(tmp, track, model.config.sample_rate)
    tmp.replace(wav)
    mux(video, wav, out)
    return ScoredVideo(out, wav, tokens.duration, len(tokens.times), len(generator.plan(tokens)))
