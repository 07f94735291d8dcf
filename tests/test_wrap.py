"""Tests of model.wrap: UNet convolutions that pad circularly along the axes a periodic field wraps around on.

Each piece is checked against an independent construction: torch's own circular Conv2d, an explicit
F.pad, upsampling a tiled copy of the field, finite differences, and the exact roll-equivariance a
wrapped network has (and its zero-padded twin has not). Tiny widths at 16x32.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fieldpaint.api import OnModelGrid
from fieldpaint.config import load_config
from fieldpaint.data.fields import check_wrap
from fieldpaint.errors import ConfigError, DataError
from fieldpaint.models.layers import Conv3x3, periodic_bilinear, wrap_pad
from fieldpaint.models.unet import UNet


def test_conv3x3_wrapping_both_axes_is_torchs_circular_conv():
    ours = Conv3x3(3, 5, wrap="xy")
    reference = nn.Conv2d(3, 5, 3, padding=1, padding_mode="circular")
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 8, 12)
    torch.testing.assert_close(ours(x), reference(x))


def test_conv3x3_without_wrap_is_the_zero_padded_conv_with_the_same_keys():
    ours = Conv3x3(3, 5)
    reference = nn.Conv2d(3, 5, 3, padding=1)
    reference.load_state_dict(ours.state_dict())  # strict: the same parameter names and shapes
    x = torch.randn(2, 3, 8, 12)
    torch.testing.assert_close(ours(x), reference(x))


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("wrap", ["x", "y"])
def test_conv3x3_wraps_one_axis_and_zero_pads_the_other(wrap, stride):
    conv = Conv3x3(3, 5, stride=stride, wrap=wrap)
    x = torch.randn(2, 3, 8, 12)
    circular, zeros = ((1, 1, 0, 0), (0, 0, 1, 1)) if wrap == "x" else ((0, 0, 1, 1), (1, 1, 0, 0))
    padded = F.pad(F.pad(x, circular, mode="circular"), zeros)  # F.pad order: left, right, top, bottom
    torch.testing.assert_close(conv(x), F.conv2d(padded, conv.weight, conv.bias, stride=stride))


@pytest.mark.parametrize("wrap", ["x", "y", "xy"])
def test_wrap_pad_is_circular_padding_with_a_correct_gradient(wrap):
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    wy, wx = int("y" in wrap), int("x" in wrap)
    assert torch.equal(wrap_pad(x, wrap), F.pad(x, (wx, wx, wy, wy), mode="circular"))
    assert torch.autograd.gradcheck(lambda a: wrap_pad(a, wrap), (x,))


def test_wrap_pad_keeps_channels_last_forward_and_backward():
    x = torch.randn(2, 8, 6, 10).to(memory_format=torch.channels_last).requires_grad_()
    y = wrap_pad(x, "x")
    assert y.is_contiguous(memory_format=torch.channels_last)
    y.backward(torch.randn_like(y))
    assert x.grad.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("wrap", ["x", "y", "xy"])
def test_periodic_bilinear_is_the_middle_of_the_upsampled_tiled_field(wrap):
    x = torch.randn(1, 2, 4, 6)
    ty, tx = (3 if "y" in wrap else 1), (3 if "x" in wrap else 1)
    up = F.interpolate(x.repeat(1, 1, ty, tx), scale_factor=2.0, mode="bilinear")
    h, w = 8, 12
    rows = slice(h, 2 * h) if ty == 3 else slice(0, h)
    cols = slice(w, 2 * w) if tx == 3 else slice(0, w)
    torch.testing.assert_close(periodic_bilinear(x, wrap), up[..., rows, cols])


def randomised(model: nn.Module) -> nn.Module:
    """`model` with every parameter drawn at random: the zero-initialised last layers would
    otherwise make the output 0, equivariant or not."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=generator))
    return model.eval()


def max_roll_error(model: nn.Module, shift: int, dim: int, conditioning: str) -> float:
    x, t = torch.randn(2, 2, 16, 32), torch.tensor([3, 700])
    cond = None if conditioning == "none" else torch.randn(2, 3, 16, 32)

    def roll(a):
        return None if a is None else torch.roll(a, shift, dims=dim)

    with torch.no_grad():
        return float((model(roll(x), t, roll(cond)) - roll(model(x, t, cond))).abs().max())


