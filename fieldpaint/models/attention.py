"""Attention blocks for the UNet, chosen per level by `model.attention` through `make_attention`.

Every block maps (B, C, H, W) -> (B, C, H, W) as x + proj(attend(GN(x))) and names the last
layer of its residual branch `proj`, which the UNet zero-initialises (Ho et al. 2020), so a
new block starts as the identity. The kinds (the notes' Option D):

  'mhsa'          full multi-head self-attention over all H*W positions, O((HW)^2).
  'linear'        linear attention, Katharopoulos et al. (2020), feature map elu + 1, O(HW).
  'neighborhood'  each position attends to a k x k window around it, Hassani et al. (2023), NAT.
  'channel'       Restormer's transposed attention (MDTA), Zamir et al. (2022), O(C^2 HW).

The first three share one block (`SelfAttention`: GroupNorm, a linear q/k/v projection over
positions, heads, output projection) and differ only in the `attend` function that mixes the
positions; the channel kind has its own block because its projections are convolutions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fieldpaint.errors import ConfigError
from fieldpaint.models.layers import Conv3x3, group_norm
from fieldpaint.models.structure import ATTENTION_KINDS  # the one list; make_attention builds each

# attend(q, k, v, (H, W)) -> out; q, k, v, out: (B, heads, N, d) with N = H*W in row-major order.
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int]], torch.Tensor]


# ------------------------------------------------------------------------------- attend functions


def full_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over all positions (Vaswani et al. 2017).

    `scaled_dot_product_attention` without dropout and with contiguous q/k/v: on CPU either of
    those conditions otherwise sends it down the slow, memory-hungry math path."""
    return F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous())  # (B, heads, N, d)


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """phi(x) = elu(x) + 1 > 0, the feature map of Katharopoulos et al. (2020), eq. 7."""
    return F.elu(x) + 1


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, size: tuple[int, int],
                     eps: float = 1e-6) -> torch.Tensor:
    """Linear attention, Katharopoulos et al. (2020), eq. 5-6:

        out_i = phi(q_i)^T (sum_j phi(k_j) v_j^T) / (phi(q_i)^T sum_j phi(k_j))

    O(N d^2) instead of O(N^2 d). The running sums S = sum_j phi(k_j) v_j^T and z = sum_j phi(k_j)
    are sums over all N positions, so they are accumulated in fp32 even under bf16 autocast."""
    dtype = q.dtype
    with torch.autocast(q.device.type, enabled=False):
        phi_q, phi_k = elu_feature_map(q.float()), elu_feature_map(k.float())  # (B, heads, N, d)
        kv = phi_k.transpose(-1, -2) @ v.float()  # S: (B, heads, d, d)
        z = phi_k.sum(dim=-2, keepdim=True)  # (B, heads, 1, d)
        num = phi_q @ kv  # (B, heads, N, d)
        den = (phi_q * z).sum(dim=-1, keepdim=True)  # (B, heads, N, 1)
        return (num / (den + eps)).to(dtype)


def window_starts(size: int, window: int) -> torch.Tensor:
    """First index of each position's window along one axis, NAT-style: the window is centred
    on the position and shifted inward at the borders, so it always holds `window` positions."""
    pos = torch.arange(size)
    return (pos - window // 2).clamp(0, size - window)  # (size,)


@functools.lru_cache(maxsize=32)
def neighborhood_mask(height: int, width: int, window: int) -> torch.Tensor:
    """(N, N) boolean mask, True where query (i, j) may attend to key (a, b): a within the
    row window of i and b within the column window of j (Hassani et al. 2023, NAT). A window
    larger than an axis is cut to that axis, so window >= max(H, W) is full attention."""
    axes = []
    for size in (height, width):
        k = min(window, size)
        start = window_starts(size, k)[:, None]  # (size, 1)
        keys = torch.arange(size)[None, :]  # (1, size)
        axes.append((keys >= start) & (keys < start + k))  # (size, size): query index x key index
    rows, cols = axes
    n = height * width
    return (rows[:, None, :, None] & cols[None, :, None, :]).reshape(n, n)  # (N, N)


def neighborhood_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, size: tuple[int, int],
                           window: int = 7) -> torch.Tensor:
    """Neighbourhood attention (Hassani et al. 2023, NAT) as SDPA over all positions with a
    boolean k x k window mask. NATTEN has no CPU kernels and flex_attention no CPU backward, so
    this pure-PyTorch form is used; its O(N^2) mask is cheap at the 16x32 and 8x16 levels.
    NAT's relative position bias is not included."""
    mask = neighborhood_mask(size[0], size[1], window).to(q.device)  # (N, N)
    return F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous(), attn_mask=mask)


