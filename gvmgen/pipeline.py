"""Score videos: the single path that the CLI and the flows both take, in three stages.

    prepare (media, CPU):  video file -> probe -> shots + 1 fps frames (one decode) -> visual tokens
    compose (model, GPU):  visual tokens of one or more videos -> windows of music tokens -> audio
    finish  (media, CPU):  stitched track -> loudness-normalised WAV -> muxed video -> PNG report

A catalog run overlaps them: the next videos are prepared while the model composes, and the windows
of several videos share the model's batches, a video joining as another is done (`Composer`).

`prepare` splits in two where the media work runs on other machines than the model:
`extract_frames` (media only, needs no model, just its image size) and `encode` (CLIP and the feature
transformation, on the model's device). On one machine `prepare` streams each chunk of frames into the
model as the decode produces it, so memory stays flat however long the video.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .files import atomic_path
from .generate import MusicGenerator, VisualTokens
from .media.audio import to_delivery, write_track
from .media.frames import Analysis, Frame, ShotDetection, analyse
from .media.loudness import LoudnessReport, normalise
from .media.mux import mux
from .media.probe import MediaError
from .model.gvmgen import GVMGen
from .report import ReportData, write_report
from .settings import ScoreSettings
from .windows import seams

MIN_DURATION_S = 0.5  # of decoded picture; shorter, and there is no loudness to measure (BS.1770 gates 400-ms blocks)


@dataclass
class ScoredVideo:
    video: Path
    track: Path
    report: Path
    duration: float
    shots: int
    frames: int
    windows: int
    loudness: LoudnessReport


class PictureDigest:
    """What a video's picture is, for the seeds of its music (`VisualTokens.identity`): a digest of its
    chosen frames (every fourth pixel each way) and their times, in time order, whatever order the
    decoder gave them in: two copies of a file agree, wherever they lie."""

    def __init__(self):
        self.frames: list[tuple[float, bytes]] = []

    def add(self, images: np.ndarray, infos: list[Frame]) -> None:
        self.frames += [(f.t, hashlib.blake2b(np.ascontiguousarray(image[::4, ::4]).tobytes(), digest_size=8).digest())
                        for image, f in zip(images, infos)]

    def hexdigest(self) -> str:
        digest = hashlib.blake2b(digest_size=8)
        for t, frame in sorted(self.frames):
            digest.update(f"{t:.6f}".encode() + frame)
        return digest.hexdigest()


def visual_tokens(model: GVMGen, video: Path, detection: ShotDetection | None = None) -> tuple[VisualTokens, Analysis]:
    """Shots, frames and one token per frame, from a single decode; frames never pile up in memory."""
    chunks: list[torch.Tensor] = []
    frames: list[Frame] = []
    picture = PictureDigest()

    def encode_chunk(images, infos):
        chunks.append(model.encode_video_frames(torch.from_numpy(images)))
        frames.extend(infos)
        picture.add(images, infos)

    analysis = analyse(video, model.config.image_size, detection, on_frames=encode_chunk)
    order = _time_order(frames)
    tokens = VisualTokens(torch.cat(chunks)[order], _times(analysis), analysis.duration, analysis.cuts,
                          picture.hexdigest())
    return tokens, analysis


@dataclass
class VideoFrames:
    """What the media stage sends the model when they run on different machines: a video's chosen
    frames as pixels and what the decode learnt of it. About 0.34 MB a frame at 336 px (1.2 GB per
    hour of video at one frame a second), against 4 KB a frame once encoded."""
    path: Path
    analysis: Analysis
    pixels: np.ndarray       # (N, S, S, 3) uint8 RGB, in the order of analysis.frames (time order)
    identity: str            # see PictureDigest


def extract_frames(video: Path, image_size: int, detection: ShotDetection | None = None) -> VideoFrames:
    """The media half of `prepare`: probe, shots and frames in one decode, without any model
    (`image_size`: the model's, `model.config.image_size`)."""
    chunks: list[np.ndarray] = []
    frames: list[Frame] = []
    picture = PictureDigest()

    def keep(images, infos):
        chunks.append(images)
        frames.extend(infos)
        picture.add(images, infos)

    analysis = analyse(Path(video), image_size, detection, on_frames=keep)
    pixels = np.concatenate(chunks) if chunks else np.zeros((0, image_size, image_size, 3), np.uint8)
    return VideoFrames(Path(video), analysis, pixels[_time_order(frames).numpy()], picture.hexdigest())


def _time_order(frames: list[Frame]) -> torch.Tensor:
    """Frames leave the decoder in chunks, not always in time order: the order that sorts them."""
    return torch.argsort(torch.tensor([f.t for f in frames], dtype=torch.float64), stable=True)


def _times(analysis: Analysis) -> torch.Tensor:
    return torch.tensor([f.t for f in analysis.frames], dtype=torch.float64)


@dataclass
class PreparedVideo:
    """A video ready for the model: its tokens, what the media stage learnt of it, and its windows."""
    path: Path
    tokens: VisualTokens
    analysis: Analysis
    windows: list[tuple[float, float]]   # (start, end) seconds of each window the model will generate

    @property
    def seams(self) -> list[float]:
        return seams(self.windows)


@dataclass
class FinishedTrack:
    video: Path
    track: Path
    report: Path
    loudness: LoudnessReport


def prepare(model: GVMGen, video: Path, settings: ScoreSettings) -> PreparedVideo:
    """The media stage: probe, shots, frames and visual tokens (CPU work, and CLIP), streamed."""
    tokens, analysis = visual_tokens(model, Path(video), settings.detection)
    return _planned(model, Path(video), tokens, analysis, settings)


def encode(model: GVMGen, frames: VideoFrames, settings: ScoreSettings) -> PreparedVideo:
    """The model half of `prepare`, for frames extracted elsewhere (`extract_frames`): CLIP and the
    feature transformation on the model's device, in batches (bf16 on a GPU)."""
    tokens = VisualTokens(model.encode_video_frames(torch.from_numpy(frames.pixels)), _times(frames.analysis),
                          frames.analysis.duration, frames.analysis.cuts, frames.identity)
    return _planned(model, frames.path, tokens, frames.analysis, settings)


def _planned(model: GVMGen, video: Path, tokens: VisualTokens, analysis: Analysis,
             settings: ScoreSettings) -> PreparedVideo:
    if analysis.duration < MIN_DURATION_S:  # refused before any generation
        raise MediaError(video, f"too short to score: {analysis.duration:.2f} s of picture "
                                f"(the minimum is {MIN_DURATION_S:g} s)")
    rate = model.config.frame_rate
    windows = [(w.start / rate, min(w.end / rate, analysis.duration))
               for w in MusicGenerator(model, settings.generation).plan(tokens)]
    return PreparedVideo(video, tokens, analysis, windows)


def compose(model: GVMGen, videos: list[PreparedVideo], settings: ScoreSettings,
            progress: Callable[[int, int], None] | None = None) -> list:
    """The model stage: music for several videos at once, their windows sharing batches."""
    return MusicGenerator(model, settings.generation).generate([v.tokens for v in videos], progress=progress)


def finish(video: PreparedVideo, track, sample_rate: int, out: Path, settings: ScoreSettings,
           title: str | None = None) -> FinishedTrack:
    """Bring the model's `sample_rate` mono track to the delivery format, normalise its loudness there,
    write it beside `out` (lossless: .flac or .wav), mux it into `out` and draw the report beside it as
    .report.png (titled `title`, else `out`'s name); each file appears atomically."""
    out, delivery = Path(out), settings.delivery
    track = to_delivery(track, sample_rate, delivery.sample_rate, delivery.channels)
    track, loudness = normalise(track, delivery.sample_rate, settings.target_lufs, settings.ceiling_dbtp)
    with atomic_path(out.with_suffix(f".{delivery.track_format}")) as tmp:
        write_track(tmp, track, delivery.sample_rate)
    track_file = out.with_suffix(f".{delivery.track_format}")
    analysis = video.analysis
    mux(analysis.info, track_file, out, analysis.origin, settings.mux_mode, settings.duck_db,
        delivery.sample_rate, delivery.channels)
    report = write_report(out.with_suffix(".report.png"), ReportData(
        title=title or out.name, duration=analysis.duration,
        shots=analysis.shots, windows=video.windows, seams=video.seams, integrated_lufs=loudness.output_lufs,
        true_peak_dbtp=loudness.true_peak_dbtp, target_lufs=settings.target_lufs),
        track, delivery.sample_rate)
    return FinishedTrack(out, track_file, report, loudness)


def score_video(model: GVMGen, video: Path, out: Path, settings: ScoreSettings | None = None,
                progress: Callable[[int, int], None] | None = None) -> ScoredVideo:
    """Write `out` (the video with the music muxed in), the track and the report beside it."""
    settings = settings or ScoreSettings()
    prepared = prepare(model, video, settings)
    (track,) = compose(model, [prepared], settings, progress)
    done = finish(prepared, track, model.config.sample_rate, out, settings)
    return ScoredVideo(done.video, done.track, done.report, prepared.analysis.duration,
                       len(prepared.analysis.shots), len(prepared.analysis.frames), len(prepared.windows), done.loudness)
