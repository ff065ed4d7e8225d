"""Everything that decides what a scored video sounds like, in one serialisable object.

`generate`, `score`, the score-catalog flow and its deployment all take a `ScoreSettings`; a run
records it, and a video's result is keyed by a hash of all of it (with the content and the model):
change any setting and the video is scored again, keep them and it is skipped. It imports neither
torch nor the audio libraries, so that a command line checks its options in an instant.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from .media.frames import ShotDetection
from .media.loudness import STREAMING
from .media.mux import MUX_MODES

STITCH_MODES = ("continue", "parallel")
DEFAULT_OVERLAP_S = {"continue": 12.0, "parallel": 4.0}
SEED_RANGE = (0, 2**31 - 1)  # outputs record it in an SQL INTEGER
TRACK_FORMATS = ("flac", "wav")   # both lossless, 24-bit
LOUDNESS_RANGE = (-40.0, -5.0)    # LUFS: quieter is inaudible beside dialogue, louder cannot stay under the ceiling
CEILING_RANGE = (-9.0, 0.0)       # dBTP
DUCK_RANGE = (0.0, 60.0)          # dB


@dataclass
class GenerationSettings:
    """How the music is sampled and its windows joined (gvmgen.generate.MusicGenerator)."""
    stitch: str = "continue"
    window_s: float = 30.0           # the length the model was trained on
    overlap_s: float | None = None   # None: 12 s for continue (prompt length), 4 s for parallel
    cut_snap_s: float = 4.0          # a seam at most this far after a shot cut moves back to it
    condition: str = "window"        # "window": each window hears its own frames; "video": every frame (official)
    batch_size: int = 8              # windows per forward pass (twice the rows with guidance)
    seed: int | None = 0             # the same seed, the same music for a video; None: a fresh random seed each time
    guidance_scale: float | None = None  # None: the model config's (3.0)
    top_k: int | None = None             # None: the model config's (250)
    temperature: float | None = None     # None: the model config's (1.0); 0 samples greedily

    def __post_init__(self):
        if self.stitch not in STITCH_MODES:
            raise ValueError(f"stitch must be one of {STITCH_MODES}, got {self.stitch!r}")
        if self.overlap_s is None:
            self.overlap_s = DEFAULT_OVERLAP_S[self.stitch]
        if self.condition not in ("window", "video"):
            raise ValueError(f"condition must be 'window' or 'video', got {self.condition!r}")
        if not 0 < self.overlap_s < self.window_s:
            raise ValueError(f"overlap_s must lie between 0 and window_s ({self.window_s}), got {self.overlap_s}")
        if self.seed is not None and not SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]:
            raise ValueError(f"seed must lie between {SEED_RANGE[0]} and {SEED_RANGE[1]}, got {self.seed}")



@dataclass
class Delivery:
    """The audio as delivered: the muxed track (AAC, Opus in WebM) and the lossless track beside the
    video are resampled from the model's 32 kHz mono (soxr, very high quality) to this format."""
    sample_rate: int = 48000      # what video delivery expects
    channels: int = 2             # the mono music in both channels
    track_format: str = "flac"

    def __post_init__(self):
        if not 8000 <= self.sample_rate <= 192000:
            raise ValueError(f"the sample rate must lie between 8000 and 192000 Hz, got {self.sample_rate}")
        if self.channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, got {self.channels}")
        if self.track_format not in TRACK_FORMATS:
            raise ValueError(f"the track format must be one of {', '.join(TRACK_FORMATS)}, got {self.track_format!r}")


@dataclass
class ScoreSettings:
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    detection: ShotDetection = field(default_factory=ShotDetection)
    target_lufs: float = STREAMING      # -14 LUFS; EBU R128 broadcast is -23
    ceiling_dbtp: float = -1.0          # true peak
    mux_mode: str = "replace"           # or "mix": the original audio ducked under the music
    duck_db: float = 12.0
    delivery: Delivery = field(default_factory=Delivery)

    def __post_init__(self):
        for name, value, (low, high), unit in (("loudness target", self.target_lufs, LOUDNESS_RANGE, "LUFS"),
                                               ("true-peak ceiling", self.ceiling_dbtp, CEILING_RANGE, "dBTP"),
                                               ("duck", self.duck_db, DUCK_RANGE, "dB")):
            if not low <= value <= high:
                raise ValueError(f"the {name} must lie between {low:g} and {high:g} {unit}, got {value:g}")
        if self.mux_mode not in MUX_MODES:
            raise ValueError(f"the mux mode must be one of {', '.join(MUX_MODES)}, got {self.mux_mode!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> ScoreSettings:
        """The inverse of to_dict; missing keys take their defaults, unknown keys are refused by name."""
        parts = {"generation": GenerationSettings, "detection": ShotDetection, "delivery": Delivery}
        data = dict(data or {})
        _check_keys(cls, data, "settings")
        for name, part in parts.items():
            if name in data:
                _check_keys(part, data[name], f"settings.{name}")
                data[name] = part(**data[name])
        return cls(**data)


def _check_keys(kind, data: dict, where: str) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a mapping, got {data!r}")
    unknown = set(data) - {f.name for f in fields(kind)}
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