def channel_attention_map(q: torch.Tensor, k: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Restormer's transposed attention map (Zamir et al. 2022, MDTA, eq. 2):
    softmax(tau * q_hat k_hat^T) over channels, q_hat, k_hat L2-normalised along positions.
    q, k: (B, heads, d, N); temperature tau: (heads, 1, 1) -> (B, heads, d, d)."""
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    return torch.softmax((q @ k.transpose(-1, -2)) * temperature, dim=-1)  # (B, heads, d, d)


def channel_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """The channel-mixed values A v, A from `channel_attention_map`; (B, heads, d, N) each."""
    return channel_attention_map(q, k, temperature) @ v  # (B, heads, d, N)


# ------------------------------------------------------------------------------------- the blocks


class SelfAttention(nn.Module):
    """Multi-head attention over the H*W positions (Vaswani et al. 2017), as placed in the
    diffusion UNet by Ho et al. (2020) and, multi-head, by Nichol & Dhariwal (2021):
    x + proj(attend(q, k, v)) with q, k, v = qkv(GN(x)). `attend` chooses how positions mix
    (full, linear or neighbourhood attention). The position axis is taken channels-last, so a
    channels_last input needs no copy.
    """

    def __init__(self, channels: int, heads: int, groups: int, attend: Attend = full_attention) -> None:
        super().__init__()
        if channels % heads:
            raise ConfigError(f"model.attention_heads: {heads} does not divide the width {channels}")
        self.heads, self.attend = heads, attend
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(b, h * w, c)  # (B, N, C), N = H*W
        out = multi_head(tokens, self.qkv, self.heads, self.attend, (h, w))  # (B, N, C)
        out = self.proj(out).reshape(b, h, w, c).permute(0, 3, 1, 2)  # (B, C, H, W), channels-last strides
        return x + out


def multi_head(tokens: torch.Tensor, qkv: nn.Linear, heads: int, attend: Attend,
               size: tuple[int, int]) -> torch.Tensor:
    """Project (B, N, C) tokens to q, k, v, split into heads, attend, merge: (B, N, C)."""
    b, n, c = tokens.shape
    q, k, v = qkv(tokens).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)  # 3 x (B, heads, N, d)
    return attend(q, k, v, size).transpose(1, 2).reshape(b, n, c)  # (B, N, C)


class ChannelAttention(nn.Module):
    """Restormer's multi-Dconv head transposed attention (Zamir et al. 2022, MDTA): q, k, v from
    a 1x1 conv then a 3x3 depthwise conv, attention across the C/heads channels of each head
    with a learnable temperature per head, then a 1x1 output projection. O(C^2 H W)."""

    def __init__(self, channels: int, heads: int, groups: int, wrap: str = "none") -> None:
        super().__init__()
        if channels % heads:
            raise ConfigError(f"model.attention_heads: {heads} does not divide the width {channels}")
        self.heads = heads
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.qkv_dw = Conv3x3(3 * channels, 3 * channels, wrap=wrap, groups=3 * channels)
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv_dw(self.qkv(self.norm(x)))  # (B, 3C, H, W)
        q, k, v = qkv.reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)  # 3 x (B, heads, d, N)
        out = channel_attention(q, k, v, self.temperature).reshape(b, c, h, w)  # (B, C, H, W)
        return x + self.proj(out)


def make_attention(kind: str, channels: int, heads: int, groups: int, window: int = 7,
                   wrap: str = "none") -> nn.Module:
    """An attention block of `kind` (a value of `model.attention`) for a `channels`-wide level;
    `window` is the neighbourhood kind's k (`model.attention_window`), `wrap` the axes the channel
    kind's depthwise convolution wraps around (`layers.Conv3x3`)."""
    if kind == "mhsa":
        return SelfAttention(channels, heads, groups, full_attention)
    if kind == "linear":
        return SelfAttention(channels, heads, groups, linear_attention)
    if kind == "neighborhood":
        return SelfAttention(channels, heads, groups, functools.partial(neighborhood_attention, window=window))
    if kind == "channel":
        return ChannelAttention(channels, heads, groups, wrap)
    raise ConfigError(f"model.attention: {kind!r} is not one of {', '.join(map(repr, ATTENTION_KINDS))}")
