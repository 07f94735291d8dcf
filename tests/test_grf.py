"""Tests for the Matérn GRF generator (fieldpaint.data.grf).

Independent expectations: scikit-learn's Matern kernel, a dense covariance matrix of the crop,
and sampling statistics with standard errors measured across independent fields.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.gaussian_process.kernels import Matern

from fieldpaint.data import grf
from fieldpaint.errors import FieldpaintError

NUS = (0.5, 1.5, 2.5, math.inf)


@pytest.mark.parametrize("nu", NUS)
@pytest.mark.parametrize("length_scale", [0.7, 3.0, 8.0])
def test_matern_covariance_matches_sklearn(nu: float, length_scale: float) -> None:
    points = np.random.default_rng(0).uniform(0, 20, size=(40, 2))
    expected = 2.5 * Matern(length_scale=length_scale, nu=nu)(points)
    got = grf.matern_covariance(cdist(points, points), nu, length_scale, variance=2.5)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)


def test_matern_covariance_keeps_shape() -> None:
    r = np.linspace(0, 10, 24).reshape(2, 3, 4)
    assert grf.matern_covariance(r, 1.5, 2.0).shape == (2, 3, 4)


def _exact_crop_covariances(height: int, width: int, nu: float, length_scale: float):
    """Covariances of the sampler's Re and Im outputs, pushed through its own code path.

    The sampler is linear in the noise: feeding each real and imaginary unit vector gives the
    columns A_re, A_im of x = A_re a + A_im b (a, b iid N(0, 1)),
    so Cov = A_re A_re^T + A_im A_im^T.
    """
    sqrt_eig = grf.embedding_sqrt(
        grf.circulant_embedding_eigenvalues(height, width, nu=nu, length_scale=length_scale)
    )
    rows, cols = sqrt_eig.shape
    basis = np.eye(rows * cols).reshape(-1, rows, cols)
    out_re = grf.fields_from_noise(sqrt_eig, basis.astype(complex), height, width)
    out_im = grf.fields_from_noise(sqrt_eig, 1j * basis, height, width)
    # even indices: Re(y), odd: Im(y); columns indexed by the noise unit vector
    cols_re = np.concatenate([out_re[0::2], out_im[0::2]]).reshape(2 * rows * cols, -1).T
    cols_im = np.concatenate([out_re[1::2], out_im[1::2]]).reshape(2 * rows * cols, -1).T
    return cols_re @ cols_re.T, cols_im @ cols_im.T, cols_re @ cols_im.T


@pytest.mark.parametrize("nu, length_scale", [(0.5, 2.0), (1.5, 3.0), (2.5, 2.0), (math.inf, 1.5)])
def test_circulant_embedding_is_exact(nu: float, length_scale: float) -> None:
    """The crop's covariance equals the dense Matérn matrix; Re and Im parts are uncorrelated."""
    height, width = 5, 7
    cov_re, cov_im, cross = _exact_crop_covariances(height, width, nu, length_scale)
    yy, xx = np.mgrid[:height, :width]
    pixels = np.stack([yy.ravel(), xx.ravel()], axis=1)
    dense = grf.matern_covariance(cdist(pixels, pixels), nu, length_scale)
    np.testing.assert_allclose(cov_re, dense, atol=1e-9)
    np.testing.assert_allclose(cov_im, dense, atol=1e-9)
    np.testing.assert_allclose(cross, 0.0, atol=1e-9)


def test_default_embedding_eigenvalues_are_nonnegative() -> None:
    eig = grf.circulant_embedding_eigenvalues(64, 128)  # nu=1.5, l=8 px: the defaults
    assert eig.shape == grf.minimal_torus(64, 128)
    assert eig.shape[0] >= 2 * 63 and eig.shape[1] >= 2 * 127
    assert eig.min() >= -grf.EIGEN_RTOL * eig.max()


def test_embedding_grows_when_minimal_torus_fails() -> None:
    # nu=2.5, l=16 px on 64x64: the minimal 126x126 torus has clearly negative eigenvalues.
    rows, cols = grf.minimal_torus(64, 64)
    assert grf.torus_eigenvalues(rows, cols, 2.5, 16.0).min() < -1e-6
    eig = grf.circulant_embedding_eigenvalues(64, 64, nu=2.5, length_scale=16.0)
    assert eig.shape[0] > rows and eig.shape[1] > cols
    assert eig.min() >= -grf.EIGEN_RTOL * eig.max()


def _lag_products(fields: np.ndarray, lag: int, axis: int) -> np.ndarray:
    """Per-field mean of x(p) x(p + lag) over positions, (n,); mean known (0), not removed."""
    n, size = fields.shape[0], fields.shape[1 + axis]
    head = np.take(fields, np.arange(size - lag), axis=1 + axis)
    tail = np.take(fields, np.arange(lag, size), axis=1 + axis)
    return (head * tail).reshape(n, -1).mean(axis=1)


@pytest.mark.parametrize("nu", [0.5, 1.5, 2.5])
def test_empirical_covariance_matches_kernel(nu: float) -> None:
    """Lags 0, 1, 4, 8, 16 px along x and y, from 800 independent 64x64 fields.

    Tolerance: each field's position-pooled estimate is one draw; the 800 are independent, so
    the estimator's standard error is std/sqrt(800) (~0.005-0.012 here). We accept 4.5 standard
    errors, and require the standard error itself to be < 0.015 so that the test separates the
    kernels (at lag 8 px the three nus differ by >= 0.04).
    """
    fields = grf.sample_matern_grf(800, 1, 64, 64, nu=nu, length_scale=8.0, seed=1)[:, 0]
    fields = fields.astype(np.float64)
    for axis in (0, 1):
        for lag in (0, 1, 4, 8, 16):
            per_field = _lag_products(fields, lag, axis)
            estimate = per_field.mean()
            stderr = per_field.std(ddof=1) / math.sqrt(len(per_field))
            expected = float(grf.matern_covariance(np.array(lag), nu, 8.0))
            assert stderr < 0.015
            assert abs(estimate - expected) < 4.5 * stderr, (axis, lag, estimate, expected)


def test_mean_and_variance() -> None:
    """Pixelwise mean ~ 0 and variance ~ 2 (the variance parameter), over 500 fields.

    Standard errors are measured across fields (independent); tolerance 4.5 of them.
    """
    fields = grf.sample_matern_grf(500, 1, 32, 48, variance=2.0, seed=3)[:, 0].astype(np.float64)
    means = fields.reshape(500, -1).mean(axis=1)
    variances = (fields**2).reshape(500, -1).mean(axis=1)
    assert abs(means.mean()) < 4.5 * means.std(ddof=1) / math.sqrt(500)
    assert abs(variances.mean() - 2.0) < 4.5 * variances.std(ddof=1) / math.sqrt(500)


def test_channels_are_independent() -> None:
    """Cross-covariance between channels at lag 0 and 4 px is ~0 (4.5 standard errors)."""
    fields = grf.sample_matern_grf(400, 3, 32, 32, seed=4).astype(np.float64)
    for a, b in ((0, 1), (1, 2), (0, 2)):
        for lag in (0, 4):
            per_field = (fields[:, a, :, lag:] * fields[:, b, :, : 32 - lag]).reshape(400, -1)
            per_field = per_field.mean(axis=1)
            assert abs(per_field.mean()) < 4.5 * per_field.std(ddof=1) / math.sqrt(400)


def test_shape_dtype_and_determinism() -> None:
    a = grf.sample_matern_grf(5, 2, 16, 24, seed=7)
    assert a.shape == (5, 2, 16, 24) and a.dtype == np.float32
    np.testing.assert_array_equal(a, grf.sample_matern_grf(5, 2, 16, 24, seed=7))
    assert not np.allclose(a, grf.sample_matern_grf(5, 2, 16, 24, seed=8))


def test_sample_does_not_depend_on_batch_size(monkeypatch: pytest.MonkeyPatch) -> None:
    big = grf.sample_matern_grf(7, 1, 16, 16, seed=2)
    monkeypatch.setattr(grf, "CHUNK_BYTES", 1)  # one torus per chunk
    np.testing.assert_array_equal(grf.sample_matern_grf(3, 1, 16, 16, seed=2), big[:3])


def test_generate_grf_layout() -> None:
    data, split, attrs = grf.generate_grf(6, 2, 16, 32, nu=2.5, length_scale=4.0, seed=5)
    assert list(data) == ["field"] and data["field"].shape == (8, 16, 32)
    assert data["field"].dtype == np.float32
    assert split.tolist() == ["train"] * 6 + ["test"] * 2
    assert attrs["generator"] == "grf" and attrs["kernel"] == "matern"
    assert (attrs["nu"], attrs["length_scale"], attrs["variance"]) == (2.5, 4.0, 1.0)
    assert attrs["mean"] == 0.0 and attrs["seed"] == 5 and attrs["channels"] == 1
    assert attrs["periodic"] == "none"  # a crop of a larger torus does not wrap around
    assert all(isinstance(v, (str, int, float)) for v in attrs.values())
    expected = grf.sample_matern_grf(8, 1, 16, 32, nu=2.5, length_scale=4.0, seed=5)[:, 0]
    np.testing.assert_array_equal(data["field"], expected)

    data, _, attrs = grf.generate_grf(2, 1, 8, 8, channels=3)
    assert list(data) == ["f0", "f1", "f2"] and attrs["channels"] == 3


@pytest.mark.parametrize(
    "kwargs",
    [
        {"nu": 1.0},
        {"nu": 3.5},
        {"length_scale": 0.0},
        {"length_scale": -2.0},
        {"length_scale": float("nan")},
        {"variance": 0.0},
        {"seed": -1},
    ],
)
def test_invalid_parameters_raise(kwargs: dict) -> None:
    with pytest.raises(FieldpaintError):
        grf.sample_matern_grf(2, 1, 8, 8, **kwargs)


@pytest.mark.parametrize("args", [(-1, 1, 8, 8), (2, 0, 8, 8), (2, 1, 0, 8), (2, 1, 8, 2.5)])
def test_invalid_sizes_raise(args: tuple) -> None:
    with pytest.raises(FieldpaintError):
        grf.sample_matern_grf(*args)


def test_generate_grf_needs_samples() -> None:
    with pytest.raises(FieldpaintError):
        grf.generate_grf(0, 0, 8, 8)
