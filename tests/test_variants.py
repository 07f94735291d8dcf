"""Tests of the attention variants (Option D) and the transformer backbones (Option E).

Each attention core is checked against an independent, explicit formula (a Python loop, an
O(N^2) sum, a permutation identity); the blocks and backbones are checked for shapes at 16x32
and 64x128 and for a falling loss over a few steps on a fixed batch. Tiny widths throughout.
"""

from __future__ import annotations

import math
import typing

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fieldpaint.config import AttentionKind, load_config
from fieldpaint.errors import ConfigError
from fieldpaint.models import attention
from fieldpaint.models.attention import (ChannelAttention, SelfAttention, channel_attention,
                                         channel_attention_map, linear_attention, make_attention,
                                         neighborhood_attention, neighborhood_mask)
from fieldpaint.models.registry import build_model, describe_parameters
from fieldpaint.models.structure import ATTENTION_KINDS
from fieldpaint.models.transformers import DiT, UViT, sincos_position_embedding

VARIANT_PRESETS = ["slim_linear_attn", "slim_neighborhood_attn", "slim_channel_attn"]
TINY_UNET = ["data.height=16", "data.width=32", "model.channels=[8,16]", "model.norm_groups=4", "model.dropout=0.0"]
TINY_VIT = ["data.height=16", "data.width=32", "model.hidden_size=32", "model.depth=3", "model.attention_heads=4",
            "model.dropout=0.0"]


def perturb_(model: nn.Module, scale: float = 0.05, seed: int = 1) -> nn.Module:
    """Move every parameter off its init (zero-initialised layers included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def batch(c: int, h: int, w: int, conditional: bool, n: int = 2, seed: int = 0):
    """x, t, cond with cond = [mask, known values] or None."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    if not conditional:
        return x, t, None
    mask = (torch.rand(n, 1, h, w, generator=g) < 0.3).float()
    return x, t, torch.cat([mask, torch.randn(n, c, h, w, generator=g) * mask], dim=1)


def train_losses(model: nn.Module, conditional: bool, steps: int = 25, lr: float = 2e-3) -> list[float]:
    """Losses of `steps` Adam steps regressing a fixed target from a fixed batch at 16x32."""
    x, t, cond = batch(model.in_channels, 16, 32, conditional, n=4)
    target = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = F.mse_loss(model(x, t, cond), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def qkv(b: int, heads: int, n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, heads, n, d, generator=g) for _ in range(3))


# ------------------------------------------------------------------------- neighbourhood attention


def test_neighborhood_with_a_window_covering_the_grid_is_full_attention():
    torch.manual_seed(0)
    full = perturb_(make_attention("mhsa", 16, 4, 4), scale=0.3)
    local = make_attention("neighborhood", 16, 4, 4, window=9)  # 9 >= max(4, 8): every key in reach
    local.load_state_dict(full.state_dict())
    x = torch.randn(2, 16, 4, 8)
    with torch.no_grad():
        assert torch.allclose(local(x), full(x), atol=1e-5)


def naive_neighborhood(q, k, v, h, w, window):
    """NAT by loops: position (i, j) attends to the window x window keys whose row and column
    windows start at max(i - r, 0), moved back to size - window when they would overrun."""
    r = window // 2
    out = torch.zeros_like(q)
    for i in range(h):
        r0 = min(max(i - r, 0), h - window)
        for j in range(w):
            c0 = min(max(j - r, 0), w - window)
            keys = [a * w + b for a in range(r0, r0 + window) for b in range(c0, c0 + window)]
            logits = q[..., i * w + j, None, :] @ k[..., keys, :].transpose(-1, -2) / math.sqrt(q.shape[-1])
            out[..., i * w + j, :] = (torch.softmax(logits, dim=-1) @ v[..., keys, :])[..., 0, :]
    return out


def test_neighborhood_matches_a_naive_loop_with_border_clamping():
    h, w, window = 5, 6, 3
    q, k, v = qkv(2, 2, h * w, 4)
    expected = naive_neighborhood(q, k, v, h, w, window)
    assert torch.allclose(neighborhood_attention(q, k, v, (h, w), window=window), expected, atol=1e-5)
    mask = neighborhood_mask(h, w, window)
    assert (mask.sum(dim=1) == window * window).all()  # always k x k keys, borders included
    corner = mask[0].reshape(h, w)  # query (0, 0): the window shifts inward to rows 0-2, cols 0-2
    assert corner[:3, :3].all() and corner.sum() == 9


# -------------------------------------------------------------------------------- linear attention


