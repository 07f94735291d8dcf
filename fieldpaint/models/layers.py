"""Building blocks of the UNet: time embedding, residual block, resampling.

The residual block follows Ho et al. (2020), "Denoising Diffusion Probabilistic Models" (two
GroupNorm-SiLU-conv stages, dropout before the second conv, a 1x1 skip when the width changes),
with the scale-shift time conditioning of Nichol & Dhariwal (2021) and Dhariwal & Nichol (2021)
("use_scale_shift_norm"): the normalised features are multiplied by (1 + scale) and shifted.
A FiLM conditioning map (Perez et al. 2018) may add its own spatial scale and shift to the same
normalised features. Zero-initialisation is not done here; `fieldpaint.models.unet` does it for
the whole network in one place.

Every 3x3 convolution is a `Conv3x3`: zero padding, or padding that wraps around along the axes a
periodic field wraps around on (`wrap`), so that a pixel at the edge sees its neighbours across it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fieldpaint.models.structure import WRAPS

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


class Conv3x3(nn.Conv2d):
    """A 3x3 convolution, "same" padded: circularly along the axes in `wrap` ('x': columns, 'y':
    rows), with zeros along the others. Its parameters and state-dict keys are an nn.Conv2d's.

    With stride 2 on an even grid, output j reads inputs 2j-1, 2j, 2j+1 modulo the size: rolling
    the input by 2 along a wrapped axis rolls the output by 1."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, wrap: str = "none",
                 groups: int = 1) -> None:
        if wrap not in WRAPS:
            raise ValueError(f"wrap must be one of {WRAPS}, got {wrap!r}")
        wrap_y, wrap_x = "y" in wrap, "x" in wrap
        # nn.Conv2d zero-pads the axes that do not wrap; wrap_pad pads the others first.
        super().__init__(in_channels, out_channels, 3, stride=stride, padding=(int(not wrap_y), int(not wrap_x)),
                         groups=groups)
        self.wrap = wrap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(wrap_pad(x, self.wrap))

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.wrap == "none" else f", wrap={self.wrap}")


def wrap_pad(x: torch.Tensor, wrap: str) -> torch.Tensor:
    """(B, C, H, W) padded by one pixel taken from the opposite edge along the axes in `wrap`."""
    for axis, dim in (("y", -2), ("x", -1)):
        if axis in wrap:
            x = _WrapPad.apply(x, dim)
    return x


