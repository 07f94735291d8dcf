"""Tests of the UNet, its attention block and the model registry.

Full-size (64x128) presets are used only for shape checks at batch 1 and parameter counts; every
behavioural test uses tiny widths at 16x32 so the file runs in seconds on two CPU cores.
"""

from __future__ import annotations

import math
import typing

import pytest
import torch
from torch import nn

from fieldpaint.config import load_config, preset_names
from fieldpaint.errors import ConfigError
from fieldpaint.models.attention import SelfAttention
from fieldpaint.models.layers import (DROPOUT_LEVELS, Dropout, _GroupNormSiLU, dropout_keep_mask, group_norm,
                                      group_norm_silu, timestep_embedding)
from fieldpaint.models.registry import build_model, count_parameters, describe_parameters
from fieldpaint.models.unet import UNet

MODEL_PRESETS = ["film_slim", "palette_attn", "palette_slim", "repaint_gaussian_attn",
                 "standard_attn", "standard_attn_slim"]
TINY = ["data.height=16", "data.width=32", "model.channels=[8,16]", "model.norm_groups=4",
        "model.film_channels=8"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors gain nothing from a second thread, and on a shared 2-core machine OpenMP's
    spin-waiting makes them up to 20x slower; restore the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(name: str, *overrides: str, variables: str = "[u,v]"):
    return load_config(name, [*TINY, f"data.variables={variables}", *overrides])


def inputs(model: UNet, batch: int, h: int, w: int, seed: int = 0):
    """x, t, cond for `model`; cond = [mask, known values] (None when unconditional)."""
    g = torch.Generator().manual_seed(seed)
    c = model.in_channels
    x = torch.randn(batch, c, h, w, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    if model.conditioning == "none":
        return x, t, None
    mask = (torch.rand(batch, 1, h, w, generator=g) < 0.2).float()
    known = torch.randn(batch, c, h, w, generator=g) * mask
    return x, t, torch.cat([mask, known], dim=1)


def perturb_(model: nn.Module, scale: float = 0.05, seed: int = 1) -> nn.Module:
    """Move every parameter off its init (zero-initialised layers included), so that no output is 0
    by construction and every path of the network is live."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def test_one_list_of_architectures_for_config_and_registry():
    from fieldpaint.config.schema import Architecture
    from fieldpaint.models import registry, structure

    assert typing.get_args(Architecture) == structure.ARCHITECTURES
    assert set(registry.TRANSFORMERS) == set(structure.TRANSFORMER_ARCHITECTURES)
    assert set(structure.ARCHITECTURES) == {"unet", *structure.TRANSFORMER_ARCHITECTURES}


def test_model_presets_are_the_ones_tested():
    assert set(MODEL_PRESETS) <= set(preset_names())


# ------------------------------------------------------------------------------------------ shapes


@pytest.mark.parametrize("name", MODEL_PRESETS)
def test_full_size_preset_keeps_the_shape(name):
    model = build_model(load_config(name)).eval()
    x, t, cond = inputs(model, 1, 64, 128)
    with torch.no_grad():
        assert model(x, t, cond).shape == (1, 2, 64, 128)


@pytest.mark.parametrize("variables", ["[u]", "[u,v]"])
@pytest.mark.parametrize("name", MODEL_PRESETS)
def test_tiny_preset_keeps_the_shape_for_any_channel_count(name, variables):
    model = build_model(tiny_config(name, variables=variables))
    x, t, cond = inputs(model, 3, 16, 32)
    assert model(x, t, cond).shape == x.shape


def test_interp_resampling_keeps_the_shape_and_drops_exactly_the_resampling_convs():
    conv = build_model(tiny_config("standard_attn"))
    interp = build_model(tiny_config("standard_attn", "model.resample=interp"))
    x, t, _ = inputs(interp, 2, 16, 32)
    assert interp(x, t).shape == x.shape
    # one 3x3 C->C conv (9C^2 + C) per downsample (widths 8, 16) and per upsample (widths 16, 16)
    expected = sum(9 * c * c + c for c in (8, 16, 16, 16))
    assert count_parameters(conv)[0] - count_parameters(interp)[0] == expected


def test_attention_level_by_resolution_equals_by_index():
    by_res = build_model(tiny_config("standard_attn", 'model.attention_levels=["8x16", bottleneck]'))
    by_idx = build_model(tiny_config("standard_attn", "model.attention_levels=[1, 2]"))
    assert by_res.state_dict().keys() == by_idx.state_dict().keys()
    assert sum(isinstance(m, SelfAttention) for m in by_res.modules()) == 2 + 2 + 1  # down, up, bottleneck


# ----------------------------------------------------------------------------- parameter counts


@pytest.mark.parametrize("name, millions", [("standard_attn", 23.2), ("repaint_gaussian_attn", 23.2),
                                            ("standard_attn_slim", 6.1)])
def test_parameter_counts_match_the_notes(name, millions):
    # "Total params" row of the notes' Architecture Changes table
    info = describe_parameters(load_config(name))
    assert info["total"] == pytest.approx(millions * 1e6, rel=0.05)
    assert info["trainable"] == info["total"]


def test_slim_params_per_sample_match_the_notes():
    # "Params/sample" row of the notes' table: 666 for 9,180 training samples
    assert describe_parameters(load_config("standard_attn_slim"))["per_sample"] == pytest.approx(666, rel=0.05)


def test_count_parameters_separates_frozen_ones():
    layer = nn.Linear(3, 4)  # 12 weights + 4 biases
    layer.bias.requires_grad_(False)
    assert count_parameters(layer) == (16, 12)


# -------------------------------------------------------------------------------- behaviour


def test_zero_initialised_model_outputs_zero():
    model = build_model(tiny_config("standard_attn"))
    x, t, _ = inputs(model, 2, 16, 32)
    assert torch.equal(model(x, t), torch.zeros_like(x))


def test_dropout_is_active_in_train_mode_only():
    model = perturb_(build_model(tiny_config("standard_attn_slim", "model.dropout=0.3")))
    x, t, _ = inputs(model, 2, 16, 32)
    model.train()
    assert not torch.allclose(model(x, t), model(x, t))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x, t), model(x, t))


N_DROPOUT = 2**20  # entries per statistical dropout test: the 5-sigma bounds below follow from it


@pytest.mark.parametrize("p", [0.1, 0.3, 0.9])
def test_fast_dropout_keeps_each_entry_with_probability_one_minus_p(p):
    """The kept fraction is Binomial(N, q) / N with q = 1 - round(p * 32768) / 32768: within 5 sd
    of q; neighbours (the two half-words of one random integer, and entries one word apart) are
    uncorrelated within 5 / sqrt(N), the sd of a correlation estimate between independent bits."""
    torch.manual_seed(0)
    keep = dropout_keep_mask(torch.empty(N_DROPOUT), p).double()
    q = 1 - round(p * DROPOUT_LEVELS) / DROPOUT_LEVELS
    assert abs(keep.mean().item() - q) < 5 * math.sqrt(q * (1 - q) / N_DROPOUT)
    for lag in (1, 2):
        r = torch.corrcoef(torch.stack([keep[:-lag], keep[lag:]]))[0, 1].item()
        assert abs(r) < 5 / math.sqrt(N_DROPOUT), lag


def test_fast_dropout_is_unbiased_and_its_gradient_is_its_mask():
    """E[out] = x: out / x is 0 or 1 / q exactly, and the mean of out over N ones is 1 within
    5 sd (sd = sqrt((1 - q) / (q N))). The gradient of sum(out * g) is g times the same factor."""
    torch.manual_seed(1)
    layer = Dropout(0.2).train()
    x = torch.ones(N_DROPOUT, requires_grad=True)
    out = layer(x)
    q = 1 - round(0.2 * DROPOUT_LEVELS) / DROPOUT_LEVELS
    assert torch.unique(out).tolist() == [0.0, pytest.approx(1 / q)]
    assert abs(out.mean().item() - 1) < 5 * math.sqrt((1 - q) / (q * N_DROPOUT))
    g = torch.randn(N_DROPOUT)
    out.backward(g)
    torch.testing.assert_close(x.grad, g * out.detach())


def test_fast_dropout_keeps_the_memory_format_and_follows_the_seed():
    """A channels_last input gives a channels_last output whose zeros are those of the same
    draw on the NCHW tensor with the same strides; the same seed gives the same mask."""
    x = torch.randn(2, 6, 8, 10).contiguous(memory_format=torch.channels_last)
    layer = Dropout(0.5).train()
    torch.manual_seed(3)
    a = layer(x)
    torch.manual_seed(3)
    b = layer(x)
    assert a.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(a, b)
    kept = a != 0
    torch.testing.assert_close(a[kept], x[kept] * 2)
    assert 0.3 < kept.float().mean() < 0.7  # 960 entries at q = 0.5: sd 0.016
    layer.eval()
    assert layer(x) is x


def test_fast_dropout_falls_back_for_strided_tensors_and_p_one():
    x = torch.randn(4, 6, 8, 10)[:, ::2]  # not dense: nn.Dropout's own path
    torch.manual_seed(4)
    a = Dropout(0.5).train()(x)
    torch.manual_seed(4)
    assert torch.equal(a, nn.Dropout(0.5).train()(x))
    assert torch.equal(Dropout(1.0).train()(x.contiguous()), torch.zeros_like(x))
    assert torch.equal(Dropout(0.0).train()(x), x)


@pytest.mark.parametrize("name", ["palette_slim", "film_slim"])
def test_known_values_condition_the_output_at_the_highest_noise_level(name):
    model = perturb_(build_model(tiny_config(name))).eval()
    x, _, cond = inputs(model, 2, 16, 32)
    t = torch.full((2,), 999)
    other = cond.clone()
    other[:, 1:] = other[:, 1:] + 1.0 * other[:, :1]  # shift the observed values only
    with torch.no_grad():
        diff = (model(x, t, cond) - model(x, t, other)).abs().amax(dim=(1, 2, 3))
    assert (diff > 1e-3).all()


def test_film_model_starts_equal_to_its_unconditional_twin():
    twin = perturb_(build_model(tiny_config("standard_attn_slim"))).eval()
    film = build_model(tiny_config("film_slim")).eval()
    missing, unexpected = film.load_state_dict(twin.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("film.") for k in missing)
    x, t, cond = inputs(film, 2, 16, 32)
    with torch.no_grad():
        out = film(x, t, cond)
        assert out.abs().max() > 1e-3  # not vacuous: the shared weights are off zero
        assert torch.equal(out, twin(x, t))


def test_output_depends_on_the_timestep_and_accepts_float_or_long():
    model = perturb_(build_model(tiny_config("standard_attn_slim"))).eval()
    x, _, _ = inputs(model, 2, 16, 32)
    with torch.no_grad():
        a, b = model(x, torch.tensor([10, 10])), model(x, torch.tensor([900, 900]))
        assert not torch.allclose(a, b)
        assert torch.allclose(a, model(x, torch.tensor([10.0, 10.0])))


def test_channels_last_input_gives_the_same_output():
    model = perturb_(build_model(tiny_config("film_slim", 'model.attention_levels=["8x16", bottleneck]'))).eval()
    x, t, cond = inputs(model, 2, 16, 32)
    last = dict(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = model(x, t, cond)
        assert torch.allclose(model(x.contiguous(**last), t, cond.contiguous(**last)), ref, atol=1e-5)
        model.to(**last)
        assert torch.allclose(model(x.contiguous(**last), t, cond.contiguous(**last)), ref, atol=1e-5)


def test_cond_must_match_the_conditioning():
    uncond = build_model(tiny_config("standard_attn_slim"))
    concat = build_model(tiny_config("palette_slim"))
    x, t, cond = inputs(concat, 1, 16, 32)
    with pytest.raises(ValueError, match="unconditional"):
        uncond(x, t, cond)
    with pytest.raises(ValueError, match="cond"):
        concat(x, t, None)
    with pytest.raises(ValueError, match="shape"):
        concat(x, t, cond[:, :2])


def test_a_few_adam_steps_lower_the_denoising_loss():
    torch.manual_seed(0)
    model = build_model(tiny_config("standard_attn_slim", "model.channels=[16,32]", "model.dropout=0.0"))
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 2 * math.pi, 16), torch.linspace(0, 2 * math.pi, 32), indexing="ij")
    phase = torch.rand(8, 2, 1, 1, generator=g) * 2 * math.pi
    x0 = torch.sin(xx + phase) * torch.cos(yy - phase)  # (8, 2, 16, 32) smooth fields
    eps = torch.randn(x0.shape, generator=g)
    t = torch.randint(0, 1000, (8,), generator=g)
    abar = torch.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2)[:, None, None, None] ** 2  # cosine schedule
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(30):
        loss = (model(x_t, t) - eps).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(eps.pow(2).mean().item())  # zero output at init
    assert losses[-1] < 0.5 * losses[0]


# ------------------------------------------------------------------------------------ attention


def test_self_attention_matches_a_naive_reference():
    torch.manual_seed(0)
    attn = perturb_(SelfAttention(16, heads=4, groups=4), scale=0.3)
    x = torch.randn(2, 16, 4, 6)
    with torch.no_grad():
        tokens = attn.norm(x).flatten(2).transpose(1, 2)  # (B, N, C)
        q, k, v = attn.qkv(tokens).chunk(3, dim=-1)
        split = lambda a: a.reshape(2, 24, 4, 4).transpose(1, 2)  # (B, heads, N, d)
        weights = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(4), dim=-1)
        mixed = (weights @ split(v)).transpose(1, 2).reshape(2, 24, 16)
        expected = x + attn.proj(mixed).transpose(1, 2).reshape(2, 16, 4, 6)
        assert torch.allclose(attn(x), expected, atol=1e-5)


def test_timestep_embedding_reference_values():
    # sin/cos features of Ho et al. (2020): [cos(t f_k), sin(t f_k)], f_k = 10000^(-k/half)
    emb = timestep_embedding(torch.tensor([0.0, 3.0]), 6)
    freqs = torch.tensor([1.0, 10000 ** (-1 / 3), 10000 ** (-2 / 3)])
    assert torch.equal(emb[0], torch.tensor([1.0, 1, 1, 0, 0, 0]))
    assert torch.allclose(emb[1], torch.cat([torch.cos(3 * freqs), torch.sin(3 * freqs)]))


# ---------------------------------------------------------------------------------- bad configs


@pytest.mark.parametrize("override, key", [
    ('model.attention_levels=["32x32"]', "model.attention_levels"),
    ("model.channels=[24,48]", "model.norm_groups"),  # 32 groups cannot split 24 channels
    ("data.height=40", "data.height"),  # 40 is not divisible by 2^4
    ("model.film_channels=0", "model.film_channels"),
    ("model.time_embed_mult=0", "model.time_embed_mult"),
])
def test_impossible_model_configs_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config("standard_attn", [override])



# ------------------------------------------------------------------------ fused GroupNorm-SiLU

CL = dict(memory_format=torch.channels_last)


def _gn_inputs():
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 6, 4, 5, generator=g, dtype=torch.float64) * 2 + 3).contiguous(**CL)  # mean far from 0
    scale, shift = (torch.randn(3, 6, 1, 1, generator=g, dtype=torch.float64) for _ in range(2))
    norm = group_norm(6, 2).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5, generator=g)
        norm.bias.uniform_(-0.5, 0.5, generator=g)
    return x, scale, shift, norm


def test_fused_group_norm_silu_gradients_match_finite_differences():
    # torch.autograd.gradcheck in float64 (finite differences): the hand-written backward of
    # _GroupNormSiLU against its forward, with and without the scale-shift.
    x, scale, shift, norm = _gn_inputs()
    args = [t.detach().requires_grad_() for t in (x, norm.weight, norm.bias, scale, shift)]
    assert torch.autograd.gradcheck(lambda *a: _GroupNormSiLU.apply(*a, 2, 1e-6), args)
    assert torch.autograd.gradcheck(lambda *a: _GroupNormSiLU.apply(*a, None, None, 2, 1e-6), args[:3])


def test_fused_group_norm_silu_equals_the_plain_expression():
    silu = torch.nn.functional.silu
    x, scale, shift, norm = _gn_inputs()
    fused = group_norm_silu(x, norm, scale, shift)
    assert fused.is_contiguous(**CL) and torch.allclose(fused, silu(norm(x) * (1 + scale) + shift), rtol=0, atol=1e-12)
    nchw = x.contiguous()  # NCHW takes the plain expression itself: bitwise the pre-fusion result
    assert torch.equal(group_norm_silu(nchw, norm, scale, shift), silu(norm(nchw) * (1 + scale) + shift))
    film = torch.randn(3, 6, 4, 5, dtype=torch.float64)  # a spatial (FiLM) scale: the plain expression too
    assert torch.equal(group_norm_silu(x, norm, film, shift), silu(norm(x) * (1 + film) + shift))


def test_fused_group_norm_silu_in_bf16_stays_near_fp32():
    # bf16 input and bf16 elementwise work against the fp32 expression: the relative error of the
    # output and of every gradient is near bf16 rounding (measured 0.30-0.49 % here, torch 2.13 CPU;
    # 0.25-0.30 % for an fp32 GroupNorm between a bf16 input and a bf16 output, as autocast runs it).
    x = torch.randn(4, 64, 16, 32, generator=torch.Generator().manual_seed(2)).contiguous(**CL)
    scale, shift = torch.randn(2, 4, 64, 1, 1, generator=torch.Generator().manual_seed(4)) * 0.3
    norm = group_norm(64, 32)
    gy = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))

    def run(fn, inputs):
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        norm.zero_grad()
        y = fn(*leaves)
        y.backward(gy.to(y.dtype))
        return [y.detach().float()] + [t.grad.float() for t in leaves] + [norm.weight.grad.clone(), norm.bias.grad.clone()]

    ref = run(lambda x, s, b: torch.nn.functional.silu(norm(x) * (1 + s) + b), (x, scale, shift))
    low = run(lambda x, s, b: group_norm_silu(x, norm, s, b), (x.bfloat16(), scale.bfloat16(), shift.bfloat16()))
    errors = [float((a - r).norm() / r.norm()) for a, r in zip(low, ref)]
    assert max(errors) < 1.5e-2, errors
