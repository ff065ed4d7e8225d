"""MusicGen's delay pattern: codebook k is shifted right by k steps.

With K codebooks and T frames the delayed sequence has T + K - 1 steps; the steps where a codebook
has no frame (before its start, after its end) hold the special token `pad` (= vocabulary size).
"""

from __future__ import annotations

import torch


def delay(codes: torch.Tensor, pad: int) -> torch.Tensor:
    """(B, K, T) frames -> (B, K, T + K - 1) delayed steps."""
    b, k, t = codes.shape
    out = codes.new_full((b, k, t + k - 1), pad)
    for q in range(k):
        out[:, q, q:q + t] = codes[:, q]
    return out


def undelay(delayed: torch.Tensor) -> torch.Tensor:
    """(B, K, S) delayed steps -> (B, K, S - K + 1) frames."""
    b, k, s = delayed.shape
    t = s - k + 1
    return torch.stack([delayed[:, q, q:q + t] for q in range(k)], dim=1)


def delayed_valid_mask(num_codebooks: int, num_frames: int, device=None) -> torch.Tensor:
    """(K, T + K - 1) bool: True where a delayed step holds a real frame (not the padding)."""
    steps = torch.arange(num_frames + num_codebooks - 1, device=device)
    frame = steps[None, :] - torch.arange(num_codebooks, device=device)[:, None]
    return (frame >= 0) & (frame < num_frames)