class _WrapPad(torch.autograd.Function):
    """One wrapped pixel each side along `dim`. On CPU F.pad's circular mode is 10x slower than this
    concatenation, and autograd's own backward of the slices adds two full-size zero tensors per call
    (a step of the demo's model cost 35 % more); this backward is one copy and two edge sums."""

    @staticmethod
    def forward(ctx, x, dim: int):
        ctx.dim = dim
        return torch.cat([x.narrow(dim, x.shape[dim] - 1, 1), x, x.narrow(dim, 0, 1)], dim=dim)

    @staticmethod
    def backward(ctx, g):
        dim, n = ctx.dim, g.shape[ctx.dim] - 2
        gx = g.narrow(dim, 1, n).clone(memory_format=torch.preserve_format)
        gx.narrow(dim, n - 1, 1).add_(g.narrow(dim, 0, 1))  # the left pad was the last pixel
        gx.narrow(dim, 0, 1).add_(g.narrow(dim, n + 1, 1))  # the right pad was the first
        return gx, None


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with `groups` groups (Wu & He 2018; 32 in Ho et al. 2020)."""
    return nn.GroupNorm(groups, channels, eps=1e-6)


class _GroupNormSiLU(torch.autograd.Function):
    """y = SiLU(GN(x) * (1 + s) + b) with per-(sample, channel) s and b, in x's memory format and
    dtype, with a hand-written backward.

    Why not `F.silu(norm(x) * (1 + s) + b)`: on CPU, torch's GroupNorm backward is 4-15x slower on
    channels_last tensors than on NCHW ones (bf16 slowest; it was half of a bf16 training step),
    and under bf16 autocast GroupNorm runs in fp32 with a cast in and out, then the scale, the shift
    and SiLU each take another fp32 pass. Here torch's GroupNorm forward (fast in channels_last)
    gives n, the affine, scale and shift fold into one per-(sample, channel) map z = n a + d, and
    SiLU runs in place; backward recomputes z from the saved n and needs two per-channel sums.

    Notation (Wu & He 2018): per sample and group g, mu_g and r_g = 1/sqrt(var_g + eps) over the
    group's M = (C/G) H W values; n = (x - mu_g) r_g; a = gamma (1 + s), d = beta (1 + s) + b.
    With g = dL/dz: dL/dx = r_g (g a - mean_g(g a) - n mean_g(g a n)).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, scale, shift, groups: int, eps: float):
        with torch.autocast(x.device.type, enabled=False):
            b, c, h, w = x.shape
            n, _, rstd = torch.native_group_norm(x, None, None, b, c, h * w, groups, eps)  # n: x's dtype
            a, d = _affine(weight, bias, scale, shift, b)  # (B, C, 1, 1) x 2, fp32 (fp64 for fp64)
            y = F.silu(torch.addcmul(d.to(x.dtype), n, a.to(x.dtype)), inplace=True)  # (B, C, H, W)
        ctx.save_for_backward(n, weight, bias, scale, shift, rstd)
        ctx.groups = groups
        return y

    @staticmethod
    def backward(ctx, gy):
        n, weight, bias, scale, shift, rstd = ctx.saved_tensors
        groups, dtype = ctx.groups, n.dtype
        with torch.autocast(n.device.type, enabled=False):
            b, c = n.shape[:2]
            a, d = _affine(weight, bias, scale, shift, b)
            work = a.dtype
            gz = torch.ops.aten.silu_backward(gy.to(dtype), torch.addcmul(d.to(dtype), n, a.to(dtype)))  # dL/dz
            # per-channel sums, (B, C, 1, 1); a bf16 sum accumulates in fp32 and rounds only its result
            # (sum(dtype=fp32) would first copy the whole tensor to fp32)
            sum_g = gz.sum(dim=(2, 3), keepdim=True).to(work)
            sum_gn = (gz * n).sum(dim=(2, 3), keepdim=True).to(work)
            r = rstd.to(work).repeat_interleave(c // groups, dim=1)[:, :, None, None]  # (B, C, 1, 1)
            m1, m2 = _group_mean(a * sum_g, groups), _group_mean(a * sum_gn, groups)  # x M
            size = n[0, 0].numel() * (c // groups)  # M
            gx = torch.addcmul((-r * m1 / size).to(dtype), n, (-r * m2 / size).to(dtype))
            gx = torch.addcmul(gx, gz, (r * a).to(dtype))  # (B, C, H, W)
            one_s = 1 if scale is None else 1 + scale.to(work)
            g_weight = (one_s * sum_gn).sum(0).flatten().to(weight.dtype) if ctx.needs_input_grad[1] else None
            g_bias = (one_s * sum_g).sum(0).flatten().to(bias.dtype) if ctx.needs_input_grad[2] else None
            g_scale = g_shift = None
            if scale is not None and ctx.needs_input_grad[3]:
                g_scale = (weight.to(work)[:, None, None] * sum_gn + bias.to(work)[:, None, None] * sum_g).to(scale.dtype)
            if shift is not None and ctx.needs_input_grad[4]:
                g_shift = sum_g.to(shift.dtype)
        return gx, g_weight, g_bias, g_scale, g_shift, None, None


def _group_mean(per_channel: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, C, 1, 1) -> the total over each channel's group, broadcast back to (B, C, 1, 1)."""
    b, c = per_channel.shape[:2]
    total = per_channel.reshape(b, groups, c // groups).sum(-1, keepdim=True)  # (B, G, 1)
    return total.expand(b, groups, c // groups).reshape(b, c, 1, 1)


def _affine(weight, bias, scale, shift, batch: int):
    """a = gamma (1 + s), d = beta (1 + s) + b of z = n a + d; (B, C, 1, 1) each, in fp32 or wider."""
    work = torch.promote_types(weight.dtype, torch.float32)
    w, b = weight.to(work)[None, :, None, None], bias.to(work)[None, :, None, None]
    if scale is None:
        return w.expand(batch, -1, -1, -1), b.expand(batch, -1, -1, -1)
    one_s = 1 + scale.to(work)
    return w * one_s, b * one_s + shift.to(work)


def is_channels_last(x: torch.Tensor) -> bool:
    """True for a (B, C, H, W) tensor stored NHWC (and not also NCHW, as when C or H W is 1)."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def group_norm_silu(x: torch.Tensor, norm: nn.GroupNorm, scale: torch.Tensor | None = None,
                    shift: torch.Tensor | None = None) -> torch.Tensor:
    """SiLU(norm(x) * (1 + scale) + shift); scale and shift both None or both broadcastable to x.

    A channels_last x with per-(sample, channel) scale and shift takes the fused `_GroupNormSiLU`
    (3-6x faster there in bf16, 1-2x in fp32; equal to float rounding); an NCHW x, where torch's
    own GroupNorm is the faster, and a spatial (FiLM) scale take the plain expression, so an
    fp32 NCHW model computes exactly what it did before the fused path existed.
    x: (B, C, H, W) -> (B, C, H, W)."""
    b, c = x.shape[:2]
    per_channel = scale is None or (scale.numel() == shift.numel() == b * c)
    if not (is_channels_last(x) and per_channel):
        h = norm(x)
        return F.silu(h if scale is None else h * (1 + scale) + shift)
    if scale is not None:
        scale, shift = scale.reshape(b, c, 1, 1), shift.reshape(b, c, 1, 1)
    return _GroupNormSiLU.apply(x, norm.weight, norm.bias, scale, shift, norm.num_groups, norm.eps)


DROPOUT_LEVELS = 32768  # 15 random bits per element: the drop probability is rounded to 1 / 32768


def dropout_keep_mask(like: torch.Tensor, p: float) -> torch.Tensor:
    """Bool tensor of `like`'s shape and strides, each entry True with probability
    1 - round(p * 32768) / 32768, independently, from torch's default CPU generator.

    Why not nn.Dropout on CPU: its Bernoulli draw is serial and converts a float per element, the
    largest single cost of a bf16 training step on 2 cores. Here one 32-bit integer draw gives two
    15-bit uniforms (its low and high half-words, masked to 15 bits), and the rest is vectorised.
    `like` must be dense (contiguous in some dimension order, e.g. NCHW or channels_last).
    """
    n = like.numel()
    words = torch.empty((n + 1) // 2, dtype=torch.int32).random_()  # uniform on [0, 2^31)
    fifteen_bits = words.view(torch.int16)[:n] & (DROPOUT_LEVELS - 1)
    keep = fifteen_bits >= round(p * DROPOUT_LEVELS)
    return keep.as_strided(like.shape, like.stride())


def is_dense(x: torch.Tensor) -> bool:
    """Stored without gaps in NCHW (or any contiguous) or channels_last order."""
    return x.is_contiguous() or (x.dim() == 4 and is_channels_last(x))


class Dropout(nn.Dropout):
    """nn.Dropout with a faster mask on CPU (`dropout_keep_mask`); elsewhere, and for tensors that
    are not dense, nn.Dropout itself. The kept entries are scaled by the exact inverse of their
    keep probability, so E[out] = x as with nn.Dropout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu" or not is_dense(x) or self.inplace:
            return super().forward(x)
        dropped = round(self.p * DROPOUT_LEVELS)
        if dropped >= DROPOUT_LEVELS:
            return torch.zeros_like(x)
        scale = DROPOUT_LEVELS / (DROPOUT_LEVELS - dropped)
        return x * dropout_keep_mask(x, self.p).to(x.dtype).mul_(scale)


class ResBlock(nn.Module):
    """Residual block with scale-shift time conditioning and optional FiLM modulation.

        h = conv1(SiLU(GN(x)))
        h = GN(h) * (1 + s_t + s_c) + (b_t + b_c)      s_t, b_t from the time embedding;
                                                       s_c, b_c from the FiLM encoder (or 0)
        out = skip(x) + conv2(Dropout(SiLU(h)))

    `conv2` is the last layer of the residual branch (zero-initialised by the UNet).
    """

    def __init__(self, in_channels: int, out_channels: int, time_dim: int, dropout: float, groups: int,
                 wrap: str = "none") -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = Conv3x3(in_channels, out_channels, wrap=wrap)
        self.time_proj = nn.Linear(time_dim, 2 * out_channels)
        self.norm2 = group_norm(out_channels, groups)
        self.dropout = Dropout(dropout)
        self.conv2 = Conv3x3(out_channels, out_channels, wrap=wrap)
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, film: Modulation | None = None) -> torch.Tensor:
        h = self.conv1(group_norm_silu(x, self.norm1))  # (B, C_out, H, W)
        scale, shift = self.time_proj(F.silu(temb))[:, :, None, None].chunk(2, dim=1)  # 2 x (B, C_out, 1, 1)
        if film is not None:
            scale, shift = scale + film[0], shift + film[1]  # 2 x (B, C_out, H, W)
        h = group_norm_silu(h, self.norm2, scale, shift)  # SiLU(GN(h) * (1 + scale) + shift), (B, C_out, H, W)
        h = self.conv2(self.dropout(h))  # (B, C_out, H, W)
        return self.skip(x) + h


class Downsample(nn.Module):
    """Halve H and W: a learned 3x3 stride-2 conv ('conv') or 2x2 average pooling ('interp')."""

    def __init__(self, channels: int, resample: str, wrap: str = "none") -> None:
        super().__init__()
        self.op = Conv3x3(channels, channels, stride=2, wrap=wrap) if resample == "conv" else nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)  # (B, C, H/2, W/2)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour then a 3x3 conv ('conv', Ho et al. 2020), or bilinear
    interpolation alone ('interp', no parameters)."""

    def __init__(self, channels: int, resample: str, wrap: str = "none") -> None:
        super().__init__()
        self.resample, self.wrap = resample, wrap
        self.conv = Conv3x3(channels, channels, wrap=wrap) if resample == "conv" else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "conv":
            return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (B, C, 2H, 2W)
        return periodic_bilinear(x, self.wrap)  # (B, C, 2H, 2W)


def periodic_bilinear(x: torch.Tensor, wrap: str) -> torch.Tensor:
    """Bilinear x2 upsampling (half-pixel centres) that interpolates across the edges along the wrapped
    axes: the input padded by one wrapped pixel there, upsampled, and the 2 extra pixels cut off
    each side (output i of the padded input is output i - 2 of the plain one)."""
    wy, wx = int("y" in wrap), int("x" in wrap)
    if not (wy or wx):
        return F.interpolate(x, scale_factor=2.0, mode="bilinear")
    h = F.interpolate(wrap_pad(x, wrap), scale_factor=2.0, mode="bilinear")
    return h[..., 2 * wy:h.shape[-2] - 2 * wy, 2 * wx:h.shape[-1] - 2 * wx]
