"""Attention blocks for the UNet, chosen by `model.attention` through `make_attention`.

Every block maps (B, C, H, W) -> (B, C, H, W) as x + proj(attend(GN(x))) and names the last
layer of its residual branch `proj`, which the UNet zero-initialises (Ho et al. 2020), so a
new block starts as the identity. Only multi-head self-attention ('mhsa') exists so far; the
other kinds listed in the notes' Option D (linear, neighbourhood, channel) are added here as
further classes behind the same factory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fieldpaint.errors import ConfigError
from fieldpaint.models.layers import group_norm


class SelfAttention(nn.Module):
    """Multi-head self-attention over all H*W positions (Vaswani et al. 2017), as placed in the
    diffusion UNet by Ho et al. (2020) and, multi-head, by Nichol & Dhariwal (2021).

    Uses `scaled_dot_product_attention` without dropout and with contiguous q/k/v: on CPU either
    of those conditions otherwise sends it down the slow, memory-hungry math path. The position
    axis is taken channels-last, so a channels_last input needs no copy.
    """

    def __init__(self, channels: int, heads: int, groups: int) -> None:
        super().__init__()
        if channels % heads:
            raise ConfigError(f"model.attention_heads: {heads} does not divide the width {channels}")
        self.heads = heads
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        d = c // self.heads
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(b, h * w, c)  # (B, N, C), N = H*W
        qkv = self.qkv(tokens).reshape(b, h * w, 3, self.heads, d).permute(2, 0, 3, 1, 4)  # (3, B, heads, N, d)
        q, k, v = (part.contiguous() for part in qkv)  # 3 x (B, heads, N, d)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, d)
        out = out.transpose(1, 2).reshape(b, h * w, c)  # (B, N, C)
        out = self.proj(out).reshape(b, h, w, c).permute(0, 3, 1, 2)  # (B, C, H, W), channels-last strides
        return x + out


ATTENTION_KINDS: dict[str, type[nn.Module] | None] = {
    "mhsa": SelfAttention,
    "linear": None,  # Katharopoulos et al. 2020 (Option D), not yet implemented
    "neighborhood": None,  # Hassani et al. 2023 (Option D), not yet implemented
    "channel": None,  # Zamir et al. 2022, Restormer (Option D), not yet implemented
}


def make_attention(kind: str, channels: int, heads: int, groups: int) -> nn.Module:
    """An attention block of `kind` (the value of `model.attention`) for a `channels`-wide level."""
    if kind not in ATTENTION_KINDS:
        raise ConfigError(f"model.attention: {kind!r} is not one of {', '.join(map(repr, ATTENTION_KINDS))}")
    cls = ATTENTION_KINDS[kind]
    if cls is None:
        raise ConfigError(f"model.attention: {kind!r} is not implemented yet")
    return cls(channels, heads, groups)
