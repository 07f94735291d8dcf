"""Transformer backbones over patch tokens (the notes' Option E): DiT and U-ViT.

Both cut the (C, H, W) field into p x p patches with a conv of kernel = stride = p, giving
(H/p) x (W/p) tokens on a NON-square grid (16 x 32 at 64x128, p = 4), add a 2-D position
embedding built for that grid, run transformer blocks, and map the tokens back to (C, H, W)
for any C. Like the UNet they return whatever target the loss trains them for.

  DiT   Peebles & Xie (2023), "Scalable Diffusion Models with Transformers": blocks with
        adaLN-Zero conditioning on the time embedding, final adaLN + linear, unpatchify.
  U-ViT Bao et al. (2023), "All are Worth Words": time as an extra token, long skip
        connections between shallow and deep blocks (concat + linear), a 3x3 conv after
        unpatchify.

Conditioning: 'none', or 'concat' (Palette, Saharia et al. 2022): the input is
[x_t, mask, known values], as for the UNet. 'film' is UNet-only.
Zero-initialisation is done in each model's `_zero_init`, in one place.
"""

from __future__ import annotations

import torch
from torch import nn

from fieldpaint.models.attention import full_attention, multi_head
from fieldpaint.models.layers import Dropout, TimeEmbedding, timestep_embedding

CONDITIONING = ("none", "concat")


def sincos_position_embedding(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding for a grid_h x grid_w token grid, (grid_h*grid_w, dim),
    rows first (MAE, He et al. 2022; used by DiT): half the features encode the row index and
    half the column index, each with the 1-D transformer encoding (Vaswani et al. 2017)."""
    rows, cols = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")  # (h, w) each
    emb_rows = timestep_embedding(rows.reshape(-1), dim // 2)  # (N, dim/2)
    emb_cols = timestep_embedding(cols.reshape(-1), dim // 2)  # (N, dim/2)
    return torch.cat([emb_rows, emb_cols], dim=1)  # (N, dim)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN (Peebles & Xie 2023): x * (1 + scale) + shift, per sample."""
    return x * (1 + scale) + shift


class Attention(nn.Module):
    """Multi-head self-attention over tokens (B, N, D); the q/k/v code is the UNet's `multi_head`."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(multi_head(x, self.qkv, self.heads, full_attention, (1, x.shape[1])))  # (B, N, D)


class Block(nn.Module):
    """Pre-norm transformer block, x + attn(LN(x)), then x + mlp(LN(x)).

    With `adaln` (DiT's adaLN-Zero, Peebles & Xie 2023, Fig. 3) the LayerNorms have no affine
    parameters; a linear map of the conditioning vector c gives per-sample (shift, scale, gate)
    for both branches, and its zero-initialisation makes the block the identity at init.
    Without it (U-ViT) the LayerNorms are affine and c is not used.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float = 0.0, adaln: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=not adaln, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=not adaln, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), Dropout(dropout),
                                 nn.Linear(hidden, dim))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim)) if adaln else None

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        if self.modulation is None:
            x = x + self.attn(self.norm1(x))  # (B, N, D)
            return x + self.mlp(self.norm2(x))  # (B, N, D)
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c)[:, None].chunk(6, dim=-1)  # 6 x (B, 1, D)
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1))  # (B, N, D)
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))  # (B, N, D)


class PatchBackbone(nn.Module):
    """What DiT and U-ViT share: conditioning check, patchify with position embedding, unpatchify.

    Args:
        in_channels: C, the field's channels (the output has C channels too).
        height, width: H and W of the field, both divisible by patch_size.
        patch_size: p; the token grid is (H/p) x (W/p).
        hidden_size: D, the token width (a multiple of 4 for the sin-cos embedding).
        conditioning: 'none' or 'concat'.
        pos_embed: 'sincos' (fixed) or 'learned' (initialised to the sin-cos values).
    """

    def __init__(self, in_channels: int, height: int, width: int, patch_size: int, hidden_size: int,
                 conditioning: str, pos_embed: str) -> None:
        super().__init__()
        if conditioning not in CONDITIONING:
            raise ValueError(f"conditioning must be one of {CONDITIONING} for a transformer backbone "
                             f"('film' is UNet-only), got {conditioning!r}")
        if height % patch_size or width % patch_size:
            raise ValueError(f"the field {height}x{width} is not divisible into {patch_size}x{patch_size} patches")
        self.in_channels, self.conditioning, self.patch_size = in_channels, conditioning, patch_size
        self.grid = (height // patch_size, width // patch_size)
        net_in = in_channels + (1 + in_channels if conditioning == "concat" else 0)
        self.patch_embed = nn.Conv2d(net_in, hidden_size, patch_size, stride=patch_size)
        pos = sincos_position_embedding(hidden_size, *self.grid)[None]  # (1, N, D)
        if pos_embed == "learned":
            self.pos_embed = nn.Parameter(pos)
        else:
            self.register_buffer("pos_embed", pos, persistent=False)

    def _check_cond(self, x: torch.Tensor, cond: torch.Tensor | None) -> None:
        if self.conditioning == "none":
            if cond is not None:
                raise ValueError("this model is unconditional (model.conditioning: none); pass cond=None")
            return
        want = (x.shape[0], 1 + self.in_channels, *x.shape[2:])
        if cond is None or tuple(cond.shape) != want:
            raise ValueError(f"model.conditioning is 'concat': cond = [mask, known values] of shape {want} "
                             f"is required, got {None if cond is None else tuple(cond.shape)}")

    def patchify(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """(B, C, H, W) [+ cond] -> tokens with position embedding, (B, N, D), N = (H/p)(W/p)."""
        self._check_cond(x, cond)
        if cond is not None:
            x = torch.cat([x, cond], dim=1)  # (B, 2C + 1, H, W)
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, D), rows first
        return tokens + self.pos_embed

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, p*p*C) -> (B, C, H, W); each token's features are ordered (p_row, p_col, C)."""
        b, p, (h, w) = tokens.shape[0], self.patch_size, self.grid
        x = tokens.reshape(b, h, w, p, p, -1)  # (B, H/p, W/p, p, p, C)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(b, -1, h * p, w * p)  # (B, C, H, W)


