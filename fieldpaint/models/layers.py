"""Building blocks of the UNet: time embedding, residual block, resampling.

The residual block follows Ho et al. (2020), "Denoising Diffusion Probabilistic Models" (two
GroupNorm-SiLU-conv stages, dropout before the second conv, a 1x1 skip when the width changes),
with the scale-shift time conditioning of Nichol & Dhariwal (2021) and Dhariwal & Nichol (2021)
("use_scale_shift_norm"): the normalised features are multiplied by (1 + scale) and shifted.
A FiLM conditioning map (Perez et al. 2018) may add its own spatial scale and shift to the same
normalised features. Zero-initialisation is not done here; `fieldpaint.models.unet` does it for
the whole network in one place.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# A FiLM modulation: (scale, shift), each (B, C, H, W) or broadcastable to it.
Modulation = tuple[torch.Tensor, torch.Tensor]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, (B,) -> (B, dim).

    Transformer position encoding as used for t by Ho et al. (2020): half the features are
    cos(t * f_k), half sin(t * f_k), with frequencies f_k = max_period^(-k / (dim/2)).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None, :]  # (B, dim/2)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)  # (B, 2*(dim//2))
    if dim % 2:
        emb = F.pad(emb, (0, 1))  # (B, dim)
    return emb


class TimeEmbedding(nn.Module):
    """t -> sinusoidal features of width `base` -> Linear -> SiLU -> Linear (Ho et al. 2020)."""

    def __init__(self, base: int, dim: int) -> None:
        super().__init__()
        self.base = base
        self.mlp = nn.Sequential(nn.Linear(base, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.base))  # (B, dim)


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with `groups` groups (Wu & He 2018; 32 in Ho et al. 2020)."""
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResBlock(nn.Module):
    """Residual block with scale-shift time conditioning and optional FiLM modulation.

        h = conv1(SiLU(GN(x)))
        h = GN(h) * (1 + s_t + s_c) + (b_t + b_c)      s_t, b_t from the time embedding;
                                                       s_c, b_c from the FiLM encoder (or 0)
        out = skip(x) + conv2(Dropout(SiLU(h)))

    `conv2` is the last layer of the residual branch (zero-initialised by the UNet).
    """

    def __init__(self, in_channels: int, out_channels: int, time_dim: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_proj = nn.Linear(time_dim, 2 * out_channels)
        self.norm2 = group_norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, film: Modulation | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        scale, shift = self.time_proj(F.silu(temb))[:, :, None, None].chunk(2, dim=1)  # 2 x (B, C_out, 1, 1)
        if film is not None:
            scale, shift = scale + film[0], shift + film[1]  # 2 x (B, C_out, H, W)
        h = self.norm2(h) * (1 + scale) + shift  # (B, C_out, H, W)
        h = self.conv2(self.dropout(F.silu(h)))  # (B, C_out, H, W)
        return self.skip(x) + h


class Downsample(nn.Module):
    """Halve H and W: a learned 3x3 stride-2 conv ('conv') or 2x2 average pooling ('interp')."""

    def __init__(self, channels: int, resample: str) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if resample == "conv" else nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)  # (B, C, H/2, W/2)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour then a 3x3 conv ('conv', Ho et al. 2020), or bilinear
    interpolation alone ('interp', no parameters)."""

    def __init__(self, channels: int, resample: str) -> None:
        super().__init__()
        self.resample = resample
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if resample == "conv" else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mode = "nearest" if self.resample == "conv" else "bilinear"
        h = F.interpolate(x, scale_factor=2.0, mode=mode)  # (B, C, 2H, 2W)
        return self.conv(h)  # (B, C, 2H, 2W)