def test_linear_attention_equals_its_quadratic_formula():
    q, k, v = qkv(2, 3, 20, 4)
    phi = lambda a: F.elu(a) + 1  # Katharopoulos et al. (2020), eq. 7
    sim = phi(q) @ phi(k).transpose(-1, -2)  # (B, heads, N, N): sim(q_i, k_j), eq. 4
    expected = (sim @ v) / sim.sum(dim=-1, keepdim=True)
    assert torch.allclose(linear_attention(q, k, v, (4, 5)), expected, atol=1e-5)


def test_linear_attention_under_bf16_autocast_sums_in_fp32():
    q, k, v = (a.bfloat16() for a in qkv(1, 2, 4096, 8))
    reference = linear_attention(q.double(), k.double(), v.double(), (64, 64))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = linear_attention(q, k, v, (64, 64))
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.double(), reference, rtol=1e-2, atol=1e-2)  # bf16 output rounding only


# ------------------------------------------------------------------------------- channel attention


def test_channel_attention_map_is_its_formula_and_ignores_the_order_of_positions():
    q, k, v = qkv(2, 2, 6, 30)  # (B, heads, d=6 channels, N=30 positions)
    tau = torch.tensor([0.5, 2.0]).reshape(2, 1, 1)
    qn, kn = q / q.norm(dim=-1, keepdim=True), k / k.norm(dim=-1, keepdim=True)
    expected = torch.softmax(tau * (qn @ kn.transpose(-1, -2)), dim=-1)  # Zamir et al. (2022), eq. 2
    attn = channel_attention_map(q, k, tau)
    assert attn.shape == (2, 2, 6, 6) and torch.allclose(attn, expected, atol=1e-6)
    perm = torch.randperm(30, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(channel_attention_map(q[..., perm], k[..., perm], tau), attn, atol=1e-6)
    out = channel_attention(q[..., perm], k[..., perm], v[..., perm], tau)
    assert torch.allclose(out, channel_attention(q, k, v, tau)[..., perm], atol=1e-6)


def test_channel_attention_block_has_restormer_projections():
    block = make_attention("channel", 16, 4, 4)
    assert isinstance(block, ChannelAttention)
    assert block.qkv.kernel_size == (1, 1) and block.qkv_dw.kernel_size == (3, 3)
    assert block.qkv_dw.groups == 48 and block.temperature.shape == (4, 1, 1)


# ------------------------------------------------------------------------ the variants in the UNet


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_every_variant_keeps_shapes_starts_as_identity_and_trains_in_the_unet(kind):
    torch.manual_seed(0)
    block = make_attention(kind, 16, 4, 4, window=3)
    x = torch.randn(2, 16, 8, 16)
    nn.init.zeros_(block.proj.weight), nn.init.zeros_(block.proj.bias)  # as the UNet does
    assert torch.equal(block(x), x)
    config = load_config("standard_attn_slim", [*TINY_UNET, "model.attention_levels=[1,bottleneck]",
                                                f"model.attention={kind}", "model.attention_window=3"])
    model = build_model(config)
    x, t, _ = batch(2, 16, 32, False)
    assert model(x, t).shape == (2, 2, 16, 32)
    proj = next(m for m in model.modules() if hasattr(m, "proj") and m is not model).proj
    losses = train_losses(model, conditional=False)
    assert losses[-1] < 0.8 * losses[0]
    assert proj.weight.abs().sum() > 0  # gradients reached the (zero-initialised) attention output


@pytest.mark.parametrize("name", VARIANT_PRESETS)
def test_variant_presets_stay_within_the_slim_budget_and_run_at_64x128(name):
    config = load_config(name)
    slim = describe_parameters(load_config("standard_attn_slim"))["total"]
    assert abs(describe_parameters(config)["total"] / slim - 1) <= 0.2
    model = build_model(config).eval()
    kinds = {type(m).__name__ + getattr(getattr(m, "attend", None), "__name__", "")
             for m in model.mid[0].modules() if isinstance(m, (SelfAttention, ChannelAttention))}
    assert kinds == ({"ChannelAttention"} if name == "slim_channel_attn" else {"SelfAttentionfull_attention"})
    x, t, _ = batch(2, 64, 128, False, n=1)
    with torch.no_grad():
        assert model(x, t).shape == (1, 2, 64, 128)


@pytest.mark.parametrize("override, key", [
    ("model.attention_window=4", "model.attention_window"),
    ("model.attention_bottleneck=mhsa", "model.attention_bottleneck"),  # no bottleneck level
    ("model.attention=strided", "model.attention"),
])
def test_bad_attention_configs_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config("standard_attn_slim", ['model.attention_levels=["16x32"]', override])


def test_one_list_of_attention_kinds_for_config_registry_and_blocks():
    # models.structure.ATTENTION_KINDS is the one list: the config's Literal is built from it and
    # make_attention builds every entry.
    assert typing.get_args(AttentionKind) == ATTENTION_KINDS
    assert attention.ATTENTION_KINDS is ATTENTION_KINDS
    for kind in ATTENTION_KINDS:
        assert isinstance(make_attention(kind, 16, 4, 4, window=3), nn.Module)


def test_unknown_attention_kind_is_a_config_error():
    with pytest.raises(ConfigError, match="model.attention: 'strided' is not one of"):
        make_attention("strided", 16, 4, 4)


# -------------------------------------------------------------------------------- DiT and U-ViT


@pytest.mark.parametrize("arch", ["dit", "uvit"])
@pytest.mark.parametrize("variables, conditioning", [("[u]", "none"), ("[u,v]", "none"), ("[u,v]", "concat")])
def test_transformers_keep_shapes_at_16x32_and_64x128(arch, variables, conditioning):
    c = variables.count(",") + 1
    common = [f"data.variables={variables}", f"model.conditioning={conditioning}"]
    for overrides, (h, w) in ((TINY_VIT, (16, 32)), ([], (64, 128))):
        model = perturb_(build_model(load_config(f"{arch}_small", [*overrides, *common]))).eval()
        x, t, cond = batch(c, h, w, conditioning == "concat", n=1)
        with torch.no_grad():
            out = model(x, t, cond)
        assert out.shape == (1, c, h, w) and torch.isfinite(out).all() and out.abs().sum() > 0


def test_dit_small_has_512_tokens_at_64x128():
    model = build_model(load_config("dit_small"))
    assert model.grid == (16, 32) and model.pos_embed.shape == (1, 512, 192)


def test_adaln_zero_blocks_start_as_the_identity():
    model = DiT(in_channels=2, height=16, width=32, hidden_size=32, depth=3, heads=4)
    h, c = torch.randn(2, 32, 32), torch.randn(2, 32)  # (B, N, D), (B, D)
    for block in model.blocks:
        assert torch.equal(block(h, c), h)
    x, t, _ = batch(2, 16, 32, False)
    assert torch.equal(model(x, t), torch.zeros_like(x))


@pytest.mark.parametrize("arch", ["dit", "uvit"])
@pytest.mark.parametrize("conditioning", ["none", "concat"])
def test_a_few_training_steps_lower_the_loss(arch, conditioning):
    torch.manual_seed(0)
    model = build_model(load_config(f"{arch}_small", [*TINY_VIT, f"model.conditioning={conditioning}"]))
    losses = train_losses(model, conditional=conditioning == "concat", lr=3e-3)
    assert losses[-1] < 0.8 * losses[0]


def test_position_embedding_of_a_non_square_grid():
    emb = sincos_position_embedding(16, 4, 8)  # 4 x 8 tokens, rows first
    assert emb.shape == (32, 16)
    assert torch.cdist(emb, emb).add(torch.eye(32)).min() > 1e-3  # every position differs
    freqs = 10_000 ** (-torch.arange(4) / 4)  # 1-D encoding of Vaswani et al. (2017), 8 features
    row, col = 2, 5
    expected = torch.cat([torch.cos(row * freqs), torch.sin(row * freqs),
                          torch.cos(col * freqs), torch.sin(col * freqs)])
    assert torch.allclose(emb[row * 8 + col], expected, atol=1e-6)
    learned = UViT(in_channels=1, height=16, width=32, hidden_size=16, depth=1, pos_embed="learned")
    assert isinstance(learned.pos_embed, nn.Parameter) and learned.pos_embed.shape == (1, 32, 16)


def test_unpatchify_inverts_the_patch_order_on_a_non_square_grid():
    model = DiT(in_channels=3, height=8, width=12, patch_size=4, hidden_size=16, depth=1)
    x = torch.randn(2, 3, 8, 12)
    p, (gh, gw) = 4, model.grid
    tokens = torch.empty(2, gh * gw, p * p * 3)
    for r in range(gh):
        for c in range(gw):
            for i in range(p):
                for j in range(p):
                    tokens[:, r * gw + c, (i * p + j) * 3:(i * p + j + 1) * 3] = x[:, :, r * p + i, c * p + j]
    assert torch.equal(model.unpatchify(tokens), x)


@pytest.mark.parametrize("arch, override, key", [
    ("dit", "model.conditioning=film", "model.conditioning"),
    ("uvit", "model.depth=4", "model.depth"),
    ("dit", "data.width=130", "data.width"),
    ("dit", "model.attention=linear", "model.attention"),
])
def test_bad_transformer_configs_name_the_key(arch, override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(f"{arch}_small", [override])
