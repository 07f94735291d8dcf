"""The log marginal likelihood, its profiled form and its gradient (R&W = Rasmussen & Williams
2006, "Gaussian Processes for Machine Learning", eqs. 2.30, 5.8, 5.9; the concentrated likelihood
of Mardia & Marshall 1984)."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from fieldpaint.baselines.gp.kernels import cholesky_jitter

LOG_2PI = math.log(2.0 * math.pi)


def log_marginal_likelihood(K: torch.Tensor, y: torch.Tensor,
                            present: torch.Tensor | None = None) -> torch.Tensor:
    """log p(y | X) = -y'K^-1 y / 2 - log|K| / 2 - n log(2 pi) / 2 (R&W eq. 2.30, Algorithm 2.1).

    K (..., n, n) is the covariance of the observations (kernel + nugget); y (..., n) has the mean
    already subtracted. In a padded batch `present` (..., n) marks the real entries: padded rows
    and columns of K must be the identity and y zero there, so they add nothing. -inf where K
    cannot be factorised even with jitter.
    """
    L, jitter = cholesky_jitter(K)
    alpha = torch.cholesky_solve(y[..., None], L)[..., 0]
    n = y.shape[-1] if present is None else present.sum(-1).to(y.dtype)  # an int count would make it float32
    half_logdet = L.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    lml = -0.5 * (y * alpha).sum(-1) - half_logdet - 0.5 * n * LOG_2PI
    return torch.where(jitter.isnan(), -math.inf, lml)


def profile_terms(R: torch.Tensor, y: torch.Tensor, present: torch.Tensor,
                  estimate_mean: bool = True) -> tuple[torch.Tensor, ...]:
    """(q, log|R| / 2, beta, a, L) for K = s2 R with the constant mean profiled out.

    beta = 1'R^-1 y / 1'R^-1 1 is the GLS mean (0 unless estimate_mean), q = r'R^-1 r with
    r = y - beta, a = R^-1 r and L = chol(R). Maximising eq. 2.30 over s2 gives s2 = q / n and
    profile_lml(q, ., n). Padded entries as in log_marginal_likelihood; log|R| / 2 is NaN where
    R cannot be factorised even with jitter.
    """
    L, jitter = cholesky_jitter(R)
    h = present.to(R.dtype)
    y = y * h
    beta = y.new_zeros(y.shape[:-1])
    if estimate_mean:
        r_inv_h = torch.cholesky_solve(h[..., None], L)[..., 0]
        beta = (r_inv_h * y).sum(-1) / (r_inv_h * h).sum(-1)
    resid = (y - beta[..., None]) * h
    a = torch.cholesky_solve(resid[..., None], L)[..., 0]
    half_logdet = L.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return (resid * a).sum(-1), torch.where(jitter.isnan(), math.nan, half_logdet), beta, a, L


def lml_gradient_terms(a: torch.Tensor, L: torch.Tensor, F: torch.Tensor | None,
                       S: Sequence[torch.Tensor], D: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(a'dR_k a, tr(R^-1 dR_k)) for dR_k = F * S_k (elementwise; dR_k = S_k when F is None) and a
    last dR = diag(D).

    The profile LML's gradient along dR is (n / 2q) a'dR a - tr(R^-1 dR) / 2 (R&W eq. 5.9 at
    s2 = q / n; beta's own change drops out because it minimises q). (P, k) each.
    """
    r_inv = torch.cholesky_inverse(L)
    dot = lambda A, B: (A.flatten(1)[:, None, :] @ B.flatten(1)[:, :, None]).flatten()  # noqa: E731
    outer, r_inv_t = a[:, :, None] * a[:, None, :], r_inv.mT  # mT: LAPACK's order
    if F is not None:
        outer, r_inv_t = outer * F, r_inv_t * F
    quad = [dot(outer, s) for s in S] + [(a.square() * D).sum(-1)]
    trace = [dot(r_inv_t, s) for s in S] + [(r_inv.diagonal(dim1=-2, dim2=-1) * D).sum(-1)]
    return torch.stack(quad, -1), torch.stack(trace, -1)


def profile_lml(q: torch.Tensor, half_logdet: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Eq. 2.30 at s2 = q / n: -n (1 + log(2 pi q / n)) / 2 - log|R| / 2."""
    s2 = (q / n).clamp_min(1e-12)  # constant observations: q = 0
    return -0.5 * n * (1.0 + LOG_2PI + s2.log()) - half_logdet
