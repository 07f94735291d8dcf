"""The analytic Gaussian denoiser, checked against dense linear algebra built independently here.

Reference values: the dense covariance is assembled pixel pair by pixel pair from the Matérn
closed form (fieldpaint.data.grf.matern_covariance) summed over periodic images; posteriors are
recomputed in the information (precision) form, an algebraically different route from the
covariance form under test.
"""

import math

import numpy as np
import pytest
import torch

from fieldpaint.data.grf import matern_covariance
from fieldpaint.diffusion.samplers import model_denoiser
from fieldpaint.diffusion.schedule import Schedule, make_schedule
from fieldpaint.models.gaussian import GaussianDenoiser, conditional_denoiser, periodic_matern_spectrum

H, W = 6, 8
NU, ELL = 1.5, 2.0


def dense_periodic_covariance(h: int, w: int, nu: float, ell: float, images: int = 12) -> np.ndarray:
    """Σ[p, q] = Σ_{n,m} k(|r_p - r_q + (n h, m w)|), rescaled to unit diagonal, pair by pair."""
    ys, xs = np.divmod(np.arange(h * w), w)
    dy = ys[None, :] - ys[:, None]
    dx = xs[None, :] - xs[:, None]
    sigma = np.zeros((h * w, h * w))
    for n in range(-images, images + 1):
        for m in range(-images, images + 1):
            sigma += matern_covariance(np.hypot(dy + n * h, dx + m * w), nu, ell)
    return sigma / sigma[0, 0]


@pytest.fixture(scope="module")
def prior() -> GaussianDenoiser:
    return GaussianDenoiser.matern(H, W, nu=NU, length_scale=ELL)


@pytest.fixture(scope="module")
def sigma() -> torch.Tensor:
    return torch.from_numpy(dense_periodic_covariance(H, W, NU, ELL))


def test_fourier_covariance_equals_dense_periodic_covariance(prior, sigma):
    cov = prior.covariance_matrix()
    assert cov.shape == (H * W, H * W)
    torch.testing.assert_close(cov, sigma, rtol=0, atol=1e-10)
    # ...and the spectrum really diagonalises it: Σ e_p = F⁻¹[λ F e_p] for every unit vector.
    basis = torch.eye(H * W, dtype=torch.float64).reshape(H * W, H, W)
    applied = torch.fft.ifft2(prior.spectrum * torch.fft.fft2(basis)).real.reshape(H * W, H * W)
    torch.testing.assert_close(applied, sigma, rtol=0, atol=1e-10)
    assert torch.linalg.eigvalsh(sigma).min() > 0  # a valid covariance


def test_wraparound_matern_is_not_a_covariance_but_the_periodised_one_is():
    """Why the kernel is periodised: wrap-around distances give negative eigenvalues on 8x16."""
    dy = np.minimum(np.arange(8), 8 - np.arange(8))[:, None]
    dx = np.minimum(np.arange(16), 16 - np.arange(16))[None, :]
    wrapped = np.fft.fft2(matern_covariance(np.hypot(dy, dx), 1.5, 3.0)).real
    assert wrapped.min() < -0.5
    assert periodic_matern_spectrum(8, 16, 1.5, 3.0).min() > 0


@pytest.mark.parametrize("t", [0, 300, 700, 999])
def test_denoiser_equals_dense_posterior_mean(prior, sigma, t):
    schedule = make_schedule("cosine", 1000)
    ab = schedule.alphas_cumprod[t].item()
    x_t = torch.randn(3, 2, H, W, dtype=torch.float64)
    gain = math.sqrt(ab) * sigma @ torch.linalg.inv(ab * sigma + (1 - ab) * torch.eye(H * W, dtype=torch.float64))
    expected = (x_t.reshape(3, 2, H * W) @ gain.T).reshape(x_t.shape)  # E[x0|x_t] = √ᾱ Σ (ᾱΣ + (1-ᾱ)I)⁻¹ x_t
    got = prior.denoise(x_t, torch.full((3,), t), schedule)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def test_denoiser_is_identity_as_alpha_bar_tends_to_one(prior):
    schedule = Schedule(torch.tensor([1e-12, 0.5], dtype=torch.float64),
                        torch.tensor([1 - 1e-12, 0.5], dtype=torch.float64))
    x_t = torch.randn(2, 1, H, W, dtype=torch.float64)
    # |1 - √ᾱλ/(ᾱλ + 1-ᾱ)| <= (1-ᾱ)/(ᾱ min λ) + (1-√ᾱ) per frequency: below 1e-9 here.
    assert 1e-12 / prior.spectrum.min().item() < 1e-9
    torch.testing.assert_close(prior.denoise(x_t, torch.zeros(2, dtype=torch.long), schedule), x_t,
                               rtol=0, atol=1e-9)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_forward_is_a_network_output_that_model_denoiser_inverts(prediction):
    schedule = make_schedule("cosine", 1000)
    prior = GaussianDenoiser.matern(H, W, nu=NU, length_scale=ELL, schedule=schedule, prediction=prediction)
    x_t = torch.randn(4, 1, H, W, dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 900])
    wrapped = model_denoiser(prior, schedule, prediction)
    torch.testing.assert_close(wrapped(x_t, t), prior.denoise(x_t, t, schedule), rtol=1e-9, atol=1e-9)
    assert wrapped.calls == 1


