"""GVMGen: video frames -> visual tokens -> MusicGen LM -> EnCodec tokens -> audio.

    frames (N, 3, S, S) --CLIP ViT (frozen)--> patch tokens (N, P, C)          spatial self-attention
        --feature transformation (music queries)--> (N, C)                      spatial cross-attention
        --CLIP post-LayerNorm, visual projection, output projection--> (N, D)   one token per frame
    MusicGen decoder over delayed EnCodec codes, cross-attending to a window's
    frame tokens                                                                temporal cross-attention
    EnCodec decoder: codes (B, K, T) -> audio (B, T * hop)

Hard choice: the visual side ends in *one token per frame*, kept instead of the frames, so a video's
conditioning costs D floats per second (about 15 MB per hour at D = 1024) and generation can slide a
window over it without ever touching pixels again.
"""

from __future__ import annotations

import math
import threading

import torch
from torch import nn
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    EncodecConfig,
    EncodecModel,
    MusicgenDecoderConfig,
    MusicgenForCausalLM,
)

from .config import GVMGenConfig
from .decoding import StaticDecoder
from .delay import delay
from .feature_transformation import FeatureTransformation

DECODER_LOCK = threading.Lock()
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class TimeEmbedding(nn.Module):
    """Sinusoidal features of a frame's time (seconds from its window's start), linearly projected.

    Beyond the paper: the official LM cross-attends to an unordered set of frame tokens.
    The projection starts at zero, so switching it on changes nothing until it is trained.
    """

    def __init__(self, dim: int, num_frequencies: int = 16, max_period_s: float = 60.0):
        super().__init__()
        periods = torch.logspace(0, math.log10(max_period_s), num_frequencies)  # 1 s .. 60 s
        self.register_buffer("angular", 2 * math.pi / periods, persistent=False)
        self.proj = nn.Linear(2 * num_frequencies, dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, seconds: torch.Tensor) -> torch.Tensor:
        phase = seconds[..., None].float() * self.angular  # (..., F)
        return self.proj(torch.cat([phase.sin(), phase.cos()], dim=-1))