@pytest.mark.parametrize("conditioning,resample,attention", [("concat", "conv", "mhsa"), ("film", "conv", "channel"),
                                                             ("none", "interp", "mhsa")])
def test_a_wrapped_unet_commutes_with_rolls_along_its_wrapped_axis(conditioning, resample, attention):
    """Two halvings: a roll by 4 columns (2^levels) is a roll by one column at the bottleneck, so the
    wrapped network's output rolls with its input to rounding; the zero-padded twin, with the same
    weights, sees other pixels at its edges, and along the unwrapped rows so does the wrapped one."""
    options = dict(channels=(8, 16), norm_groups=4, attention_levels=[2], attention=attention, attention_heads=2,
                   conditioning=conditioning, resample=resample, film_channels=8)
    wrapped = randomised(UNet(2, wrap="x", **options))
    zero_padded = UNet(2, **options).eval()
    zero_padded.load_state_dict(wrapped.state_dict())
    with torch.no_grad():
        scale = float(wrapped(torch.randn(2, 2, 16, 32), torch.tensor([3, 700]),
                              None if conditioning == "none" else torch.randn(2, 3, 16, 32)).abs().mean())
    assert max_roll_error(wrapped, 4, -1, conditioning) < 1e-5 * scale
    assert max_roll_error(wrapped, 12, -1, conditioning) < 1e-5 * scale
    assert max_roll_error(zero_padded, 4, -1, conditioning) > 1e-2 * scale
    assert max_roll_error(wrapped, 4, -2, conditioning) > 1e-2 * scale


def test_config_records_wrap_and_only_the_unet_takes_it():
    assert load_config("palette_slim").model.wrap == "none"
    config = load_config("palette_slim", ["model.wrap=x"])
    assert config.model.wrap == "x"
    from fieldpaint.models.registry import build_model

    convs = [m for m in build_model(config).modules() if isinstance(m, Conv3x3)]
    assert convs and all(m.wrap == "x" for m in convs)
    with pytest.raises(ConfigError, match="model.wrap"):
        load_config("dit_small", ["model.wrap=x"])


def test_check_wrap_needs_a_periodic_axis_of_the_models_extent():
    check_wrap("x", (False, True), (16, 32), (16, 32))
    check_wrap("none", (False, False), (16, 30), (16, 32))
    check_wrap("x", (False, True), (14, 32), (16, 32))  # rows padded: the model does not wrap along y
    with pytest.raises(DataError, match="not periodic along y"):
        check_wrap("xy", (False, True), (16, 32), (16, 32))
    with pytest.raises(DataError, match="30 columns and the model 32"):
        check_wrap("x", (False, True), (16, 30), (16, 32))


class Mean:
    """A stand-in reconstructor: the observed values, zero elsewhere."""
    name = "stand-in"

    def reconstruct(self, obs, mask, valid, *, samples=1, seed=0):
        from fieldpaint.reconstruct import Reconstruction

        return Reconstruction(mean=obs * mask, std=torch.zeros_like(obs), members=None, nfe=0, seconds=0.0)


def test_a_wrapping_model_reconstructs_only_fields_of_its_extent_along_the_wrapped_axis():
    def fields(h, w):
        return torch.randn(1, 2, h, w), torch.ones(1, 1, h, w), torch.ones(1, 1, h, w)

    wrapped = OnModelGrid(Mean(), (16, 32), wrap="x")
    assert wrapped.reconstruct(*fields(16, 32)).mean.shape == (1, 2, 16, 32)
    assert wrapped.reconstruct(*fields(40, 32)).mean.shape == (1, 2, 40, 32)  # tiles along the rows only
    for width in (24, 40):
        with pytest.raises(DataError, match=f"these fields have {width}"):
            wrapped.reconstruct(*fields(16, width))
    assert OnModelGrid(Mean(), (16, 32)).reconstruct(*fields(16, 40)).mean.shape == (1, 2, 16, 40)
