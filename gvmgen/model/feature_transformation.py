"""Feature transformation: trainable music queries read each frame's CLIP patch tokens.

This is the paper's spatial cross-attention, in two layouts (`GVMGenConfig.feature_transformation`):

- `official`: the official QFormerLayer exactly, including its unusual residuals, so the official
  weights load and give the same numbers: the self- and cross-attention blocks are
  `LayerNorm(dense(attn(x)))` with *no* residual, and only the feed-forward block adds its input back,
  after its LayerNorm. Nothing carries a frame's content past a block once the queries dominate it,
  and in training the frame tokens can stop depending on the picture (README, "Alignment probe").
- `residual`: pre-LN blocks with a residual path around all three sub-blocks (BLIP-2's Q-Former is
  residual throughout), reading patches already normalised (by CLIP's post-LN, see GVMGen), and queries
  that start from the frame's mean patch token. The identity paths carry that mean patch to the output
  whatever the attention learns, and no LayerNorm follows them: a constant that training adds to every
  frame (the queries, the biases, which Adam grows at the learning rate whatever their gradient) shifts
  the tokens but cannot shrink their differences, as a LayerNorm after it would (the official collapse).
  So the output keeps the picture by construction: at worst mean pooling, refined by the queries.

The pooled ablations (`mean-pool`, `cls`) have no layers; GVMGen pools the patches itself.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import GVMGenConfig


class _AttentionOutput(nn.Sequential):
    def __init__(self, width: int, eps: float, dropout: float):
        super().__init__()
        self.dense = nn.Linear(width, width)
        self.LayerNorm = nn.LayerNorm(width, eps=eps)
        self.dropout = nn.Dropout(dropout)


class OfficialLayer(nn.Module):
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


class ResidualLayer(nn.Module):
    """Pre-LN: h + attn(LN(h)), h + cross(LN(h), patches), h + ffn(LN(h))."""

    def __init__(self, width: int, heads: int, ffn_dim: int, dropout: float, eps: float, cross: bool):
        super().__init__()
        self.self_norm = nn.LayerNorm(width, eps=eps)
        self.attention = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.cross_norm = nn.LayerNorm(width, eps=eps) if cross else None
        self.crossattention = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True) if cross else None
        self.ffn_norm = nn.LayerNorm(width, eps=eps)
        self.ffn_in = nn.Linear(width, ffn_dim)
        self.ffn_out = nn.Linear(ffn_dim, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, queries: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        # queries (N, Q, C), patches (N, P, C), already normalised
        x = self.self_norm(queries)
        h = queries + self.dropout(self.attention(x, x, x, need_weights=False)[0])
        if self.crossattention is not None:
            x = self.cross_norm(h)
            h = h + self.dropout(self.crossattention(x, patches, patches, need_weights=False)[0])
        return h + self.dropout(self.ffn_out(nn.functional.gelu(self.ffn_in(self.ffn_norm(h)))))


class FeatureTransformation(nn.Module):
    """(N, P, C) patch tokens of N frames -> (N, C): the music queries' outputs, pooled (mean or sum).

    The official layout reads the CLIP encoder's raw output and is followed by CLIP's post-LN; the
    residual one reads the post-LN's output and is followed by nothing but linear projections."""

    def __init__(self, config: GVMGenConfig):
        super().__init__()
        width, layers, eps = config.clip["hidden_size"], config.ft_layers, config.ft_layer_norm_eps
        self.layout = config.feature_transformation
        self.pooling = config.ft_query_pooling
        self.queries = nn.Parameter(torch.randn(1, config.num_queries, width) * 0.02)
        # official: its LayerNorm on the queries; residual: none, the patches come normalised
        self.norm = nn.LayerNorm(width, eps=eps) if self.layout == "official" else None
        self.dropout = nn.Dropout(config.ft_dropout)
        layer = OfficialLayer if self.layout == "official" else ResidualLayer
        self.layers = nn.ModuleList(
            layer(width, config.ft_heads, config.ft_ffn_dim, config.ft_dropout, eps,
                  cross=(i % config.ft_cross_attention_every == 0))
            for i in range(layers)
        )
        if self.layout == "official":
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
        n = patches.shape[0]
        if self.layout == "official":
            h = self.dropout(self.norm(self.queries)).expand(n, -1, -1)           # (N, Q, C)
        else:
            h = self.queries + self.dropout(patches.mean(dim=1, keepdim=True))     # (N, Q, C)
        for layer in self.layers:
            h = layer(h, patches)
        return h.sum(dim=1) if self.pooling == "sum" else h.mean(dim=1)            # (N, C)