def sin_embedding(positions: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(F,) positions -> (F, dim): cosines then sines at geometric periods from 1 to max_period, the
    layout of audiocraft's cross-attention position embedding, so a checkpoint trained with it reads alike."""
    half = dim // 2
    periods = max_period ** (torch.arange(half, device=positions.device, dtype=torch.float32) / (half - 1))
    phase = positions.float()[:, None] / periods                                # (F, half)
    return torch.cat([phase.cos(), phase.sin()], dim=-1)


class GVMGen(nn.Module):
    def __init__(self, config: GVMGenConfig):
        super().__init__()
        self.config = config
        clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**config.clip))
        self.vision = clip.vision_model          # embeddings, pre-LN, encoder, post-LN
        self.visual_projection = clip.visual_projection  # C -> 768 (pretrained, trained further)
        self.feature_transformation = FeatureTransformation(config) if config.has_queries else None
        lm_width = config.lm["hidden_size"]
        self.output_proj = nn.Linear(config.clip["projection_dim"], lm_width)
        self.time_embedding = TimeEmbedding(lm_width) if config.time_embedding else None
        self.null_condition = nn.Parameter(torch.zeros(lm_width)) if config.learned_null_condition else None
        self.lm = MusicgenForCausalLM(MusicgenDecoderConfig(**config.lm))
        self.codec = EncodecModel(EncodecConfig(**config.codec))  # codebooks start at zero: see init_codebooks
        self.register_buffer("pixel_mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        self.freeze_pretrained_encoders()

    def freeze_pretrained_encoders(self) -> None:
        """CLIP's transformer and EnCodec stay frozen; CLIP's post-LN and projection train on."""
        for module in (self.vision.embeddings, self.vision.pre_layrnorm, self.vision.encoder, self.codec):
            module.requires_grad_(False)

    @property
    def pad_token(self) -> int:
        return self.config.lm["vocab_size"]

    # ---- visual side ----------------------------------------------------------------------------
    def frame_tokens(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, S, S, 3) uint8 RGB frames, already resized and centre-cropped -> (N, D) tokens."""
        return self.tokens_from_patches(self.patch_tokens(frames))

    @torch.no_grad()
    def patch_tokens(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, S, S, 3) uint8 RGB -> (N, P, C) the frozen CLIP's patch tokens (before its post-LN)."""
        pixels = frames.permute(0, 3, 1, 2).to(self.pixel_mean.dtype) / 255.0
        pixels = (pixels - self.pixel_mean) / self.pixel_std                    # (N, 3, S, S)
        return self.vision(pixel_values=pixels).last_hidden_state

    def tokens_from_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """(N, P, C) patch tokens -> (N, D): the trainable part of the visual side."""
        layout, post_ln = self.config.feature_transformation, self.vision.post_layernorm
        if layout == "residual":  # normalised before the queries, nothing but linear maps after them
            return self.output_proj(self.visual_projection(self.feature_transformation(post_ln(patches))))
        if layout == "mean-pool":
            pooled = patches.mean(dim=1)                                        # (N, C) all patches
        elif layout == "cls":
            pooled = patches[:, 0]                                              # (N, C) the CLS token
        else:
            pooled = self.feature_transformation(patches)                       # (N, C) the queries
        return self.output_proj(self.visual_projection(post_ln(pooled)))        # (N, D)

    @torch.no_grad()
    def encode_video_frames(self, frames: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """(N, S, S, 3) uint8 frames -> (N, D) float32 tokens on the CPU, `batch_size` frames at a time on
        the model's device: memory does not grow with length. On a GPU the matrix products run in bf16
        (autocast, whatever the weights' dtype): CLIP ViT-L is most of a frame's cost."""
        device = self.pixel_mean.device
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = [self.frame_tokens(frames[i:i + batch_size].to(device, non_blocking=True)).float().cpu()
                   for i in range(0, len(frames), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, self.config.lm["hidden_size"])

    def window_condition(self, tokens: torch.Tensor, seconds: torch.Tensor) -> torch.Tensor:
        """A window's frame tokens (F, D) at `seconds` from the window's start -> (F, D) LM condition."""
        if self.time_embedding is not None:
            tokens = tokens + self.time_embedding(seconds.to(tokens.device)).to(tokens.dtype)
        if self.config.cross_attention_pos_emb:
            positions = sin_embedding(torch.arange(len(tokens), device=tokens.device), tokens.shape[-1])  # (F, D)
            tokens = tokens + self.config.cross_attention_pos_emb_scale * positions.to(tokens.dtype)
        return tokens

    def null_tokens(self, batch: int, dtype=None) -> torch.Tensor:
        """(B, 1, D) the null condition: all zero (official), or a learned token."""
        d = self.config.lm["hidden_size"]
        dtype = dtype or self.output_proj.weight.dtype
        if self.null_condition is None:
            return torch.zeros(batch, 1, d, dtype=dtype, device=self.output_proj.weight.device)
        return self.null_condition.to(dtype).expand(batch, 1, d)

    # ---- language model -------------------------------------------------------------------------
    def static_decoder(self) -> StaticDecoder:
        """The LM's static-shape decoder on the LM's current device and dtype, made once: its buffers and
        CUDA graphs serve every later window and video. Kept out of the module tree (no state_dict)."""
        weight = next(self.lm.parameters())
        with DECODER_LOCK:  # the flow's threads (graph capture, compose) must share one
            decoder = self.__dict__.get("_static_decoder")
            if decoder is None or (decoder.device, decoder.dtype) != (weight.device, weight.dtype):
                decoder = StaticDecoder(self.lm, self.pad_token)
                self.__dict__["_static_decoder"] = decoder
        return decoder

    def lm_logits(self, codes: torch.Tensor, condition: torch.Tensor, condition_mask: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits for training and tests.

        codes (B, K, T) frames; condition (B, F, D); condition_mask (B, F) bool.
        Returns (B, K, T + K - 1, V): the logits of every delayed step, each predicted from the steps before it.
        """
        b, k, _ = codes.shape
        delayed = delay(codes, self.pad_token)                                   # (B, K, S)
        inputs = torch.cat([delayed.new_full((b, k, 1), self.pad_token), delayed[:, :, :-1]], dim=2)
        out = self.lm(input_ids=inputs.reshape(b * k, -1), encoder_hidden_states=condition,
                      encoder_attention_mask=condition_mask.long(), use_cache=False)
        return out.logits.reshape(b, k, -1, out.logits.shape[-1])

    # ---- codec ----------------------------------------------------------------------------------
    @torch.no_grad()
    def decode_audio(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, K, T) codes -> (B, T * hop) audio in [-1, 1]."""
        embeddings = self.codec.quantizer.decode(codes.transpose(0, 1))
        return self.codec.decoder(embeddings)[:, 0]

    @torch.no_grad()
    def init_codebooks(self, audio: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Give a randomly initialised codec usable codebooks: each stage's codes are drawn from the
        residuals that the encoder and the stages before it leave on `audio` (B, samples), the way
        EnCodec seeds its k-means. Random N(0, 1) codes would sit far from the encoder's small
        outputs, and every sound would get the same nearest code."""
        residual = self.codec.encoder(audio[:, None]).permute(0, 2, 1)       # (B, T, D)
        residual = residual.reshape(-1, residual.shape[-1])
        for layer in self.codec.quantizer.layers:
            book = layer.codebook
            picks = torch.randint(len(residual), (book.codebook_size,), generator=generator)
            book.embed.copy_(residual[picks])
            residual = residual - book.decode(book.quantize(residual))

    @torch.no_grad()
    def encode_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, samples) mono audio at the codec's rate -> (B, K, T) codes."""
        embeddings = self.codec.encoder(audio[:, None])
        bandwidth = self.codec.config.target_bandwidths[-1]
        return self.codec.quantizer.encode(embeddings, bandwidth).transpose(0, 1)
