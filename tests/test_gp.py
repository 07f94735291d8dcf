"""Tests for the Gaussian-process baseline (fieldpaint.baselines.gp).

Independent expectations: scikit-learn's kernels, GaussianProcessRegressor predictions and log
marginal likelihoods (and its own optimiser's optimum); R&W (2006) sec. 2.7 (a constant mean
with a vague prior is the limit of adding a large constant kernel); finite differences; the
closed-form Gaussian CRPS of Gneiting & Raftery (2007, eq. 21) for calibration on Matérn GRFs,
where the generator's own kernel gives the optimal predictor.
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.stats import norm
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, Matern, WhiteKernel

from fieldpaint.baselines import gp
from fieldpaint.baselines.interp import InterpReconstructor
from fieldpaint.data.grf import generate_grf, sample_matern_grf
from fieldpaint.data.masks import make_masks
from fieldpaint.errors import FieldpaintError

FAMILIES = [("matern", 0.5), ("matern", 1.5), ("matern", 2.5), ("rbf", math.inf)]


def gaussian_crps(mean: np.ndarray, std: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """CRPS of N(mean, std^2) at truth (Gneiting & Raftery 2007, eq. 21)."""
    z = (truth - mean) / std
    return std * (z * (2 * norm.cdf(z) - 1) + 2 * norm.pdf(z) - 1 / math.sqrt(math.pi))


def sk_kernel(family: str, nu: float, length=(3.0, 4.0), variance=1.0, noise=1e-2,
              fixed: bool = True, length_bounds=(0.5, 32.0)):
    """scikit-learn's ConstantKernel * Matern/RBF (ARD) + WhiteKernel."""
    bounds = "fixed" if fixed else None
    shape = RBF(list(length), bounds or length_bounds) if family == "rbf" else \
        Matern(list(length), bounds or length_bounds, nu=nu)
    return ConstantKernel(variance, bounds or (1e-5, 1e5)) * shape + \
        WhiteKernel(noise, bounds or (1e-5, 10.0))