class DiT(PatchBackbone):
    """Diffusion Transformer (Peebles & Xie 2023) for non-square multi-channel fields: patchify,
    `depth` adaLN-Zero blocks conditioned on the time embedding, final adaLN + linear to p*p*C
    features per token, unpatchify. See `PatchBackbone` for the shared arguments."""

    def __init__(self, in_channels: int, height: int, width: int, patch_size: int = 4, hidden_size: int = 192,
                 depth: int = 9, heads: int = 4, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 conditioning: str = "none", pos_embed: str = "sincos") -> None:
        super().__init__(in_channels, height, width, patch_size, hidden_size, conditioning, pos_embed)
        self.time_embed = TimeEmbedding(hidden_size, hidden_size)
        self.blocks = nn.ModuleList(Block(hidden_size, heads, mlp_ratio, dropout, adaln=True) for _ in range(depth))
        self.norm_out = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.modulation_out = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))
        self.head = nn.Linear(hidden_size, patch_size * patch_size * in_channels)
        self._zero_init()

    def _zero_init(self) -> None:
        """adaLN-Zero (Peebles & Xie 2023, Sec. 3.2): zero every modulation map, so each block is
        the identity at init, and the final modulation and linear layer, so the output is 0."""
        zero = [block.modulation[-1] for block in self.blocks] + [self.modulation_out[-1], self.head]
        for layer in zero:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, H, W) noisy field; t: (B,) timesteps; cond: (B, 1 + C, H, W) or None."""
        h = self.patchify(x, cond)  # (B, N, D)
        c = self.time_embed(t)  # (B, D)
        for block in self.blocks:
            h = block(h, c)  # (B, N, D)
        shift, scale = self.modulation_out(c)[:, None].chunk(2, dim=-1)  # 2 x (B, 1, D)
        h = self.head(modulate(self.norm_out(h), shift, scale))  # (B, N, p*p*C)
        return self.unpatchify(h)  # (B, C, H, W)


class UViT(PatchBackbone):
    """U-ViT (Bao et al. 2023) for non-square multi-channel fields: patch tokens plus one time
    token, depth // 2 "in" blocks, a middle block, depth // 2 "out" blocks each preceded by a
    long skip from the matching in block (concat + linear), LayerNorm + linear to p*p*C per
    token, unpatchify, 3x3 conv. See `PatchBackbone` for the shared arguments."""

    def __init__(self, in_channels: int, height: int, width: int, patch_size: int = 4, hidden_size: int = 192,
                 depth: int = 9, heads: int = 4, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 conditioning: str = "none", pos_embed: str = "sincos") -> None:
        super().__init__(in_channels, height, width, patch_size, hidden_size, conditioning, pos_embed)
        half = depth // 2

        def block() -> Block:
            return Block(hidden_size, heads, mlp_ratio, dropout)

        self.time_embed = TimeEmbedding(hidden_size, hidden_size)
        self.in_blocks = nn.ModuleList(block() for _ in range(half))
        self.mid_block = block()
        self.out_blocks = nn.ModuleList(block() for _ in range(half))
        self.skips = nn.ModuleList(nn.Linear(2 * hidden_size, hidden_size) for _ in range(half))
        self.norm_out = nn.LayerNorm(hidden_size, eps=1e-6)
        self.head = nn.Linear(hidden_size, patch_size * patch_size * in_channels)
        self.conv_out = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self._zero_init()

    def _zero_init(self) -> None:
        """Zero the final 3x3 conv, so the model outputs 0 at init as the UNet does (U-ViT itself
        does not; everything upstream gets gradients from the second step)."""
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, H, W) noisy field; t: (B,) timesteps; cond: (B, 1 + C, H, W) or None."""
        patches = self.patchify(x, cond)  # (B, N, D)
        h = torch.cat([self.time_embed(t)[:, None], patches], dim=1)  # (B, 1 + N, D): time token first
        skips = []
        for block in self.in_blocks:
            h = block(h)  # (B, 1 + N, D)
            skips.append(h)
        h = self.mid_block(h)  # (B, 1 + N, D)
        for block, skip in zip(self.out_blocks, self.skips):
            h = block(skip(torch.cat([h, skips.pop()], dim=-1)))  # (B, 1 + N, D)
        h = self.head(self.norm_out(h))[:, 1:]  # (B, N, p*p*C): the time token is dropped
        return self.conv_out(self.unpatchify(h))  # (B, C, H, W)
