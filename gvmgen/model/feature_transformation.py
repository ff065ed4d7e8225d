"""Feature transformation: trainable music queries read each frame's CLIP patch tokens.

This is the paper's spatial cross-attention. The layer layout follows the official QFormerLayer
exactly, including its unusual residuals, so the official weights load and give the same numbers:
the self- and cross-attention blocks are `LayerNorm(dense(attn(x)))` with *no* residual, and only the
feed-forward block adds its input back, after its LayerNorm.
"""

from __future__ import annotations

import torch
from torch import nn


class _AttentionOutput(nn.Sequential):
    def __init__(self, width: int, eps: float, dropout: float):
        super().__init__()
        self.dense = nn.Linear(width, width)
        self.LayerNorm = nn.LayerNorm(width, eps=eps)
        self.dropout = nn.Dropout(dropout)


class FeatureTransformationLayer(nn.Module):
    def __init__(self, width: int, heads: int, ffn_dim: int, dropout: float, eps: float, cross: bool):
        super().__init__()
        self.attention = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.self_output = _AttentionOutput(width, eps, dropout)
        self.crossattention = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True) if cross else None
        self.cross_output = _AttentionOutput(width, eps, dropout) if cross else None
        self.ffn_in = nn.Linear(width, ffn_dim)
        self.ffn_out = nn.Linear(ffn_dim, width)
        self.ffn_norm = nn.LayerNorm(width, eps=eps)
        self.ffn_dropout = nn.Dropout(dropout)

    def forward(self, queries: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        # queries (N, Q, C), patches (N, P, C)
        h = self.self_output(self.attention(queries, queries, queries, need_weights=False)[0])
        if self.crossattention is not None:
            h = self.cross_output(self.crossattention(h, patches, patches, need_weights=False)[0])
        ffn = self.ffn_norm(self.ffn_out(nn.functional.gelu(self.ffn_in(h))))
        return self.ffn_dropout(ffn + h)


class FeatureTransformation(nn.Module):
    """(N, P, C) patch tokens of N frames -> (N, C): the mean over the music queries."""

    def __init__(self, width: int, num_queries: int, layers: int, heads: int, ffn_dim: int,
                 dropout: float, eps: float, cross_every: int):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(1, num_queries, width) * 0.02)
        self.norm = nn.LayerNorm(width, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            FeatureTransformationLayer(width, heads, ffn_dim, dropout, eps, cross=(i % cross_every == 0))
            for i in range(layers)
        )
        self._init_like_official(width, layers)

    @torch.no_grad()
    def _init_like_official(self, width: int, layers: int) -> None:
        proj_std = width ** -0.5 * (2 * layers) ** -0.5
        for layer in self.layers:
            for attn, out in ((layer.attention, layer.self_output), (layer.crossattention, layer.cross_output)):
                if attn is None:
                    continue
                nn.init.normal_(attn.in_proj_weight, std=width ** -0.5)
                nn.init.normal_(attn.out_proj.weight, std=proj_std)
                nn.init.normal_(out.dense.weight, std=(2 * width) ** -0.5)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        h = self.dropout(self.norm(self.queries)).expand(patches.shape[0], -1, -1)  # (N, Q, C)
        for layer in self.layers:
            h = layer(h, patches)
        return h.mean(dim=1)  # (N, C)