def grf(n: int, height: int, width: int, *, length_scale: float = 3.0, seed: int = 0,
        coverage: float = 0.6, mask_seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(sample_matern_grf(n, 1, height, width, nu=1.5,
                                           length_scale=length_scale, seed=seed)).double()
    mask = torch.from_numpy(make_masks("random", coverage, n, height, width, seed=mask_seed))
    return x, mask


def pixels(flags: np.ndarray) -> np.ndarray:
    return np.argwhere(flags).astype(np.float64)


# ------------------------------------------------------------------------------------------
# kernels, likelihood and its gradient


@pytest.mark.parametrize("family, nu", FAMILIES)
def test_kernel_matrix_matches_sklearn(family: str, nu: float) -> None:
    a, b = np.random.default_rng(0).uniform(0, 20, (2, 30, 2))
    spec = gp.Kernel(family, nu, (2.5, 6.0), 1.7)
    expected = sk_kernel(family, nu, (2.5, 6.0), 1.7).k1(a, b)  # without the white noise
    got = gp.kernel_matrix(torch.from_numpy(a), torch.from_numpy(b), spec).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("family, nu", FAMILIES)
def test_radial_derivative_is_minus_dc_dr_over_r(family: str, nu: float) -> None:
    r = torch.linspace(0.05, 6.0, 50, dtype=torch.float64)
    h = 1e-6
    dc = (gp.correlation(r + h, family, nu) - gp.correlation(r - h, family, nu)) / (2 * h)
    torch.testing.assert_close(gp.radial_derivative(r, family, nu), -dc / r, rtol=1e-7,
                               atol=1e-10)


def _noisy_covariance(points: np.ndarray, spec: gp.Kernel) -> torch.Tensor:
    p = torch.from_numpy(points)
    return gp.kernel_matrix(p, p, spec) + spec.noise * torch.eye(len(points), dtype=torch.float64)


@pytest.mark.parametrize("family, nu", FAMILIES)
def test_log_marginal_likelihood_matches_sklearn(family: str, nu: float) -> None:
    x, mask = grf(1, 10, 12)
    points, y = pixels(mask[0, 0].numpy() > 0), x[0, 0][mask[0, 0] > 0].numpy()
    spec = gp.Kernel(family, nu, (3.0, 4.0), 1.3, 0.05)
    model = GaussianProcessRegressor(sk_kernel(family, nu, (3.0, 4.0), 1.3, 0.05),
                                     optimizer=None, alpha=0.0).fit(points, y)
    got = gp.log_marginal_likelihood(_noisy_covariance(points, spec), torch.from_numpy(y))
    assert float(got) == pytest.approx(model.log_marginal_likelihood_value_, rel=1e-10)
    # padded to a larger batch (identity rows and columns, zero data) it is unchanged
    n = len(y)
    K = torch.eye(n + 5, dtype=torch.float64)
    K[:n, :n] = _noisy_covariance(points, spec)
    padded = torch.cat([torch.from_numpy(y), torch.zeros(5, dtype=torch.float64)])
    present = torch.arange(n + 5) < n
    assert float(gp.log_marginal_likelihood(K, padded, present)) == pytest.approx(float(got),
                                                                                 rel=1e-12)


def test_profile_likelihood_is_the_maximum_over_mean_and_variance() -> None:
    """profile_lml(q, .) equals eq. 2.30 at (beta_hat, s2 = q / n) and beats other (beta, s2)."""
    x, mask = grf(1, 10, 12, seed=4)
    points, y = pixels(mask[0, 0].numpy() > 0), x[0, 0][mask[0, 0] > 0] + 2.0
    R = _noisy_covariance(points, gp.Kernel("matern", 1.5, (2.0, 3.0), 1.0, 1e-3))
    present = torch.ones(len(y), dtype=torch.bool)
    q, half_logdet, beta, _, _ = gp.profile_terms(R[None], y[None], present[None])
    n = torch.tensor(float(len(y)), dtype=torch.float64)
    best = float(gp.profile_lml(q, half_logdet, n))
    s2 = float(q) / len(y)
    full = lambda b, v: float(gp.log_marginal_likelihood(v * R, y - b))  # noqa: E731
    assert full(float(beta), s2) == pytest.approx(best, rel=1e-12)
    for b, v in [(float(beta) + 0.05, s2), (float(beta), 1.2 * s2), (float(beta), 0.8 * s2),
                 (float(y.mean()), s2)]:
        assert full(b, v) < best


@pytest.mark.parametrize("family, nu", FAMILIES)
def test_lml_gradient_matches_finite_differences(family: str, nu: float) -> None:
    """R&W eq. 5.9 for the profile LML, along log ly, log lx and log g."""
    x, mask = grf(1, 10, 12, seed=2)
    pts = torch.from_numpy(pixels(mask[0, 0].numpy() > 0))
    y = x[0, 0][mask[0, 0] > 0][None]
    present = torch.ones_like(y, dtype=torch.bool)
    dy2 = (pts[:, None, 0] - pts[None, :, 0]).square()
    dx2 = (pts[:, None, 1] - pts[None, :, 1]).square()

    def lml(theta: torch.Tensor, grad: bool = False):
        ly, lx, g = theta.exp().tolist()
        spec = gp.Kernel(family, nu, (ly, lx), 1.0, g)
        R = _noisy_covariance(pts.numpy(), spec)[None]
        q, half_logdet, _, a, L = gp.profile_terms(R, y, present)
        value = gp.profile_lml(q, half_logdet, torch.tensor(float(y.shape[1])))
        if not grad:
            return float(value)
        r = (dy2 / ly**2 + dx2 / lx**2).clamp_min(1e-30).sqrt()
        F = gp.radial_derivative(r, family, nu)[None]
        quad, trace = gp.lml_gradient_terms(a, L, F, [dy2[None] / ly**2, dx2[None] / lx**2],
                                            torch.full_like(y, g))
        return (0.5 * y.shape[1] / q[:, None] * quad - 0.5 * trace)[0]

    theta = torch.tensor([math.log(2.5), math.log(3.5), math.log(0.02)], dtype=torch.float64)
    h = 1e-5
    numeric = [(lml(theta + h * e) - lml(theta - h * e)) / (2 * h)
               for e in torch.eye(3, dtype=torch.float64)]
    torch.testing.assert_close(lml(theta, grad=True), torch.tensor(numeric, dtype=torch.float64),
                               rtol=1e-5, atol=1e-6)


def test_gather_table_reads_each_rows_own_table() -> None:
    """gather_table against its definition, table[which[j], idx[j]], element by element: with
    `which` (rows sharing a table, in any order) and without it (row j reads table j)."""
    g = torch.Generator().manual_seed(0)
    table = torch.randn(5, 37, dtype=torch.float64, generator=g)
    idx = torch.randint(0, 37, (4, 6, 6), generator=g)
    which = torch.tensor([3, 0, 3, 4])
    for rows, got in ((which, gp.gather_table(table, idx, which)), (torch.arange(4), gp.gather_table(table, idx))):
        expected = torch.tensor([[[float(table[rows[j], idx[j, a, b]]) for b in range(6)] for a in range(6)]
                                 for j in range(4)], dtype=torch.float64)
        assert torch.equal(got, expected)


def test_jitter_rescues_singular_matrices() -> None:
    points = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 2.0], [3.0, 1.0]], dtype=torch.float64)
    duplicated = gp.kernel_matrix(points, points, gp.Kernel("matern", 1.5, (2.0, 2.0)))
    assert torch.linalg.cholesky_ex(duplicated).info > 0  # singular: two identical rows
    grid = torch.cartesian_prod(*(torch.arange(12.0, dtype=torch.float64),) * 2)
    smooth = gp.kernel_matrix(grid, grid, gp.Kernel("rbf", math.inf, (6.0, 6.0)))  # no noise
    assert torch.linalg.cholesky_ex(smooth).info > 0
    for K in (duplicated, smooth):
        L, jitter = gp.cholesky_jitter(K[None])
        assert 1e-8 <= float(jitter) <= 1e-2
        scale = float(K.diagonal().mean())
        expected = K + float(jitter) * scale * torch.eye(len(K), dtype=torch.float64)
        torch.testing.assert_close(L[0] @ L[0].T, expected, rtol=0, atol=1e-10)
        assert math.isfinite(float(gp.log_marginal_likelihood(K, torch.ones(len(K),
                                                                             dtype=K.dtype))))
    # a noise-free RBF GP on a dense grid predicts finite values
    x, mask = grf(1, 12, 12, coverage=0.2)
    mean, std = gp.gp_predict(x, mask, None, gp.Kernel("rbf", math.inf, (6.0, 6.0), noise=0.0))
    assert torch.isfinite(mean).all() and torch.isfinite(std).all()


