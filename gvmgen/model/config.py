"""GVMGen configuration and presets.

Every number of the architecture is a field here. The defaults reproduce the official GVMGen
configuration (chouliuzuo/GVMGen, `config/conditioner/video2music.yaml` and `model/lm/*.yaml`);
the fields marked "beyond the paper" are off by default.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

# Hugging Face repositories of the pretrained parts.
CLIP_REPO = "openai/clip-vit-large-patch14-336"
MUSICGEN_REPOS = {"small": "facebook/musicgen-small", "medium": "facebook/musicgen-medium"}
ENCODEC_REPO = "facebook/encodec_32khz"

# CLIP ViT-L/14 @ 336 px, vision tower only (transformers' CLIPVisionConfig fields).
CLIP_VIT_L14_336 = dict(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
    image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5,
)

# EnCodec 32 kHz as MusicGen uses it: 4 codebooks of 2048 at 50 frames/s (hop 640).
ENCODEC_32KHZ = dict(
    sampling_rate=32000, audio_channels=1, normalize=False, hidden_size=128, num_filters=64,
    num_residual_layers=1, upsampling_ratios=[8, 5, 4, 4], norm_type="weight_norm", kernel_size=7,
    last_kernel_size=7, residual_kernel_size=3, dilation_growth_rate=2, use_causal_conv=False,
    pad_mode="reflect", compress=2, num_lstm_layers=2, trim_right_ratio=1.0, codebook_size=2048,
    codebook_dim=128, use_conv_shortcut=False, target_bandwidths=[2.2],
)


def _musicgen_lm(hidden: int, layers: int, heads: int) -> dict:
    """MusicGen decoder (transformers' MusicgenDecoderConfig fields)."""
    return dict(
        vocab_size=2048, num_codebooks=4, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, ffn_dim=4 * hidden, max_position_embeddings=2048,
        activation_function="gelu", dropout=0.1, attention_dropout=0.0, activation_dropout=0.0,
        scale_embedding=False, tie_word_embeddings=False,
    )


FEATURE_TRANSFORMATIONS = ("official", "residual", "mean-pool", "cls")


@dataclass
class GVMGenConfig:
    clip: dict = field(default_factory=lambda: dict(CLIP_VIT_L14_336))
    lm: dict = field(default_factory=lambda: _musicgen_lm(1024, 24, 16))
    codec: dict = field(default_factory=lambda: dict(ENCODEC_32KHZ))

    # Feature transformation (Q-Former style), on the CLIP width. Its layout, one of
    # FEATURE_TRANSFORMATIONS: "official" (the official QFormer, whose attention blocks have no residual
    # path: it can lose the picture in training), "residual" (pre-LN, residual paths around every block,
    # queries seeded with the frame's mean patch: keeps the picture by construction), and two ablations
    # without queries: "mean-pool" (the mean of all patch tokens) and "cls" (the CLS token, the official
    # code's path when its Q-Former is off). The presets start from FRESH_LAYOUT; an official checkpoint
    # brings its own layout.
    feature_transformation: str = "official"
    num_queries: int = 16              # the paper's ablation: 16 beats 8 and 32
    ft_query_pooling: str = "mean"     # the queries' outputs -> one token per frame: "mean" (official) or "sum"
    ft_layers: int = 6
    ft_heads: int = 16
    ft_ffn_dim: int = 2048             # 2 x width, as the official QFormerLayer
    ft_cross_attention_every: int = 2  # cross-attention to patch tokens in layers 0, 2, 4
    ft_dropout: float = 0.1
    ft_layer_norm_eps: float = 1e-12

    # Conditioning and guidance (the visual side sees one frame per second of video).
    condition_dropout: float = 0.3     # training: share of examples given the null condition
    guidance_scale: float = 3.0
    learned_null_condition: bool = False  # False: the official all-zero null condition
    time_embedding: bool = False       # beyond the paper: tells the LM which second a frame is
    # audiocraft's fuser option (off in the official model): a fixed sinusoidal embedding of each frame's
    # index in its window, times the scale, added to the frame tokens the LM cross-attends to.
    cross_attention_pos_emb: bool = False
    cross_attention_pos_emb_scale: float = 1.0

    # Seconds of music per training example: fine-tuning cuts clips of up to this length (the official
    # configuration's dataset.segment_duration; an official checkpoint brings its own).
    segment_duration: float = 30.0

    # Sampling.
    top_k: int = 250
    temperature: float = 1.0

    def __post_init__(self):
        if self.feature_transformation not in FEATURE_TRANSFORMATIONS:
            raise ValueError(f"feature_transformation must be one of {FEATURE_TRANSFORMATIONS}, "
                             f"got {self.feature_transformation!r}")
        if self.ft_query_pooling not in ("mean", "sum"):
            raise ValueError(f"ft_query_pooling must be 'mean' or 'sum', got {self.ft_query_pooling!r}")

    @property
    def has_queries(self) -> bool:
        """Whether the feature transformation has layers (music queries), rather than pooling the patches."""
        return self.feature_transformation in ("official", "residual")

    @property
    def frame_rate(self) -> int:
        """Codec token frames per second (50 for EnCodec 32 kHz)."""
        hop = 1
        for r in self.codec["upsampling_ratios"]:
            hop *= r
        return self.codec["sampling_rate"] // hop

    @property
    def sample_rate(self) -> int:
        return self.codec["sampling_rate"]

    @property
    def num_codebooks(self) -> int:
        return self.lm["num_codebooks"]

    @property
    def image_size(self) -> int:
        return self.clip["image_size"]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "GVMGenConfig":
        data = copy.deepcopy(data)
        # Model versions published before the layouts had a flag for the one ablation there was.
        if "spatial_cross_attention" in data:
            data.setdefault("feature_transformation",
                            "official" if data.pop("spatial_cross_attention") else "mean-pool")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown GVMGen config fields: {sorted(unknown)}")
        return cls(**data)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: Path) -> "GVMGenConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


def tiny_config() -> GVMGenConfig:
    """Random, untrained, seconds on a CPU: for tests and offline pipeline checks. It makes noise."""
    return GVMGenConfig(
        # CLIP heads follow OpenAI's rule (width // 64), so a converted tiny checkpoint keeps its shape.
        clip=dict(CLIP_VIT_L14_336, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=1, image_size=32, patch_size=8, projection_dim=24),
        lm=_musicgen_lm(64, 2, 4),
        codec=dict(ENCODEC_32KHZ, hidden_size=16, num_filters=4, num_lstm_layers=1, codebook_dim=16),
        num_queries=4, ft_layers=2, ft_heads=1, ft_ffn_dim=128,
    )


# The layout that fresh GVMGen layers start from in the `small`/`medium` presets: the one that kept the
# picture best in the alignment probe (README, "Alignment probe"). `tiny` keeps the official layout: it
# checks the pipeline on the paper's model shape. `gvmgen finetune --variant` chooses another.
FRESH_LAYOUT = "residual"

PRESETS = {
    "tiny": tiny_config,
    "small": lambda: GVMGenConfig(lm=_musicgen_lm(1024, 24, 16), feature_transformation=FRESH_LAYOUT),
    "medium": lambda: GVMGenConfig(lm=_musicgen_lm(1536, 48, 24), feature_transformation=FRESH_LAYOUT),
}


def preset(name: str) -> GVMGenConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
