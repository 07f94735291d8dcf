"""The analytic denoiser of a stationary Gaussian prior on a periodic grid: the samplers' test oracle.

Prior: each channel of x_0 is an independent N(0, Σ) field on the H x W torus, Σ block-circulant, so
Σ = Fᴴ diag(λ) F with F the unitary 2-D DFT and λ = FFT2(c), c the covariance between pixel (0, 0)
and every other pixel (the eigenvalues of a circulant are the DFT of its first column). With
x_t = √ᾱ x_0 + √(1-ᾱ) ε (Ho et al. 2020, eq. 4) the posterior mean is linear and diagonal in
Fourier space (the Wiener filter):

    E[x_0 | x_t] = √ᾱ Σ (ᾱ Σ + (1-ᾱ) I)⁻¹ x_t = F⁻¹[ √ᾱ λ / (ᾱ λ + 1 - ᾱ) · F x_t ]

A Matérn kernel on the torus is PERIODISED, summed over its periodic images and rescaled to
c(0) = variance: c(d) ∝ Σ_{n,m} k(|d + (nH, mW)|). It is not evaluated at wrap-around distances,
which do not give a covariance on small tori (the DFT has negative values, e.g. min λ = -0.69
against max 39.8 on 8x16, ν = 1.5, ℓ = 3 px); the periodised kernel's DFT is an aliased sum of
the Matérn spectral density and so never negative (Bochner, Poisson summation).

`posterior` and `conditional_denoiser` condition on observed pixels by dense linear algebra
(float64, (HW)² memory): tiny grids only.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from fieldpaint.data.grf import matern_covariance
from fieldpaint.diffusion.schedule import Prediction, Schedule, eps_from_x0, v_target

KERNEL_CUTOFF = 1e-17  # images of the kernel beyond the distance where k(r) < this x variance are dropped


def _cutoff_radius(nu: float, length_scale: float, variance: float) -> float:
    """A distance beyond which the Matérn kernel is below KERNEL_CUTOFF · variance (doubling search)."""
    r = length_scale
    while matern_covariance(np.array(r), nu, length_scale, variance) > KERNEL_CUTOFF * variance:
        r *= 2
    return r


def periodic_matern_kernel(height: int, width: int, nu: float, length_scale: float,
                           variance: float = 1.0) -> np.ndarray:
    """c[dy, dx] ∝ Σ_{n,m} k(√((dy + nH)² + (dx + mW)²)), (H, W) float64: the Matérn covariance
    (scikit-learn's parametrisation, lengths in pixels) summed over its images on the H x W torus,
    rescaled so that the marginal variance c[0, 0] is `variance`."""
    radius = _cutoff_radius(nu, length_scale, variance)
    ny, nx = math.ceil(radius / height) + 1, math.ceil(radius / width) + 1
    dy = np.arange(height, dtype=np.float64)[:, None]
    dx = np.arange(width, dtype=np.float64)[None, :]
    c = np.zeros((height, width))
    for n in range(-ny, ny + 1):
        for m in range(-nx, nx + 1):
            c += matern_covariance(np.hypot(dy + n * height, dx + m * width), nu, length_scale, variance)
    return c * (variance / c[0, 0])


def periodic_matern_spectrum(height: int, width: int, nu: float, length_scale: float,
                             variance: float = 1.0) -> torch.Tensor:
    """λ = FFT2(c) of `periodic_matern_kernel`, (H, W) float64, non-negative up to round-off."""
    lam = np.fft.fft2(periodic_matern_kernel(height, width, nu, length_scale, variance)).real
    return torch.from_numpy(np.clip(lam, 0.0, None))


def _alpha_bar(schedule: Schedule, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ᾱ_t, 1-ᾱ_t) as float64 (B, 1, 1, 1) on like's device."""
    ac = schedule.alphas_cumprod.to(like.device)[t.to(like.device).long()].reshape(-1, 1, 1, 1)
    return ac, 1 - ac


class GaussianDenoiser(nn.Module):
    """Exact E[x_0 | x_t] for x_0 ~ N(0, Fᴴ diag(λ) F) per channel on the periodic H x W grid.

    Usable wherever a trained network is: `forward(x_t, t, cond=None)` returns ε̂ or v̂ (per
    `prediction`) for the `schedule` given at construction.
    """

    def __init__(self, spectrum: torch.Tensor, schedule: Schedule | None = None,
                 prediction: Prediction = "eps") -> None:
        super().__init__()
        if spectrum.ndim != 2 or bool((spectrum < 0).any()):
            raise ValueError("spectrum must be an (H, W) tensor of non-negative eigenvalues")
        if prediction not in ("eps", "v"):
            raise ValueError(f"unknown prediction target {prediction!r}; choose 'eps' or 'v'")
        self.register_buffer("spectrum", spectrum.to(torch.float64))  # λ, (H, W)
        self.schedule, self.prediction = schedule, prediction

    @classmethod
    def matern(cls, height: int, width: int, *, nu: float = 1.5, length_scale: float = 3.0,
               variance: float = 1.0, schedule: Schedule | None = None,
               prediction: Prediction = "eps") -> GaussianDenoiser:
        """The periodised Matérn prior (see the module docstring); lengths in pixels."""
        return cls(periodic_matern_spectrum(height, width, nu, length_scale, variance), schedule, prediction)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.spectrum.shape)

    def _filter(self, x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        """F⁻¹[gain · F x] over the last two axes; gain (..., H, W) float64, the result in x's dtype."""
        y = torch.fft.ifft2(gain * torch.fft.fft2(x.to(torch.float64))).real
        return y.to(x.dtype)

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, schedule: Schedule) -> torch.Tensor:
        """x̂_0 = F⁻¹[√ᾱ λ / (ᾱ λ + 1 - ᾱ) · F x_t], x_t (B, C, H, W), t (B,)."""
        ac, one_minus = _alpha_bar(schedule, t, x_t)
        lam = self.spectrum.to(x_t.device)
        return self._filter(x_t, ac.sqrt() * lam / (ac * lam + one_minus))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """ε̂ or v̂ of the exact x̂_0, like a network trained for `prediction`."""
        if self.schedule is None:
            raise ValueError("GaussianDenoiser.forward needs the schedule given at construction")
        ac = self.schedule.alphas_cumprod
        x0 = self.denoise(x_t, t, self.schedule)
        eps = eps_from_x0(x_t, t, x0, ac)
        return eps if self.prediction == "eps" else v_target(x0, eps, t, ac)

    def covariance_matrix(self) -> torch.Tensor:
        """Dense Σ (HW, HW) float64, pixels in row-major order: Σ[p, q] = c[(y_q - y_p) mod H,
        (x_q - x_p) mod W] with c = F⁻¹ λ (the kernel back from the spectrum)."""
        h, w = self.shape
        c = torch.fft.ifft2(self.spectrum.cpu()).real  # (H, W)
        y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        y, x = y.reshape(-1), x.reshape(-1)
        return c[(y[None, :] - y[:, None]) % h, (x[None, :] - x[:, None]) % w]

    def sample(self, n: int, channels: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        """n exact prior draws x_0 = Σ^{1/2} z = F⁻¹[√λ · F z], z ~ N(0, I): (n, channels, H, W) float64."""
        z = torch.randn((n, channels, *self.shape), generator=generator, dtype=torch.float64)
        return self._filter(z, self.spectrum.cpu().sqrt())

    def posterior(self, obs: torch.Tensor, mask: torch.Tensor,
                  sigma_y: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact posterior mean and std of x_0 given y = x_0 (+ σ_y n) at the observed pixels,
        (B, C, H, W) float64 each: μ = Σ_{·O} S⁻¹ y_O, Cov = Σ - Σ_{·O} S⁻¹ Σ_{O·}, S = Σ_OO + σ_y² I."""
        means, covs, row = _dense_posteriors(self.covariance_matrix(), obs, mask, sigma_y)
        std = torch.diagonal(covs, dim1=-2, dim2=-1).clamp(min=0).sqrt()
        return means[row].reshape(obs.shape), std[row].reshape(obs.shape)


def _dense_posteriors(sigma: torch.Tensor, obs: torch.Tensor, mask: torch.Tensor,
                      sigma_y: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gaussian conditioning per distinct (observed values, mask) row of the B x C (case, channel)
    pairs: means (U, N), covariances (U, N, N) and the row of each pair, (B, C) long."""
    b, c = obs.shape[:2]
    n = sigma.shape[0]
    known = (mask.detach().cpu() > 0.5).expand(obs.shape).reshape(b * c, n)
    y = torch.where(known, obs.detach().cpu().to(torch.float64).reshape(b * c, n), 0.0)
    rows, inverse = torch.unique(torch.cat([known.double(), y], dim=1), dim=0, return_inverse=True)
    means, covs = [], []
    for row in rows:  # an ensemble of one case conditions once, not once per member
        o = row[:n].nonzero().squeeze(1)
        y_o = row[n:][o]
        s_oo = sigma[o][:, o] + sigma_y ** 2 * torch.eye(o.numel(), dtype=torch.float64)
        gain = torch.linalg.solve(s_oo, sigma[o]).T  # Σ_{·O} S⁻¹, (N, |O|)
        mean, cov = gain @ y_o, sigma - gain @ sigma[o]
        if sigma_y == 0.0:  # exact where observed; the solve leaves round-off there
            mean[o], cov[o], cov[:, o] = y_o, 0.0, 0.0
        means.append(mean)
        covs.append(cov)
    return torch.stack(means), torch.stack(covs), inverse.reshape(b, c)


def conditional_denoiser(prior: GaussianDenoiser, obs: torch.Tensor, mask: torch.Tensor, schedule: Schedule,
                         sigma_y: float = 0.0) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Exact E[x_0 | x_t, y] for the Gaussian prior observed at the mask: the oracle of a
    conditional (concat/FiLM) model, for tiny grids.

    Given y, x_0 ~ N(μ_y, Σ_y) (`posterior`), and x_t depends on y only through x_0, so
    E[x_0 | x_t, y] = μ_y + √ᾱ Σ_y (ᾱ Σ_y + (1-ᾱ) I)⁻¹ (x_t - √ᾱ μ_y), computed with Σ_y = U diag(d) Uᵀ.
    The returned denoiser takes x_t of obs's batch size.
    """
    means, covs, row = _dense_posteriors(prior.covariance_matrix(), obs, mask, sigma_y)
    d, u = torch.linalg.eigh(covs)
    means, d, u = means[row], d.clamp(min=0)[row], u[row]  # (B, C, N), (B, C, N), (B, C, N, N)

    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ac, one_minus = (v.reshape(-1, 1, 1).cpu() for v in _alpha_bar(schedule, t, x_t))  # (B, 1, 1)
        r = x_t.detach().cpu().to(torch.float64).reshape(means.shape) - ac.sqrt() * means  # (B, C, N)
        gain = ac.sqrt() * d / (ac * d + one_minus)  # (B, C, N)
        coords = torch.einsum("bcnk,bcn->bck", u, r)  # Uᵀ r
        x0 = means + torch.einsum("bcnk,bck->bcn", u, gain * coords)
        return x0.reshape(x_t.shape).to(device=x_t.device, dtype=x_t.dtype)

    return denoise
