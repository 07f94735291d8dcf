"""The UNet denoiser: one class, unconditional or conditioned on (mask, known values).

Architecture of Ho et al. (2020), "Denoising Diffusion Probabilistic Models", with the
multi-head attention and scale-shift time conditioning of Nichol & Dhariwal (2021) and
Dhariwal & Nichol (2021), and dropout in every ResBlock as the notes' slim model uses it:

    conv_in -> for each level i: num_res_blocks x [ResBlock (+ attention)] then downsample x2
            -> bottleneck: ResBlock, attention (if chosen), ResBlock
            -> for each level, deepest first: upsample x2 then num_res_blocks x
               [concat the skip of the matching down ResBlock, ResBlock (+ attention)]
            -> GroupNorm, SiLU, conv_out

A 4-level model at 64x128 therefore has its bottleneck at 4x8. The skips are the outputs of
the down path's ResBlocks, one per up ResBlock (as in the widely used denoising-diffusion-pytorch
UNet; Ho et al. use num_res_blocks + 1 up blocks). With a 256-wide time embedding this puts the
notes' models at 23.96 M ([64,128,256,256], attention at 16x32, 8x16 and 4x8) and 5.95 M
([32,64,128,128], attention at 4x8) parameters against the 23.2 M and 6.1 M recorded there.
The network returns whatever target the loss trains it for; it knows nothing of eps/v/x0.

Conditioning on `cond = concat([mask, known values])`, (B, 1 + C, H, W), 1 = observed:
  'none'   unconditional; sampled with RePaint/DDNM.
  'concat' Palette (Saharia et al. 2022): the network input is [x_t, mask, known values].
  'film'   FiLM (Perez et al. 2018): a small conv encoder of `cond` gives a spatial scale and
           shift per resolution level, added to the ResBlocks' time scale-shift. Its heads are
           zero-initialised, so at init the model equals its unconditional twin.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fieldpaint.models.attention import make_attention
from fieldpaint.models.layers import (Conv3x3, Downsample, Modulation, ResBlock, TimeEmbedding, Upsample,
                                      group_norm, group_norm_silu)

CONDITIONING = ("none", "concat", "film")


class Stage(nn.Module):
    """A ResBlock, followed by an attention block when the level has one."""

    def __init__(self, res: ResBlock, attention: nn.Module | None) -> None:
        super().__init__()
        self.res = res
        self.attention = attention if attention is not None else nn.Identity()

    def forward(self, h: torch.Tensor, temb: torch.Tensor, film: Modulation | None) -> torch.Tensor:
        return self.attention(self.res(h, temb, film))  # (B, C_out, H, W)


class FiLMEncoder(nn.Module):
    """Conditioning encoder for FiLM (Perez et al. 2018): (mask, known values) -> one (scale,
    shift) pair per resolution level. A 3x3 stem, then per level one 3x3 conv (stride 2 below
    the top level) and a 1x1 head, the head being the layer the UNet zero-initialises."""

    def __init__(self, in_channels: int, hidden: int, widths: Sequence[int], wrap: str = "none") -> None:
        super().__init__()
        self.stem = Conv3x3(in_channels, hidden, wrap=wrap)
        self.body = nn.ModuleList(
            Conv3x3(hidden, hidden, stride=1 if i == 0 else 2, wrap=wrap) for i in range(len(widths)))
        self.heads = nn.ModuleList(nn.Conv2d(hidden, 2 * w, 1) for w in widths)

    def forward(self, cond: torch.Tensor) -> list[Modulation]:
        h = F.silu(self.stem(cond))  # (B, E, H, W)
        out = []
        for conv, head in zip(self.body, self.heads):
            h = F.silu(conv(h))  # (B, E, H/2^i, W/2^i)
            scale, shift = head(h).chunk(2, dim=1)  # 2 x (B, C_i, H/2^i, W/2^i)
            out.append((scale, shift))
        return out


class UNet(nn.Module):
    """UNet for (B, C, H, W) fields with H and W divisible by 2^len(channels).

    Args:
        in_channels: C, the field's channels (the output has C channels too).
        channels: width per level; each level ends by halving H and W.
        num_res_blocks: ResBlocks per level, on the way down and on the way up.
        attention_levels: level indices with attention; len(channels) means the bottleneck.
        attention, attention_heads: kind of attention block (or {level: kind}) and its heads.
        attention_window: k of the 'neighborhood' kind's k x k window.
        dropout: dropout probability inside every ResBlock.
        norm_groups: GroupNorm groups; must divide every width.
        resample: 'conv' (learned) or 'interp' (average pooling / bilinear, no parameters).
        conditioning: 'none', 'concat' (Palette) or 'film' (FiLM); see the module docstring.
        time_embed_mult: the time-embedding MLP is time_embed_mult * channels[0] wide.
        film_channels: width of the FiLM encoder.
        wrap: axes ('x', 'y', 'xy' or 'none') along which every 3x3 convolution pads circularly
            (`layers.Conv3x3`): for a field periodic there, a pixel at the edge sees across it.
    """

    def __init__(self, in_channels: int, channels: Sequence[int] = (32, 64, 128, 128), num_res_blocks: int = 2,
                 attention_levels: Iterable[int] = (), attention: str | Mapping[int, str] = "mhsa",
                 attention_heads: int = 4,
                 dropout: float = 0.0, norm_groups: int = 32, resample: str = "conv", conditioning: str = "none",
                 time_embed_mult: int = 8, film_channels: int = 32, attention_window: int = 7,
                 wrap: str = "none") -> None:
        super().__init__()
        if conditioning not in CONDITIONING:
            raise ValueError(f"conditioning must be one of {CONDITIONING}, got {conditioning!r}")
        self.in_channels, self.conditioning, self.wrap = in_channels, conditioning, wrap
        self.levels = len(channels)
        widths = list(channels) + [channels[-1]]  # per resolution level; the last is the bottleneck
        attention_levels = set(attention_levels)
        time_dim = time_embed_mult * channels[0]

        def stage(c_in: int, c_out: int, level: int) -> Stage:
            res = ResBlock(c_in, c_out, time_dim, dropout, norm_groups, wrap)
            kind = attention if isinstance(attention, str) else attention.get(level)
            attn = (make_attention(kind, c_out, attention_heads, norm_groups, attention_window, wrap)
                    if level in attention_levels else None)
            return Stage(res, attn)

        self.time_embed = TimeEmbedding(channels[0], time_dim)
        net_in = in_channels + (1 + in_channels if conditioning == "concat" else 0)
        self.conv_in = Conv3x3(net_in, channels[0], wrap=wrap)
        self.film = FiLMEncoder(1 + in_channels, film_channels, widths, wrap) if conditioning == "film" else None

        level_in = [channels[0]] + list(channels[:-1])  # width entering each level
        self.down = nn.ModuleList(
            nn.ModuleList(stage(level_in[i] if j == 0 else c, c, i) for j in range(num_res_blocks))
            for i, c in enumerate(channels))
        self.downsample = nn.ModuleList(Downsample(c, resample, wrap) for c in channels)
        self.mid = nn.ModuleList([stage(widths[-1], widths[-1], self.levels),
                                  stage(widths[-1], widths[-1], -1)])  # ResBlock, attention, ResBlock
        self.upsample = nn.ModuleList(Upsample(widths[i + 1], resample, wrap) for i in range(self.levels))
        self.up = nn.ModuleList(  # input = previous up output (upsampled for j == 0) + skip, both concatenated
            nn.ModuleList(stage((widths[i + 1] if j == 0 else c) + c, c, i) for j in range(num_res_blocks))
            for i, c in enumerate(channels))
        self.norm_out = group_norm(channels[0], norm_groups)
        self.conv_out = Conv3x3(channels[0], in_channels, wrap=wrap)
        self._zero_init()

    def _zero_init(self) -> None:
        """Zero the last layer of every residual branch (ResBlock conv2, attention proj), the FiLM
        heads and conv_out (Ho et al. 2020): every block starts as the identity, the model
        outputs 0, and a FiLM model starts equal to its unconditional twin."""
        zero = [self.conv_out] + list(self.film.heads if self.film is not None else [])
        for module in self.modules():
            if isinstance(module, ResBlock):
                zero.append(module.conv2)
            elif isinstance(module, Stage) and not isinstance(module.attention, nn.Identity):
                zero.append(module.attention.proj)
        for layer in zero:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def _check_cond(self, x: torch.Tensor, cond: torch.Tensor | None) -> None:
        if self.conditioning == "none":
            if cond is not None:
                raise ValueError("this UNet is unconditional (model.conditioning: none); pass cond=None")
            return
        if cond is None:
            raise ValueError(f"model.conditioning is {self.conditioning!r}: cond = [mask, known values] is required")
        want = (x.shape[0], 1 + self.in_channels, *x.shape[2:])
        if tuple(cond.shape) != want:
            raise ValueError(f"cond must have shape {want} (mask + {self.in_channels} known-value channels), "
                             f"got {tuple(cond.shape)}")

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, H, W) noisy field; t: (B,) timesteps; cond: (B, 1 + C, H, W) or None."""
        self._check_cond(x, cond)
        temb = self.time_embed(t)  # (B, T)
        films = self.film(cond) if self.film is not None else [None] * (self.levels + 1)
        if self.conditioning == "concat":
            x = torch.cat([x, cond], dim=1)  # (B, 2C + 1, H, W)
        h = self.conv_in(x)  # (B, C_0, H, W)
        skips = []
        for i in range(self.levels):
            for stage in self.down[i]:
                h = stage(h, temb, films[i])  # (B, C_i, H/2^i, W/2^i)
                skips.append(h)
            h = self.downsample[i](h)  # (B, C_i, H/2^(i+1), W/2^(i+1))
        for stage in self.mid:
            h = stage(h, temb, films[self.levels])  # (B, C_last, H/2^L, W/2^L)
        for i in reversed(range(self.levels)):
            h = self.upsample[i](h)  # (B, C_(i+1), H/2^i, W/2^i)
            for stage in self.up[i]:
                h = stage(torch.cat([h, skips.pop()], dim=1), temb, films[i])  # (B, C_i, H/2^i, W/2^i)
        return self.conv_out(group_norm_silu(h, self.norm_out))  # (B, C, H, W)
