"""The paper's two learned evaluation models, trainable on a catalog (no weights were released).

Both read a clip as two sequences, one step per second: video features (N, Dv) (our frame tokens, or
CLIP features) and EnCodec latents (the encoder's output, averaged per second) (N, Da). Each side is a
4-layer, 4-head, 512-wide transformer encoder over its sequence.

- CMR (cross-modal relevance): the two sides pooled and projected to one space; trained contrastively
  (symmetric InfoNCE over a batch) with a learned temperature. Score: cosine similarity of a pair.
- TA (temporal alignment): attention from each video second to the music seconds; trained to put its
  mass on the diagonal (second t of the video attends to second t of the music). Score: the mean
  attention on the diagonal (1 = perfectly aligned, 1/N = no preference).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SequenceEncoder(nn.Module):
    def __init__(self, in_dim: int, width: int = 512, layers: int = 4, heads: int = 4, max_len: int = 512,
                 dropout: float = 0.1):
        super().__init__()
        self.proj = nn.Linear(in_dim, width)
        self.position = nn.Parameter(torch.randn(max_len, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, in) -> (B, N, width); mask (B, N) True on real steps."""
        h = self.proj(x) + self.position[: x.shape[1]]
        h = self.encoder(h, src_key_padding_mask=None if mask is None else ~mask)
        return self.norm(h)


def _pool(h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return h.mean(1)
    return (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)


class CrossModalRelevance(nn.Module):
    def __init__(self, video_dim: int, music_dim: int, width: int = 512, layers: int = 4, heads: int = 4,
                 embed_dim: int = 256):
        super().__init__()
        self.video = SequenceEncoder(video_dim, width, layers, heads)
        self.music = SequenceEncoder(music_dim, width, layers, heads)
        self.video_head, self.music_head = nn.Linear(width, embed_dim), nn.Linear(width, embed_dim)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))   # the learned temperature

    def embed(self, video: torch.Tensor, music: torch.Tensor, mask: torch.Tensor | None = None):
        v = F.normalize(self.video_head(_pool(self.video(video, mask), mask)), dim=-1)
        m = F.normalize(self.music_head(_pool(self.music(music, mask), mask)), dim=-1)
        return v, m

    def loss(self, video, music, mask=None) -> torch.Tensor:
        v, m = self.embed(video, music, mask)
        logits = self.log_scale.exp().clamp(max=100) * v @ m.T            # (B, B)
        target = torch.arange(len(v), device=v.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2

    @torch.no_grad()
    def score(self, video, music, mask=None) -> torch.Tensor:
        """(B,) cosine similarity of each (video, music) pair."""
        v, m = self.embed(video, music, mask)
        return (v * m).sum(-1)


class TemporalAlignment(nn.Module):
    def __init__(self, video_dim: int, music_dim: int, width: int = 512, layers: int = 4, heads: int = 4):
        super().__init__()
        self.video = SequenceEncoder(video_dim, width, layers, heads)
        self.music = SequenceEncoder(music_dim, width, layers, heads)
        self.query, self.key = nn.Linear(width, width), nn.Linear(width, width)

    def attention(self, video, music, mask=None) -> torch.Tensor:
        """(B, N, N): for each video second, its attention over the music seconds."""
        q, k = self.query(self.video(video, mask)), self.key(self.music(music, mask))
        scores = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])
        if mask is not None:
            scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        return scores.softmax(-1)

    def loss(self, video, music, mask=None) -> torch.Tensor:
        diagonal = self.attention(video, music, mask).diagonal(dim1=1, dim2=2).clamp(min=1e-9).log()  # (B, N)
        if mask is None:
            return -diagonal.mean()
        return -(diagonal * mask).sum() / mask.sum()

    @torch.no_grad()
    def score(self, video, music, mask=None) -> torch.Tensor:
        """(B,) the mean attention a video second gives its own music second."""
        diagonal = self.attention(video, music, mask).diagonal(dim1=1, dim2=2)
        if mask is None:
            return diagonal.mean(-1)
        return (diagonal * mask).sum(-1) / mask.sum(-1)


def train_evaluator(model: nn.Module, video: torch.Tensor, music: torch.Tensor, steps: int = 200,
                    batch_size: int = 16, lr: float = 3e-4, seed: int = 0) -> list[float]:
    """Fit CMR or TA on paired clips (M, N, Dv) and (M, N, Da); returns the loss per step."""
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    losses = []
    model.train()
    for _ in range(steps):
        pick = torch.randperm(len(video), generator=g)[:batch_size]
        loss = model.loss(video[pick], music[pick])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses

