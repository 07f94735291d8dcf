"""Scores: each against an independent computation (numerical integral, brute force, closed form)."""

import math

import numpy as np
import pytest
from scipy import integrate, stats

from fieldpaint.metrics import (crps, ensemble_crps, gaussian_crps, mae, mse, radial_spectrum, scored_pixels,
                                spectrum_error, spread_skill)


def test_scored_pixels_are_hidden_and_valid():
    mask = np.array([[1, 0], [0, 0]])[None]
    valid = np.array([[1, 1], [0, 1]])[None]
    assert scored_pixels(mask, valid).tolist() == [[False, True], [False, True]]


def test_mse_and_mae_only_see_scored_pixels():
    truth = np.zeros((2, 2, 2))
    pred = np.array([[[5.0, 1.0], [99.0, -1.0]]] * 2)
    scored = np.array([[False, True], [False, True]])
    assert mse(pred, truth, scored) == 1.0 and mae(pred, truth, scored) == 1.0


@pytest.mark.parametrize("mu, sigma, y", [(0.0, 1.0, 0.3), (1.0, 0.5, -0.7), (-2.0, 3.0, 4.0)])
def test_gaussian_crps_equals_the_integral_definition(mu, sigma, y):
    # CRPS(F, y) = ∫ (F(x) − 1{x ≥ y})² dx, integrated numerically on both sides of y.
    F = stats.norm(mu, sigma).cdf
    left = integrate.quad(lambda x: F(x) ** 2, -np.inf, y)[0]
    right = integrate.quad(lambda x: (1 - F(x)) ** 2, y, np.inf)[0]
    assert gaussian_crps(np.array(mu), np.array(sigma), np.array(y)) == pytest.approx(left + right, rel=1e-6)


def test_gaussian_crps_with_zero_spread_is_absolute_error():
    assert gaussian_crps(np.array([1.0]), np.array([0.0]), np.array([3.5]))[0] == 2.5


def test_fair_ensemble_crps_matches_brute_force():
    rng = np.random.default_rng(0)
    members, y = rng.normal(size=(7, 5)), rng.normal(size=5)
    k = members.shape[0]
    skill = np.abs(members - y).mean(axis=0)
    pairs = np.abs(members[:, None] - members[None]).sum(axis=(0, 1))
    assert np.allclose(ensemble_crps(members, y), skill - pairs / (2 * k * (k - 1)))


def test_large_ensemble_crps_approaches_the_gaussian_closed_form():
    rng = np.random.default_rng(1)
    y = rng.normal(size=2000)
    members = rng.normal(size=(64, 2000))
    assert ensemble_crps(members, y).mean() == pytest.approx(gaussian_crps(0.0, np.ones(2000), y).mean(), rel=0.03)


def test_calibrated_gaussian_crps_over_rmse_is_one_over_sqrt_pi():
    # For y ~ N(μ, σ²) scored with N(μ, σ²): E[CRPS] = σ/√π and RMSE = σ.
    rng = np.random.default_rng(2)
    truth = rng.normal(size=(1, 100, 100)) * 2.0
    mean, std = np.zeros_like(truth), np.full_like(truth, 2.0)
    scored = np.ones((100, 100), bool)
    ratio = crps(truth, scored, mean=mean, std=std) / math.sqrt(mse(mean, truth, scored))
    assert ratio == pytest.approx(1 / math.sqrt(math.pi), rel=0.02)


def test_spread_skill_of_a_perfect_ensemble_is_one():
    rng = np.random.default_rng(3)
    k, n = 5, 40000
    center = rng.normal(size=n)
    truth = center + rng.normal(size=n)
    members = center + rng.normal(size=(k, n))
    mean, std = members.mean(axis=0), members.std(axis=0, ddof=1)
    as_field = lambda a: a.reshape(1, 200, 200)  # noqa: E731
    ratio = spread_skill(as_field(mean), as_field(std), as_field(truth), np.ones((200, 200), bool), members=k)
    assert ratio == pytest.approx(1.0, abs=0.03)


def test_radial_spectrum_puts_a_single_mode_at_its_wavenumber():
    y, x = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    field = np.cos(2 * np.pi * 5 * x / 32)[None]
    spectrum = radial_spectrum(field)
    assert int(np.argmax(spectrum)) == 5
    assert spectrum_error(field, field) == 0.0
    # 1000x less amplitude at k = 5 (10^-6 in power), identical (empty) elsewhere: 6 decades in 1 of 16 bins.
    weak = 1e-3 * field
    assert spectrum_error(weak, field) == pytest.approx(6 / 16, rel=1e-3)


def test_radial_spectrum_bins_by_physical_wavenumber_on_a_non_square_grid():
    # 16 x 32: one cycle across the width is 1/32 cycles per pixel (bin 1), one across the height
    # 1/16 (bin 2); bins are 1/32 wide and reach the Nyquist frequency 1/2 (bin 16).
    y, x = np.meshgrid(np.arange(16), np.arange(32), indexing="ij")
    across_width, across_height = np.cos(2 * np.pi * x / 32)[None], np.cos(2 * np.pi * y / 16)[None]
    assert len(radial_spectrum(across_width)) == 17
    assert int(np.argmax(radial_spectrum(across_width))) == 1
    assert int(np.argmax(radial_spectrum(across_height))) == 2


def test_removing_the_first_mode_across_the_width_is_seen():
    # The old binning (wavelengths per shorter side, rounded) put kx = ±1 of a 16 x 32 grid at 0.5,
    # rounded into the unscored bin 0: removing that mode gave spectrum error 0.
    rng = np.random.default_rng(4)
    field = rng.normal(size=(1, 16, 32))
    spectrum = np.fft.fft2(field)
    spectrum[:, 0, 1] = spectrum[:, 0, -1] = 0.0  # (ky, kx) = (0, ±1)
    removed = np.fft.ifft2(spectrum).real
    assert spectrum_error(removed, field) > 0.05
    assert spectrum_error(field, field) == 0.0