def test_prior_samples_have_the_covariance(prior, sigma):
    x = prior.sample(20000, 1, torch.Generator().manual_seed(0)).reshape(20000, -1)
    empirical = x.T @ x / x.shape[0]
    # Monte-Carlo error of each entry ≈ √2/√20000 = 0.01 (unit variances): 0.05 is 5 standard errors.
    assert (empirical - sigma).abs().max() < 0.05


def _random_mask(b: int, fraction_observed: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, 1, H, W, generator=g) < fraction_observed).float()


@pytest.mark.parametrize("sigma_y", [0.0, 0.3])
def test_posterior_matches_the_information_form(prior, sigma, sigma_y):
    obs = prior.sample(2, 2, torch.Generator().manual_seed(1))
    mask = _random_mask(2, 0.3, seed=2)
    mean, std = prior.posterior(obs, mask, sigma_y)
    precision = torch.linalg.inv(sigma)
    for b in range(2):
        o = mask[b, 0].reshape(-1) > 0.5
        h = ~o
        for c in range(2):
            y = obs[b, c].reshape(-1)
            if sigma_y == 0.0:  # hidden | observed: mean -Q_HH⁻¹ Q_HO y_O, covariance Q_HH⁻¹
                q_hh = precision[h][:, h]
                cov_h = torch.linalg.inv(q_hh)
                mean_h = -cov_h @ precision[h][:, o] @ y[o]
                torch.testing.assert_close(mean[b, c].reshape(-1)[h], mean_h, rtol=1e-7, atol=1e-8)
                torch.testing.assert_close(std[b, c].reshape(-1)[h], cov_h.diagonal().sqrt(), rtol=1e-7, atol=1e-8)
                assert torch.equal(mean[b, c].reshape(-1)[o], y[o]) and bool((std[b, c].reshape(-1)[o] == 0).all())
            else:  # Cov = (Σ⁻¹ + P/σ²)⁻¹, mean = Cov P y / σ², P = diag(observed)
                p = torch.diag(o.double())
                cov = torch.linalg.inv(precision + p / sigma_y**2)
                torch.testing.assert_close(mean[b, c].reshape(-1), cov @ (p @ y) / sigma_y**2, rtol=1e-7, atol=1e-8)
                torch.testing.assert_close(std[b, c].reshape(-1), cov.diagonal().sqrt(), rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("sigma_y", [0.0, 0.2])
def test_conditional_denoiser_matches_dense_joint_gaussian(prior, sigma, sigma_y):
    """E[x0 | x_t, y] from the joint covariance of (x0; x_t, y_O), without the posterior shortcut."""
    schedule = make_schedule("cosine", 1000)
    obs = prior.sample(1, 1, torch.Generator().manual_seed(3)).expand(3, -1, -1, -1)
    mask = _random_mask(1, 0.4, seed=4).expand(3, -1, -1, -1)
    x_t = torch.randn(3, 1, H, W, dtype=torch.float64)
    t = torch.tensor([50, 400, 950])
    got = conditional_denoiser(prior, obs, mask, schedule, sigma_y)(x_t, t)
    o = mask[0, 0].reshape(-1) > 0.5
    n, k = H * W, int(o.sum())
    for b in range(3):
        ab = schedule.alphas_cumprod[t[b]].item()
        a = math.sqrt(ab)
        cov_z = torch.zeros(n + k, n + k, dtype=torch.float64)
        cov_z[:n, :n] = ab * sigma + (1 - ab) * torch.eye(n, dtype=torch.float64)
        cov_z[:n, n:] = a * sigma[:, o]
        cov_z[n:, :n] = a * sigma[o, :]
        cov_z[n:, n:] = sigma[o][:, o] + sigma_y**2 * torch.eye(k, dtype=torch.float64)
        cross = torch.cat([a * sigma, sigma[:, o]], dim=1)  # Cov(x0, z)
        z = torch.cat([x_t[b, 0].reshape(-1), obs[b, 0].reshape(-1)[o]])
        expected = cross @ torch.linalg.solve(cov_z, z)
        torch.testing.assert_close(got[b, 0].reshape(-1), expected, rtol=1e-6, atol=1e-7)
