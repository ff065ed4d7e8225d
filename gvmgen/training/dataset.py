"""Training clips: a video with music -> 30-s clips cut at shots -> what the frozen encoders make of them.

Hard choice: a clip is cached as *CLIP patch tokens* (fp16, about 35 MB per 30-s clip with ViT-L/14-336)
rather than as 336-px frames (about 10 MB). The encoders are frozen, so their output never changes,
and CLIP ViT-L/14-336 costs about 190 GFLOPs a frame: run at every step it would cost more than the
trainable model itself (about 4 TFLOPs per 30-s clip for `small`, forward and backward). Storage is
the cheap side of that trade; GPU hours are not. The music is cached as EnCodec codes (int16).

A shard is one video's clips in one safetensors file, named by the video's content hash, so a
rebuild skips every video whose shard exists.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..media.audio import decode_audio
from ..media.frames import Frame, ShotDetection, analyse
from ..media.probe import MediaError, probe
from ..model.gvmgen import GVMGen
from ..files import atomic_path

MUSIC_EXTENSIONS = (".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".opus")
MIN_CLIP_S = 5.0   # a clip shorter than this teaches too little; a video shorter than it gives none


@dataclass
class Clip:
    start: float                 # seconds in the video
    end: float
    times: torch.Tensor          # (F,) frame times from the clip's start, seconds
    patches: torch.Tensor        # (F, P, C) fp16 CLIP patch tokens
    codes: torch.Tensor          # (K, T) int16 EnCodec codes

    def load(self) -> "Clip":    # a clip in memory is its own source (see trainer.ClipSource)
        return self


def music_keys(video_key: str) -> list[str]:
    """The naming convention: `shots/a.mp4` pairs with `shots/a.wav` (or .flac, .mp3, ...) beside it,
    the first of these that exists."""
    stem = video_key.rsplit(".", 1)[0]
    return [stem + ext for ext in MUSIC_EXTENSIONS]


def paired_music_key(video_key: str, available: set[str]) -> str | None:
    return next((key for key in music_keys(video_key) if key in available), None)


def plan_clips(duration: float, cuts: list[float], clip_s: float = 30.0, min_s: float = MIN_CLIP_S,
               snap_s: float = 4.0) -> list[tuple[float, float]]:
    """Cover the video with clips of at most `clip_s`, each ending at a shot cut when one lies within
    `snap_s` before its nominal end (so a clip's music and picture begin and end together). A tail
    shorter than `min_s` is dropped; a video shorter than that gives no clip."""
    clips, start = [], 0.0
    while duration - start >= min_s:
        end = min(start + clip_s, duration)
        if end < duration:
            near = [c for c in cuts if end - snap_s <= c < end and c - start >= min_s]
            end = near[-1] if near else end
        clips.append((start, end))
        start = end
    return clips


def split_of(content_hash: str, validation_share: float = 0.1) -> str:
    """'train' or 'validation', by video (never by clip: clips of one video are too alike), stable
    across rebuilds since it depends only on the video's content."""
    bucket = int(hashlib.sha256(content_hash.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "validation" if bucket < validation_share else "train"


def build_clips(model: GVMGen, video: Path, music: Path | None = None, clip_s: float = 30.0,
                detection: ShotDetection | None = None) -> list[Clip]:
    """Clips of `video` with `music` (a paired file) or, when None, the video's own audio track."""
    info = probe(video)
    if music is None and not info.audio_streams:
        raise MediaError(video, "has no audio track and no paired music file")
    patches: list[torch.Tensor] = []
    frames: list[Frame] = []

    def encode(images, infos):
        patches.append(model.patch_tokens(torch.from_numpy(images).to(model.pixel_mean.device)).half().cpu())
        frames.extend(infos)

    analysis = analyse(video, model.config.image_size, detection, on_frames=encode)
    rate = model.config.sample_rate
    if music is None:  # the video's own track, lined up with the picture's timeline
        audio_start = next(s["start"] for s in info.streams if s["type"] == "audio")
        audio = decode_audio(video, rate, lead_s=audio_start - info.start)
    else:
        audio = decode_audio(music, rate)
    all_patches = torch.cat(patches)
    times = torch.tensor([f.t for f in frames], dtype=torch.float64)
    clips = []
    for start, end in plan_clips(min(info.duration, len(audio) / rate), analysis.cuts, clip_s):
        inside = (times >= start) & (times < end)
        piece = torch.from_numpy(audio[round(start * rate):round(end * rate)].copy())
        device = model.pixel_mean.device
        codes = model.encode_audio(piece[None].to(device))[0].to(torch.int16).cpu()   # (K, T)
        clips.append(Clip(start, end, (times[inside] - start).float(), all_patches[inside], codes))
    return clips


def save_shard(path: Path, clips: list[Clip]) -> Path:
    """One safetensors file for a video's clips, written atomically."""
    tensors, spans = {}, []
    for i, c in enumerate(clips):
        tensors[f"{i}.times"], tensors[f"{i}.patches"], tensors[f"{i}.codes"] = c.times, c.patches, c.codes
        spans.append([c.start, c.end])
    path = Path(path)
    with atomic_path(path) as partial:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(partial), metadata={"spans": json.dumps(spans)})
    return path


def load_shard(path: Path) -> list[Clip]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        spans = json.loads(f.metadata()["spans"])
    tensors = load_file(str(path))
    return [Clip(a, b, tensors[f"{i}.times"], tensors[f"{i}.patches"], tensors[f"{i}.codes"])
            for i, (a, b) in enumerate(spans)]



def encoder_key(config) -> str:
    """Names the frozen encoders a shard was made with: clips are shared by every model built on them
    (small and medium share CLIP ViT-L/14-336 and EnCodec 32 kHz) and by no other."""
    frozen = json.dumps({"clip": config.clip, "codec": config.codec}, sort_keys=True)
    return hashlib.sha256(frozen.encode()).hexdigest()[:16]
