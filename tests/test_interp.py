"""Tests for the simple interpolation baselines (fieldpaint.baselines.interp).

Independent expectations: exactness properties of each interpolant (linear fields for Delaunay
interpolation, discrete-harmonic fields for the Laplace fill), and a brute-force nearest search.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fieldpaint.baselines.interp import InterpReconstructor, laplace_fill, linear_fill, nearest_fill
from fieldpaint.errors import FieldpaintError
from fieldpaint.reconstruct import Reconstruction

H, W = 16, 24
METHODS = ("nearest", "linear", "laplace")


def _grid() -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[:H, :W].astype(np.float64)


def _observed(seed: int, fraction: float = 0.3, frame: bool = False) -> np.ndarray:
    observed = np.random.default_rng(seed).random((H, W)) < fraction
    if frame:  # puts every pixel inside the convex hull of the observations
        observed[0, :] = observed[-1, :] = observed[:, 0] = observed[:, -1] = True
    return observed


def _land() -> np.ndarray:
    valid = np.ones((H, W), bool)
    valid[5:9, 8:14] = False  # an island
    return valid


@pytest.mark.parametrize("method", METHODS)
def test_observed_pixels_are_returned_exactly(method: str) -> None:
    x = torch.randn(2, 3, H, W)
    mask = torch.from_numpy(np.stack([_observed(0), _observed(1)])[:, None]).float()
    rec = InterpReconstructor(method).reconstruct(x, mask, None)
    assert isinstance(rec, Reconstruction) and rec.members is None
    observed = mask.expand_as(x) > 0
    assert torch.equal(rec.mean[observed], x[observed])
    assert torch.equal(rec.std, torch.zeros_like(x))
    assert torch.isfinite(rec.mean).all()


def test_linear_reproduces_a_linear_field_inside_the_hull() -> None:
    yy, xx = _grid()
    field = np.stack([2.0 * yy - 0.5 * xx + 3.0, -yy + 0.25 * xx])
    out = linear_fill(field, _observed(2, frame=True))
    np.testing.assert_allclose(out, field, atol=1e-10)


def test_linear_falls_back_to_nearest_outside_the_hull() -> None:
    yy, xx = _grid()
    observed = np.zeros((H, W), bool)
    observed[4:10, 4:10] = _observed(3)[4:10, 4:10]
    observed[4, 4] = observed[9, 9] = observed[4, 9] = True
    field = (yy + xx)[None]
    out = linear_fill(field, observed)
    outside = np.zeros((H, W), bool)
    outside[12:, 12:] = True  # far outside the 4..9 square
    np.testing.assert_array_equal(out[:, outside], nearest_fill(field, observed)[:, outside])


@pytest.mark.parametrize("name, harmonic", [
    ("linear", lambda y, x: 1.5 * y - 2.0 * x + 0.5),
    ("x^2 - y^2", lambda y, x: x**2 - y**2),  # discrete-harmonic for the 5-point Laplacian
    ("xy", lambda y, x: x * y),
])
def test_laplace_reproduces_a_harmonic_field(name: str, harmonic) -> None:
    yy, xx = _grid()
    field = harmonic(yy, xx)[None]
    # Dirichlet data on the frame (the interior is then determined) plus scattered points
    out = laplace_fill(field, _observed(4, 0.1, frame=True), np.ones((H, W), bool))
    np.testing.assert_allclose(out, field, atol=1e-9 * np.abs(field).max())


def test_laplace_solves_the_discrete_equation_around_land() -> None:
    """With land, each hidden pixel is the mean of its valid neighbours (zero flux into land)."""
    rng = np.random.default_rng(5)
    valid, observed = _land(), _observed(6, 0.15) & _land()
    values = rng.standard_normal((2, H, W))
    out = laplace_fill(values, observed, valid)
    for i, j in np.argwhere(valid & ~observed):
        neighbours = [(i + a, j + b) for a, b in ((1, 0), (-1, 0), (0, 1), (0, -1))
                      if 0 <= i + a < H and 0 <= j + b < W and valid[i + a, j + b]]
        expected = np.mean([out[:, a, b] for a, b in neighbours], axis=0)
        np.testing.assert_allclose(out[:, i, j], expected, atol=1e-10)


def test_laplace_region_without_observations_keeps_nearest() -> None:
    valid = np.ones((H, W), bool)
    valid[:, 10] = False  # a wall splits the grid; the right half has no observation
    observed = np.zeros((H, W), bool)
    observed[3, 2] = observed[12, 7] = True
    values = np.random.default_rng(7).standard_normal((1, H, W))
    out = laplace_fill(values, observed, valid)
    np.testing.assert_array_equal(out[:, :, 11:], nearest_fill(values, observed)[:, :, 11:])
    assert np.isfinite(out).all()


def test_nearest_matches_brute_force() -> None:
    observed = _observed(8, 0.1)
    values = np.random.default_rng(9).standard_normal((1, H, W))
    out = nearest_fill(values, observed)
    points = np.argwhere(observed)
    for i in range(H):
        for j in range(W):
            d2 = ((points - (i, j)) ** 2).sum(1)
            nearest = points[d2 == d2.min()]  # ties: any nearest point is correct
            assert any(out[0, i, j] == values[0, a, b] for a, b in nearest)


@pytest.mark.parametrize("method", METHODS)
def test_land_pixels_are_never_used(method: str) -> None:
    """Values at never-valid pixels, even where the mask says observed, change nothing."""
    valid = torch.from_numpy(_land())[None, None].float()
    x = torch.randn(1, 2, H, W)
    mask = torch.from_numpy(_observed(10, 0.2))[None, None].float()
    mask_all_land = torch.maximum(mask, 1 - valid)  # claims land is observed
    poisoned = torch.where(valid > 0, x, torch.full_like(x, 1e6))
    recon = InterpReconstructor(method)
    clean = recon.reconstruct(x, mask, valid).mean
    dirty = recon.reconstruct(poisoned, mask_all_land, valid).mean
    assert torch.equal(clean, dirty)
    assert (clean[(valid == 0).expand_as(clean)] == 0).all()


def test_per_channel_masks_fill_each_channel_on_its_own() -> None:
    x = torch.randn(1, 2, H, W)
    masks = torch.from_numpy(np.stack([_observed(11), _observed(12)]))[None].float()
    both = InterpReconstructor("linear").reconstruct(x, masks, None).mean
    for c in range(2):
        alone = InterpReconstructor("linear").reconstruct(x[:, c:c + 1], masks[:, c:c + 1], None)
        torch.testing.assert_close(both[:, c:c + 1], alone.mean, rtol=0, atol=1e-6)


def test_unknown_method_is_an_error() -> None:
    with pytest.raises(FieldpaintError, match="nearest"):
        InterpReconstructor("cubic")