# ------------------------------------------------------------------------------------------
# prediction


@pytest.mark.parametrize("family, nu", FAMILIES)
def test_prediction_matches_sklearn(family: str, nu: float) -> None:
    """Simple kriging (known mean) is sklearn's GPR on y - mean with the same fixed kernel."""
    x, mask = grf(1, 12, 16, seed=3)
    observed = mask[0, 0].numpy() > 0
    spec = gp.Kernel(family, nu, (2.5, 3.5), 1.3, 0.02, mean=0.4)
    model = GaussianProcessRegressor(sk_kernel(family, nu, (2.5, 3.5), 1.3, 0.02),
                                     optimizer=None, alpha=0.0)
    model.fit(pixels(observed), x[0, 0].numpy()[observed] - 0.4)
    mu, sd = model.predict(pixels(~observed), return_std=True)
    mean, std = gp.gp_predict(x, mask, None, spec, mean="fixed")
    np.testing.assert_allclose(mean[0, 0].numpy()[~observed], mu + 0.4, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(std[0, 0].numpy()[~observed], sd, rtol=1e-6)
    # observed pixels are returned exactly, with no uncertainty
    assert torch.equal(mean[mask > 0], x[mask > 0]) and (std[mask > 0] == 0).all()


def test_ordinary_kriging_is_the_vague_prior_limit() -> None:
    """R&W sec. 2.7: a GLS constant mean equals a zero-mean GP with a constant kernel c -> inf."""
    x, mask = grf(1, 12, 16, seed=5)
    x = x + 0.7
    observed = mask[0, 0].numpy() > 0
    c = 1e5
    model = GaussianProcessRegressor(ConstantKernel(c, "fixed") +
                                     sk_kernel("matern", 1.5, (2.5, 3.5), 1.3, 0.02),
                                     optimizer=None, alpha=0.0)
    model.fit(pixels(observed), x[0, 0].numpy()[observed])
    mu, sd = model.predict(pixels(~observed), return_std=True)
    mean, std = gp.gp_predict(x, mask, None, gp.Kernel("matern", 1.5, (2.5, 3.5), 1.3, 0.02),
                              mean="gls")
    np.testing.assert_allclose(mean[0, 0].numpy()[~observed], mu, rtol=1e-5)
    np.testing.assert_allclose(std[0, 0].numpy()[~observed], sd, rtol=1e-5)


def test_batched_prediction_equals_one_field_at_a_time() -> None:
    x, mask = grf(3, 12, 16, seed=6)
    valid = torch.ones(3, 1, 12, 16)
    valid[1, :, 4:8, 5:9] = 0  # land in one field: different observation counts
    kernels = [[gp.Kernel("matern", 1.5, (2.0, 3.0), 1.1, 1e-3, 0.2)],
               [gp.Kernel("matern", 0.5, (4.0, 2.0), 0.7, 1e-2, -0.1)],
               [gp.Kernel("rbf", math.inf, (3.0, 3.0), 1.0, 1e-2, 0.0)]]
    mean, std = gp.gp_predict(x, mask, valid, kernels)
    for b in range(3):
        one = gp.gp_predict(x[b:b + 1], mask[b:b + 1], valid[b:b + 1], kernels[b])
        torch.testing.assert_close(mean[b:b + 1], one[0], rtol=0, atol=1e-10)
        torch.testing.assert_close(std[b:b + 1], one[1], rtol=0, atol=1e-10)


def test_land_pixels_are_never_observations() -> None:
    x, mask = grf(2, 12, 16, seed=7, coverage=0.7)
    valid = torch.ones(2, 1, 12, 16)
    valid[:, :, 3:7, 4:10] = 0
    land = (valid == 0).expand_as(x)
    claims_land = torch.maximum(mask, 1 - valid)  # the mask says land is observed
    poisoned = torch.where(land, torch.full_like(x, 1e6), x)
    clean = gp.GPReconstructor("per-field", nu=1.5).reconstruct(x, mask, valid)
    dirty = gp.GPReconstructor("per-field", nu=1.5).reconstruct(poisoned, claims_land, valid)
    torch.testing.assert_close(dirty.mean, clean.mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(dirty.std, clean.std, rtol=0, atol=1e-12)
    assert (clean.mean[land] == 0).all() and (clean.std[land] == 0).all()
    assert (clean.std[~land & (mask.expand_as(x) == 0)] > 0).all()


def test_four_thousand_observations_work_exactly() -> None:
    """64 x 128 at 50 % coverage (4,096 observed pixels), one exact Cholesky, in seconds."""
    x = torch.from_numpy(sample_matern_grf(1, 1, 64, 128, nu=1.5, length_scale=8.0, seed=0))
    mask = torch.from_numpy(make_masks("random", 0.5, 1, 64, 128, seed=0))
    spec = gp.Kernel("matern", 1.5, (8.0, 8.0), 1.0, 1e-6)
    start = time.perf_counter()
    mean, std = gp.gp_predict(x, mask, None, spec, mean="fixed")
    assert time.perf_counter() - start < 60.0  # ~5 s on an idle core; generous when shared
    observed = mask[0, 0].numpy() > 0
    assert observed.sum() == 4096
    # independent check at a few hidden pixels: sklearn's kernel and scipy's Cholesky
    points, targets = pixels(observed), pixels(~observed)[::409]
    kernel = sk_kernel("matern", 1.5, (8.0, 8.0), 1.0, 1e-6)
    factor = scipy.linalg.cho_factor(kernel(points))
    k_star = kernel.k1(points, targets)
    expected = k_star.T @ scipy.linalg.cho_solve(factor, x[0, 0].double().numpy()[observed])
    variance = 1.0 + 1e-6 - (k_star * scipy.linalg.cho_solve(factor, k_star)).sum(0)
    rows, cols = targets.astype(int).T
    np.testing.assert_allclose(mean[0, 0, rows, cols].numpy(), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(std[0, 0, rows, cols].numpy(), np.sqrt(variance), rtol=1e-3)


# ------------------------------------------------------------------------------------------
# fitting


@pytest.mark.parametrize("family, nu", FAMILIES)
def test_fit_reaches_sklearns_optimum(family: str, nu: float) -> None:
    """Our fitted hyperparameters score at least sklearn's own optimum (3 starts, L-BFGS-B)."""
    x, mask = grf(1, 12, 16, seed=1)
    x = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1),
                               dtype=torch.float64)
    observed = mask[0, 0].numpy() > 0
    model = GaussianProcessRegressor(sk_kernel(family, nu, (4.0, 4.0), 1.0, fixed=False),
                                     n_restarts_optimizer=2, random_state=0, alpha=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(pixels(observed), x[0, 0].numpy()[observed])
    fitted = gp.fit_gp(x, mask, None, family=family, nu=1.5 if family == "rbf" else nu,
                       estimate_mean=False)[0][0]
    # sklearn's noise floor is 1e-5 (absolute); ours is 1e-6 x variance
    theta = np.log([fitted.variance, *fitted.length_scale, max(fitted.noise, 1e-5)])
    ours, theirs = model.log_marginal_likelihood(theta), model.log_marginal_likelihood_value_
    assert ours >= theirs - 1e-3 * abs(theirs)


def test_fit_beats_the_true_kernel_on_its_own_likelihood() -> None:
    """Per field (GLS mean) and over a data set, the fit scores at least the generator's kernel."""
    x, mask = grf(3, 16, 16, length_scale=3.0, seed=8, coverage=0.5)
    truth = gp.Kernel("matern", 1.5, (3.0, 3.0), 1.0, 1e-6)

    def profile(b: int, spec: gp.Kernel) -> float:
        points = pixels(mask[b, 0].numpy() > 0)
        R = _noisy_covariance(points, spec) / spec.variance
        y = x[b, 0][mask[b, 0] > 0][None]
        q, half_logdet, *_ = gp.profile_terms(R[None], y, torch.ones_like(y, dtype=torch.bool))
        return q, half_logdet, y.shape[1]

    fitted = gp.fit_gp(x, mask, None, nu=1.5)
    for b in range(3):
        q, hl, n = profile(b, fitted[b][0])
        q0, hl0, _ = profile(b, truth)
        n = torch.tensor(float(n))
        assert float(gp.profile_lml(q, hl, n)) >= float(gp.profile_lml(q0, hl0, n)) - 1e-6
    # dataset mode: s2 and the correlation shared by all fields (sum of q, of log|R|, of n)
    shared = gp.fit_dataset_gp(x, mask, None, nu=1.5)[0]
    totals = [[sum(t) for t in zip(*(profile(b, spec) for b in range(3)))]
              for spec in (shared, truth)]
    (q, hl, n), (q0, hl0, _) = totals
    n = torch.tensor(float(n))
    assert float(gp.profile_lml(q, hl, n)) >= float(gp.profile_lml(q0, hl0, n)) - 1e-6
    assert shared.length_scale == pytest.approx((3.0, 3.0), rel=0.2)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_per_field_fit_recovers_the_length_scale(seed: int) -> None:
    x, mask = grf(1, 24, 24, length_scale=4.0, seed=seed, coverage=0.5, mask_seed=seed)
    fitted = gp.fit_gp(x, mask, None, nu=1.5)[0][0]
    assert fitted.length_scale == pytest.approx((4.0, 4.0), rel=0.3)
    assert 1e-6 <= fitted.noise / fitted.variance <= 1e-2  # noise-free data: a tiny nugget


def test_fit_subsamples_above_max_points_and_is_batch_independent() -> None:
    x, mask = grf(2, 12, 16, seed=9, coverage=0.3)  # 134 observed pixels each
    both = gp.fit_gp(x, mask, None, nu=2.5)
    for b in range(2):
        alone = gp.fit_gp(x[b:b + 1], mask[b:b + 1], None, nu=2.5)[0][0]
        assert alone.length_scale == pytest.approx(both[b][0].length_scale, rel=1e-5)
        assert alone.variance == pytest.approx(both[b][0].variance, rel=1e-5)
    small = gp.fit_gp(x, mask, None, nu=2.5, max_points=60, seed=3)
    again = gp.fit_gp(x, mask, None, nu=2.5, max_points=60, seed=3)
    assert small == again and small != both  # a seeded subset: reproducible, and different


# ------------------------------------------------------------------------------------------
# on a GRF: the oracle is optimal and calibrated


def test_oracle_beats_fitted_and_simple_baselines_and_is_calibrated() -> None:
    n, size = 6, 24
    x, mask = grf(n, size, size, length_scale=4.0, seed=11, coverage=0.8, mask_seed=5)
    _, _, attrs = generate_grf(1, 0, size, size, nu=1.5, length_scale=4.0)
    hidden = mask.expand_as(x) == 0
    oracle = gp.GPReconstructor.from_attrs(attrs).reconstruct(x, mask, None)
    fitted = gp.GPReconstructor("per-field").reconstruct(x, mask, None)
    mse = {"oracle": oracle.mean, "per-field": fitted.mean}
    for method in ("nearest", "linear"):
        mse[method] = InterpReconstructor(method).reconstruct(x, mask, None).mean
    mse = {k: float(((v - x)[hidden] ** 2).mean()) for k, v in mse.items()}
    assert mse["oracle"] < min(mse["per-field"], mse["nearest"], mse["linear"])
    mean, std, truth = (t[hidden].numpy() for t in (oracle.mean, oracle.std, x))
    crps = gaussian_crps(mean, std, truth).mean()
    rmse = math.sqrt(((mean - truth) ** 2).mean())
    # E[CRPS] = E[std] / sqrt(pi) for a calibrated Gaussian; ~ RMSE / sqrt(pi) when std ~ const
    assert crps / (std.mean() / math.sqrt(math.pi)) == pytest.approx(1.0, abs=0.1)
    assert crps / rmse == pytest.approx(1 / math.sqrt(math.pi), rel=0.1)
    assert ((truth - mean) / std).std() == pytest.approx(1.0, abs=0.1)


def test_oracle_kernel_is_rescaled_to_normalised_units() -> None:
    _, _, attrs = generate_grf(1, 0, 8, 8, nu=2.5, length_scale=5.0, variance=4.0)
    spec = gp.oracle_kernel(attrs, mean=0.5, std=2.0)
    assert (spec.family, spec.nu, spec.length_scale) == ("matern", 2.5, (5.0, 5.0))
    assert spec.variance == pytest.approx(1.0) and spec.mean == pytest.approx(-0.25)
    assert spec.noise <= 1e-7 * spec.variance
    _, _, rbf = generate_grf(1, 0, 8, 8, nu=math.inf, length_scale=2.0)
    assert gp.oracle_kernel(rbf).family == "rbf"
    recon = gp.GPReconstructor.from_attrs(attrs, stats=([0.5], [2.0]))
    assert recon.kernels == [spec] and recon.mean == "fixed"
    with pytest.raises(FieldpaintError, match="matern"):
        gp.oracle_kernel({"generator": "kolmogorov"})


def test_dataset_mode_uses_one_kernel_for_every_field() -> None:
    train, _ = grf(4, 16, 16, length_scale=3.0, seed=12)
    recon = gp.GPReconstructor("dataset", nu=1.5)
    with pytest.raises(FieldpaintError, match="fit_dataset"):
        recon.reconstruct(train, torch.ones(4, 1, 16, 16), None)
    kernels = recon.fit_dataset(train, None, 0.5, n_fields=3)
    assert len(kernels) == 1 and kernels[0].length_scale == pytest.approx((3.0, 3.0), rel=0.25)
    test, mask = grf(2, 16, 16, length_scale=3.0, seed=13, coverage=0.8)
    out = recon.reconstruct(test, mask, None)
    assert recon.mean == "fixed" and kernels[0].mean == 0.0  # the training set's mean
    expected = gp.gp_predict(test, mask, None, kernels, mean="fixed")
    torch.testing.assert_close(out.mean, expected[0])
    torch.testing.assert_close(out.std, expected[1])


@pytest.mark.parametrize("restarts", [0, -1, 1.5, True])
def test_restarts_below_one_are_a_one_line_error(restarts) -> None:
    """Zero optimisation starts used to end in a traceback inside the fit (an empty max())."""
    with pytest.raises(FieldpaintError, match="restarts"):
        gp.GPReconstructor("dataset", restarts=restarts)
