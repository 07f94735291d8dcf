"""Gaussian-process regression (kriging): the baseline the diffusion models must beat.

Each (field, channel) is an independent GP on its observed pixels, coordinates in pixels:

    y(x) = m + f(x) + eps,   f ~ GP(0, s2 k(|(x - x') / (ly, lx)|)),   eps ~ N(0, noise)

k is scikit-learn's Matérn (nu 0.5 / 1.5 / 2.5) or RBF, with one length scale per axis (ARD).

Mean. ``mean='gls'`` is ordinary kriging: the constant mean is unknown, estimated by generalised
least squares, beta = 1'K^-1 y / 1'K^-1 1, and its uncertainty is added to the predictive
variance (Rasmussen & Williams 2006, "R&W", sec. 2.7, eqs. 2.41-2.42 with a vague prior on beta).
``mean='fixed'`` is simple kriging with the known ``Kernel.mean`` (the oracle's choice).

Fitting. The hyperparameters maximise the log marginal likelihood (R&W eq. 2.30 = 5.8, gradient
eq. 5.9). beta and s2 have closed-form maximisers given (ly, lx, g = noise / s2) and are profiled
out (the concentrated likelihood; Mardia & Marshall 1984), leaving x = log(ly, lx, g) in a box:
l in [0.5, 2 max(H, W)] px, g in [1e-6, 10]. A coarse grid (isotropic l = 1, 2, 4, ... px, three
nuggets) screens starts with one Cholesky each; projected BFGS (bounds as in L-BFGS-B) runs from
the `restarts` best, all (field, channel, start) problems batched in float64, each with its own
line search. nu='auto' fits Matérn 1.5, then 0.5 and 2.5 warm-started from it, and keeps the
highest LML. Above ``max_points`` observations the hyperparameters are fitted on a random subset
of that many (1,500 points pin down three correlation parameters well); the prediction then
conditions on ALL observations with one exact Cholesky factorisation.

Predictive std is that of a new value y* = m + f* + eps (latent variance plus nugget): a hidden
pixel's truth is the same kind of quantity as the observed ones, so a fitted nugget is part of
what must be predicted. On noise-free data (GRFs) the fitted nugget sinks to its floor and this
is the latent std; ``include_noise=False`` gives the latent std.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

import numpy as np
import torch

from fieldpaint.data.masks import make_masks
from fieldpaint.errors import FieldpaintError
from fieldpaint.reconstruct import Reconstruction
from fieldpaint.runtime import torch_threads

Family = Literal["matern", "rbf"]
MeanMode = Literal["gls", "fixed"]
NUS = (0.5, 1.5, 2.5)
DTYPE = torch.float64
LOG_2PI = math.log(2.0 * math.pi)
# Relative jitters (x the mean diagonal) tried in turn when a Cholesky factorisation fails.
JITTERS = (1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2)
ORACLE_NUGGET = 1e-8  # x variance: the generator's fields are noise-free
MEMORY_BYTES = 2**29  # budget for one batch of (n x n) or (n x m) float64 matrices
MIN_FIT_POINTS = 3  # fewer observations keep the default kernel (nothing to fit)
MAX_STEP = 2.0  # BFGS step cap in log parameters (a factor e^2 = 7.4)


# ------------------------------------------------------------------------------------------
# the kernel


@dataclass(frozen=True)
class Kernel:
    """One channel's GP in pixel coordinates, in scikit-learn's Matérn / RBF parametrisation."""

    family: Family = "matern"  # 'matern' or 'rbf'
    nu: float = 1.5  # Matérn smoothness: 0.5, 1.5 or 2.5 (ignored by 'rbf')
    length_scale: tuple[float, float] = (8.0, 8.0)  # (ly, lx) in pixels
    variance: float = 1.0  # signal variance s2
    noise: float = 1e-6  # nugget variance, in the units of `variance`
    mean: float = 0.0  # constant mean: simple kriging uses it; a fit stores its GLS estimate

    def __post_init__(self) -> None:
        if self.family not in ("matern", "rbf"):
            raise FieldpaintError(f"kernel family must be 'matern' or 'rbf', got {self.family!r}")
        if self.family == "matern" and float(self.nu) not in NUS:
            raise FieldpaintError(f"Matérn nu must be one of {NUS}, got {self.nu!r}")
        ls = tuple(float(v) for v in np.broadcast_to(self.length_scale, (2,)))
        object.__setattr__(self, "length_scale", ls)
        numbers = (*ls, self.variance, self.noise, self.mean)
        if not all(map(math.isfinite, numbers)) or min(ls) <= 0 or self.variance <= 0 \
                or self.noise < 0:
            raise FieldpaintError(f"kernel needs finite length_scale > 0, variance > 0 and "
                                  f"noise >= 0; got {self}")


def scaled_distance(a: torch.Tensor, b: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """r = |(a_i - b_j) / (ly, lx)|, (..., n, m), for coordinates a (..., n, 2), b (..., m, 2),
    clamped at 1e-15 so that -c'(r) / r stays finite."""
    dy = (a[..., :, None, 0] - b[..., None, :, 0]) / length[..., 0, None, None]
    dx = (a[..., :, None, 1] - b[..., None, :, 1]) / length[..., 1, None, None]
    return (dy.square() + dx.square()).clamp_min_(1e-30).sqrt_()


def correlation(r: torch.Tensor, family: str, nu: float) -> torch.Tensor:
    """Unit-variance correlation c(r) (R&W sec. 4.2, eqs. 4.9, 4.17, 4.18; sklearn's forms).

    In-place steps on fresh tensors: these run on n x n matrices inside the fitting loop.
    """
    if family == "rbf":
        return r.square().mul_(-0.5).exp_()
    if nu == 0.5:
        return r.neg().exp_()
    d = math.sqrt(3.0 if nu == 1.5 else 5.0) * r
    poly = d + 1.0 if nu == 1.5 else d.square().div_(3.0).add_(d).add_(1.0)
    return poly.mul_(d.neg_().exp_())


def radial_derivative(r: torch.Tensor, family: str, nu: float) -> torch.Tensor:
    """-c'(r) / r, so that dc / d log ly = (-c'(r) / r) (dy / ly)^2 (and likewise for lx)."""
    if family == "rbf":
        return r.square().mul_(-0.5).exp_()
    if nu == 0.5:
        return r.neg().exp_().div_(r)  # r >= 1e-15, and (dy / ly)^2 = 0 where r is that small
    if nu == 1.5:
        return (-math.sqrt(3.0) * r).exp_().mul_(3.0)
    d = math.sqrt(5.0) * r
    return (d + 1.0).mul_(d.neg_().exp_()).mul_(5.0 / 3.0)


def kernel_matrix(coords_a: torch.Tensor, coords_b: torch.Tensor, spec: Kernel) -> torch.Tensor:
    """s2 k(a_i, b_j), (..., n, m), for pixel coordinates (..., n, 2) and (..., m, 2); no nugget."""
    a, b = torch.as_tensor(coords_a, dtype=DTYPE), torch.as_tensor(coords_b, dtype=DTYPE)
    length = torch.tensor(spec.length_scale, dtype=DTYPE)
    return spec.variance * correlation(scaled_distance(a, b, length), spec.family, spec.nu)


# ------------------------------------------------------------------------------------------
# Cholesky and the log marginal likelihood


def cholesky_jitter(K: torch.Tensor, jitters: Sequence[float] = JITTERS
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower Cholesky factors of K (..., n, n), adding diagonal jitter where a factorisation fails.

    A failed matrix is retried with jitter x mean(diag K) added, growing through `jitters`
    (1e-8 ... 1e-2). Returns (L, jitter): jitter (...) is the relative amount used, 0 where none
    was needed and NaN where even the largest failed (L is the identity there).
    """
    n = K.shape[-1]
    K3 = K.reshape(-1, n, n)
    L, info = torch.linalg.cholesky_ex(K3)
    used = K3.new_zeros(K3.shape[0])
    failed = torch.nonzero(info).flatten()
    eye = torch.eye(n, dtype=K.dtype, device=K.device)
    scale = K3.diagonal(dim1=-2, dim2=-1).mean(-1).abs()
    for jitter in jitters:
        if failed.numel() == 0:
            break
        L_j, info = torch.linalg.cholesky_ex(K3[failed] + jitter * scale[failed, None, None] * eye)
        L[failed], used[failed] = L_j, jitter
        failed = failed[info > 0]
    L[failed], used[failed] = eye, math.nan
    return L.reshape(K.shape), used.reshape(K.shape[:-2])


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


def lml_gradient_terms(a: torch.Tensor, L: torch.Tensor, F: torch.Tensor,
                       S: Sequence[torch.Tensor], D: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(a'dR_k a, tr(R^-1 dR_k)) for dR_k = F * S_k (elementwise) and a last dR = diag(D).

    The profile LML's gradient along dR is (n / 2q) a'dR a - tr(R^-1 dR) / 2 (R&W eq. 5.9 at
    s2 = q / n; beta's own change drops out because it minimises q). (P, k) each.
    """
    r_inv = torch.cholesky_inverse(L)
    dot = lambda A, B: (A.flatten(1)[:, None, :] @ B.flatten(1)[:, :, None]).flatten()  # noqa: E731
    outer_f, r_inv_f = a[:, :, None] * a[:, None, :] * F, r_inv.mT * F  # mT: LAPACK's order
    quad = [dot(outer_f, s) for s in S] + [(a.square() * D).sum(-1)]
    trace = [dot(r_inv_f, s) for s in S] + [(r_inv.diagonal(dim1=-2, dim2=-1) * D).sum(-1)]
    return torch.stack(quad, -1), torch.stack(trace, -1)


def profile_lml(q: torch.Tensor, half_logdet: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Eq. 2.30 at s2 = q / n: -n (1 + log(2 pi q / n)) / 2 - log|R| / 2."""
    s2 = (q / n).clamp_min(1e-12)  # constant observations: q = 0
    return -0.5 * n * (1.0 + LOG_2PI + s2.log()) - half_logdet


# ------------------------------------------------------------------------------------------
# observations as padded batches: one row per (field, channel)


def _observations(obs: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor | None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(values, observed, valid) as (B*C, H*W) on the CPU: float64 values, observed = mask &
    valid & finite. (The GP runs on the CPU in float64 wherever the inputs live.)"""
    if obs.ndim != 4:
        raise FieldpaintError(f"obs must be (B, C, H, W), got shape {tuple(obs.shape)}")
    B, C, H, W = obs.shape
    obs = obs.detach().cpu()
    valid = torch.ones(1, 1, H, W, dtype=torch.bool) if valid is None else valid.cpu() > 0.5
    try:
        valid = torch.broadcast_to(valid, (B, C, H, W))
        observed = torch.broadcast_to(mask.cpu() > 0.5, (B, C, H, W)) & valid & obs.isfinite()
    except RuntimeError:
        raise FieldpaintError(f"mask {tuple(mask.shape)} / valid do not match obs "
                              f"{tuple(obs.shape)}; expected (B, 1 or C, H, W)") from None
    values = obs.to(DTYPE).nan_to_num(0.0, 0.0, 0.0).reshape(B * C, H * W)
    return values, observed.reshape(B * C, H * W), valid.reshape(B * C, H * W)


def _pack(flags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, N) bool -> (index (P, k), present (P, k)): each row's True positions, padded, k = max."""
    counts = flags.sum(1)
    k = int(counts.max()) if flags.numel() else 0
    order = torch.argsort((~flags).to(torch.int8), dim=1, stable=True)[:, :k]
    return order, torch.arange(k) < counts[:, None]


def _grid(height: int, width: int) -> torch.Tensor:
    """(H*W, 2) float64 pixel coordinates (row, column) in raster order."""
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([yy.flatten(), xx.flatten()], -1).to(DTYPE)


def _subsample(flags: torch.Tensor, max_points: int, seed: int) -> torch.Tensor:
    """Keep at most max_points True per row, chosen at random; row p draws from (seed, p)."""
    flags = flags.clone()
    for p in torch.nonzero(flags.sum(1) > max_points).flatten().tolist():
        where = torch.nonzero(flags[p]).flatten().numpy()
        drop = np.random.default_rng((seed, p)).permutation(where)[max_points:]
        flags[p, torch.from_numpy(drop)] = False
    return flags


def _covariance(coords: torch.Tensor, present: torch.Tensor, length: torch.Tensor,
                variance: torch.Tensor, nugget: torch.Tensor, family: str, nu: float
                ) -> torch.Tensor:
    """(P, n, n) covariance of padded observations; padded rows and columns are the identity."""
    corr = correlation(scaled_distance(coords, coords, length), family, nu)
    both = present[:, :, None] & present[:, None, :]
    diag = torch.where(present, nugget[:, None], 1.0)
    return torch.where(both, variance[:, None, None] * corr, 0.0) + torch.diag_embed(diag)


# ------------------------------------------------------------------------------------------
# fitting: profile LML per observation, minimised by batched BFGS from screened starts


@dataclass
class _Problems:
    """Padded observations (D rows) and the parameter set (base) each row is fitted with.

    Parameters are x = [log ly, log lx, log g] (or [log l, log g]) within the box [lo, hi].
    """

    dy2: torch.Tensor  # (D, n, n) squared row offsets between observations, in pixels^2;
    dx2: torch.Tensor  # column offsets. Parameter-free: computed once. Padding is far away.
    y: torch.Tensor  # (D, n), 0 at padding
    present: torch.Tensor  # (D, n) bool
    base: torch.Tensor  # (D,) parameter set of each row: itself per field, its channel per dataset
    family: str
    nu: float
    ard: bool
    estimate_mean: bool
    lo: torch.Tensor  # (k,) lower bounds of x
    hi: torch.Tensor  # (k,) upper bounds

    def terms(self, x: torch.Tensor, rows: torch.Tensor, grad: bool) -> tuple[torch.Tensor, ...]:
        """(q, log|R| / 2, beta[, a'dR a, tr(R^-1 dR)]) of data rows `rows` at x (J, k), the
        derivatives taken along x."""
        inv_l2, nugget = (-2.0 * x[:, :-1]).exp().expand(-1, 2), x[:, -1].exp()
        present = self.present[rows]
        dy2 = self.dy2[rows].mul_(inv_l2[:, 0, None, None])  # [rows] copies: in place is safe
        dx2 = self.dx2[rows].mul_(inv_l2[:, 1, None, None])
        r = (dy2 + dx2).clamp_min_(1e-30).sqrt_()
        R = correlation(r, self.family, self.nu)  # padding is far away: identity rows, columns
        R.diagonal(dim1=-2, dim2=-1).add_(nugget[:, None] * present)
        q, half_logdet, beta, a, L = profile_terms(R, self.y[rows], present, self.estimate_mean)
        if not grad:
            return q, half_logdet, beta
        F = radial_derivative(r, self.family, self.nu)
        S = [dy2, dx2] if self.ard else [dy2 + dx2]
        return q, half_logdet, beta, *lml_gradient_terms(a, L, F, S, nugget[:, None] * present)

    def all_terms(self, x: torch.Tensor, rows: torch.Tensor, grad: bool = False
                  ) -> tuple[torch.Tensor, ...]:
        """terms() in chunks whose (n x n) matrices fit MEMORY_BYTES."""
        step = max(1, MEMORY_BYTES // (80 * self.y.shape[1] ** 2))
        parts = [self.terms(x[c], rows[c], grad) for c in torch.arange(len(rows)).split(step)]
        return tuple(torch.cat(t) for t in zip(*parts))


def _objective(prob: _Problems, starts: int, x: torch.Tensor, rows: torch.Tensor,
               grad: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(-LML / N, its gradient) for parameter rows `rows` at x (A, k); row r fits base
    r // starts. A parameter set serving several fields (dataset mode) shares s2 across them:
    LML = -N/2 (1 + log(2 pi Q / N)) - sum log|R_j| / 2 with Q = sum q_j and N = sum n_j."""
    pos, data = torch.nonzero(prob.base[None, :] == (rows // starts)[:, None], as_tuple=True)
    terms = prob.all_terms(x[pos], data, grad)
    n = prob.present[data].sum(1).to(DTYPE)
    N, Q, HLD = (n.new_zeros(len(rows)).index_add(0, pos, t) for t in (n, *terms[:2]))
    loss = -profile_lml(Q, HLD, N) / N
    if not grad:
        return loss, torch.zeros_like(x)
    quad, trace = terms[3:]
    dlml = torch.zeros_like(x).index_add(0, pos, 0.5 * (N / Q)[pos, None] * quad - 0.5 * trace)
    return loss, -dlml / N[:, None]


def _bfgs(fun, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, groups: torch.Tensor,
          max_iter: int = 100, gtol: float = 1e-5, ftol: float = 1e-9
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise fun(x[rows], rows) -> (f, grad) for every row of x (P, k) in the box [lo, hi].

    Projected BFGS, each row on its own: variables on a bound whose gradient points outwards
    are held for the step, as in L-BFGS-B (Byrd et al. 1995); the step is projected into the box
    and backtracked until Armijo holds (c1 = 1e-4). Inverse-Hessian update and initial scaling:
    Nocedal & Wright (2006) eqs. 6.17 and 6.20. Starts of one problem (same `groups` value) that
    meet stop early: the worse of two within 0.01 of each other. Returns (x, f) at the end.
    """
    P, k = x.shape
    x, eye = x.clamp(lo, hi), torch.eye(k, dtype=x.dtype)
    H, fresh = eye.repeat(P, 1, 1), torch.ones(P, dtype=torch.bool)
    f, g = fun(x, torch.arange(P))
    active = f.isfinite()
    for _ in range(max_iter):
        a = torch.nonzero(active).flatten()
        if a.numel() == 0:
            break
        xa, ga = x[a], g[a]
        free = ~(((xa <= lo) & (ga > 0)) | ((xa >= hi) & (ga < 0)))
        p = -(H[a] * (free[:, :, None] & free[:, None, :]) @ ga[..., None])[..., 0]
        uphill = (p * ga).sum(-1) >= 0  # H lost positive definiteness: steepest descent
        p[uphill], H[a[uphill]], fresh[a[uphill]] = -(ga * free)[uphill], eye, True
        p = p * (MAX_STEP / p.abs().amax(-1).clamp_min(MAX_STEP))[:, None]
        step, moved = torch.ones(len(a), dtype=x.dtype), torch.zeros(len(a), dtype=torch.bool)
        x_new, f_new, g_new, todo = xa.clone(), f[a].clone(), ga.clone(), torch.arange(len(a))
        for _ in range(30):
            xt = (xa[todo] + step[todo, None] * p[todo]).clamp(lo, hi)
            ft, gt = fun(xt, a[todo])
            ok = ft <= f[a[todo]] + 1e-4 * (ga[todo] * (xt - xa[todo])).sum(-1)  # NaN fails
            x_new[todo[ok]], f_new[todo[ok]], g_new[todo[ok]] = xt[ok], ft[ok], gt[ok]
            moved[todo[ok]] = True
            todo = todo[~ok]
            if todo.numel() == 0:
                break
            step[todo] *= 0.5
        s, yv = x_new - xa, g_new - ga
        sy = (s * yv).sum(-1)
        update = moved & (sy > 1e-12)
        Ha = H[a]
        first = fresh[a] & update
        Ha[first] = (sy / yv.square().sum(-1))[first, None, None] * eye
        rho = torch.where(update, 1.0 / sy, 0.0)[:, None, None]
        V = eye - rho * s[:, :, None] * yv[:, None, :]
        H[a] = V @ Ha @ V.mT + rho * s[:, :, None] * s[:, None, :]
        fresh[a] &= ~update
        held = ((x_new <= lo) & (g_new > 0)) | ((x_new >= hi) & (g_new < 0))
        small = torch.where(held, 0.0, g_new).abs().amax(-1) < gtol
        done = ~moved | small | (f[a] - f_new <= ftol * (1 + f_new.abs()))
        x[a], f[a], g[a], active[a] = x_new, f_new, g_new, ~done
        a = torch.nonzero(active).flatten()
        near = (groups[a, None] == groups[a]) & ((x[a, None] - x[a]).abs().amax(-1) < 1e-2)
        better = (f[a, None] < f[a]) | ((f[a, None] == f[a]) & (a[:, None] < a))
        active[a[(near & better).any(0)]] = False
    return x, f


def _log_bounds(height: int, width: int, ard: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes of [log ly, log lx, log g] (or [log l, log g]): l in [0.5, 2 max(H, W)] px, g in
    [1e-6, 10] (the nugget floor keeps K well conditioned; one 10x the signal is noise)."""
    lengths = 2 if ard else 1
    lo = [math.log(0.5)] * lengths + [math.log(1e-6)]
    hi = [math.log(2.0 * max(height, width))] * lengths + [math.log(10.0)]
    return torch.tensor(lo, dtype=DTYPE), torch.tensor(hi, dtype=DTYPE)


def _start_grid(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """(G, k) log parameters to screen: isotropic l = 1, 2, 4, ... px x g in {floor, 1e-3, 0.1}
    (smooth data put g on its floor, which BFGS would otherwise approach in many small steps)."""
    lengths = torch.arange(0.0, float(hi[0]) / math.log(2.0) + 1e-9) * math.log(2.0)
    nuggets = torch.tensor([float(lo[-1].exp()), 1e-3, 1e-1], dtype=DTYPE).log()
    grid = torch.cartesian_prod(lengths.to(DTYPE), nuggets)
    return torch.cat([grid[:, :1].expand(-1, len(lo) - 1), grid[:, 1:]], 1)


def _fit(prob: _Problems, n_base: int, restarts: int, warm: torch.Tensor | None = None
         ) -> tuple[torch.Tensor, ...]:
    """Best (log parameters (n_base, k), LML, GLS mean, s2) of each parameter set.

    A coarse grid screens the starts (one Cholesky each); BFGS runs from the `restarts` best,
    or from `warm` (e.g. another nu's optimum) and the best screened start.
    """
    grid = _start_grid(prob.lo, prob.hi)
    G, k = grid.shape
    screen, _ = _objective(prob, G, grid.repeat(n_base, 1), torch.arange(n_base * G), grad=False)
    R = min(restarts if warm is None else 1, G)
    x0 = grid[screen.view(n_base, G).nan_to_num(math.inf).argsort(1)[:, :R]]  # (n_base, R, k)
    if warm is not None:
        x0, R = torch.cat([warm[:, None], x0], 1), R + 1
    groups = torch.arange(n_base).repeat_interleave(R)
    x, loss = _bfgs(lambda v, rows: _objective(prob, R, v, rows), x0.reshape(-1, k),
                    prob.lo, prob.hi, groups)
    pick = loss.view(n_base, R).nan_to_num(math.inf).argmin(1)
    x = x.view(n_base, R, k)[torch.arange(n_base), pick]
    # the winners' LML in full, profiled s2 and (observation-weighted) GLS mean
    q, half_logdet, beta = prob.all_terms(x[prob.base], torch.arange(len(prob.base)))
    n = prob.present.sum(1).to(DTYPE)
    N, Q, HLD, NB = (n.new_zeros(n_base).index_add(0, prob.base, t)
                     for t in (n, q, half_logdet, n * beta))
    return x, profile_lml(Q, HLD, N), NB / N, Q / N


def _nus(family: str, nu: float | str) -> tuple[float, ...]:
    """The Matérn smoothnesses to try: all three for 'auto'; inf stands for the RBF."""
    if family not in ("matern", "rbf"):
        raise FieldpaintError(f"kernel family must be 'matern' or 'rbf', got {family!r}")
    if family == "rbf":
        return (math.inf,)
    if nu == "auto":
        return (1.5, 0.5, 2.5)  # the middle first: it warm-starts the others
    if not isinstance(nu, (int, float)) or float(nu) not in NUS:
        raise FieldpaintError(f"nu must be one of {NUS} or 'auto', got {nu!r}")
    return (float(nu),)


def _fit_kernels(values: torch.Tensor, flags: torch.Tensor, base: torch.Tensor, n_base: int,
                 shape: tuple[int, int], *, family: str, nu: float | str, ard: bool,
                 estimate_mean: bool, restarts: int) -> list[Kernel]:
    """One kernel per parameter set (data row p fits set base[p]); with several nu, the highest
    LML wins. A set with no row of MIN_FIT_POINTS observations keeps a default kernel."""
    nus = _nus(family, nu)
    height, width = shape
    default = Kernel(family, 1.5 if nu == "auto" else nus[0], (height / 4, width / 4))
    kernels, best = [default] * n_base, torch.full((n_base,), -math.inf, dtype=DTYPE)
    counts = flags.sum(1)
    keep = torch.nonzero(counts >= MIN_FIT_POINTS).flatten()
    if keep.numel() == 0:
        return kernels
    # sets in order of size, in chunks whose offset matrices (16 n^2 bytes a row) fit the budget
    sets = torch.unique(base[keep])
    size = torch.zeros(n_base, dtype=torch.long).index_add(0, base[keep], counts[keep])[sets]
    sets = sets[torch.argsort(size, stable=True)]
    per_set = int(torch.bincount(base[keep]).max()) * 16 * int(counts.max()) ** 2
    lo, hi = _log_bounds(height, width, ard)
    for chunk in sets.split(max(1, MEMORY_BYTES // per_set)):
        rows = keep[torch.isin(base[keep], chunk)]
        idx, present = _pack(flags[rows])
        # padding sits 1e6 px apart and away: its correlations underflow to exactly 0
        far = torch.zeros(idx.shape[1], 2, dtype=DTYPE)
        far[:, 0] = 1e6 * torch.arange(1, idx.shape[1] + 1)
        coords = torch.where(present[..., None], _grid(height, width)[idx], far)
        dy2, dx2 = ((coords[:, :, None, i] - coords[:, None, :, i]).square() for i in (0, 1))
        local = torch.nonzero(base[rows, None] == chunk)[:, 1]  # position of each row's set
        y = values[rows].gather(1, idx) * present
        logp = None
        for nu_k in nus:
            prob = _Problems(dy2, dx2, y, present, local, family, nu_k, ard, estimate_mean, lo, hi)
            logp, lml, beta, s2 = _fit(prob, len(chunk), restarts, warm=logp)
            for i, b in enumerate(chunk.tolist()):
                if lml[i] > best[b]:  # NaN (a failed factorisation) never wins
                    best[b] = lml[i]
                    length = tuple(logp[i, :-1].exp().expand(2).tolist())
                    variance = float(s2[i])
                    noise = variance * float(logp[i, -1].exp())
                    kernels[b] = Kernel(family, nu_k, length, variance, noise, float(beta[i]))
    return kernels


def fit_gp(obs: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor | None = None, *,
           family: Family = "matern", nu: float | str = 1.5, ard: bool = True,
           estimate_mean: bool = True, restarts: int = 3, max_points: int = 1500,
           seed: int = 0) -> list[list[Kernel]]:
    """Fit each (field, channel) to its own observations by maximum marginal likelihood.

    nu: 0.5, 1.5, 2.5, or 'auto' (all three; the highest LML wins per field and channel).
    estimate_mean: GLS constant mean (ordinary kriging); False fixes it at 0 (normalised units).
    Above max_points observations a random subset of that many is used (row b*C + c draws from
    (seed, b*C + c)); gp_predict then conditions on all of them. Returns kernels[b][c].
    """
    values, observed, _ = _observations(obs, mask, valid)
    B, C, H, W = obs.shape
    flags = _subsample(observed, max_points, seed)
    kernels = _fit_kernels(values, flags, torch.arange(B * C), B * C, (H, W), family=family,
                           nu=nu, ard=ard, estimate_mean=estimate_mean, restarts=restarts)
    return [kernels[b * C:(b + 1) * C] for b in range(B)]


def fit_dataset_gp(fields: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor | None = None,
                   *, family: Family = "matern", nu: float | str = 1.5, ard: bool = True,
                   estimate_mean: bool = True, restarts: int = 3, max_points: int = 1500,
                   seed: int = 0) -> list[Kernel]:
    """One kernel per channel, maximising the LML summed over training fields (N, C, H, W).

    The length scales, nugget ratio and s2 are shared; with estimate_mean each field keeps its
    own GLS mean (as ordinary kriging will at prediction) and Kernel.mean is their average.
    """
    values, observed, _ = _observations(fields, mask, valid)
    N, C, H, W = fields.shape
    flags = _subsample(observed, max_points, seed)
    return _fit_kernels(values, flags, torch.arange(N * C) % C, C, (H, W), family=family,
                        nu=nu, ard=ard, estimate_mean=estimate_mean, restarts=restarts)


# ------------------------------------------------------------------------------------------
# prediction


def _predict_rows(coords: torch.Tensor, y: torch.Tensor, present: torch.Tensor,
                  targets: torch.Tensor, specs: Sequence[Kernel], estimate_mean: bool,
                  include_noise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictive mean and variance (P, m) at targets (P, m, 2) of P padded problems of one
    family: R&W Algorithm 2.1; with estimate_mean the GLS mean and its variance (eqs. 2.41-2.42).
    """
    param = lambda f: torch.tensor([f(s) for s in specs], dtype=DTYPE)  # noqa: E731
    length, variance = param(lambda s: s.length_scale), param(lambda s: s.variance)
    noise, family, nu = param(lambda s: s.noise), specs[0].family, specs[0].nu
    h = present.to(DTYPE)
    L, jitter = cholesky_jitter(_covariance(coords, present, length, variance, noise, family, nu))
    if bool(jitter.isnan().any()):
        raise FieldpaintError("GP covariance is singular even with 1e-2 relative jitter")
    beta = param(lambda s: s.mean)
    if estimate_mean:
        k_inv_h = torch.cholesky_solve(h[..., None], L)[..., 0]
        h_k_h = (k_inv_h * h).sum(-1)
        beta = (k_inv_h * y * h).sum(-1) / h_k_h
    alpha = torch.cholesky_solve(((y - beta[:, None]) * h)[..., None], L)  # (P, n, 1)
    means, variances = [], []
    width = max(1, MEMORY_BYTES // (32 * coords.shape[0] * max(coords.shape[1], 1)))
    for t in targets.split(width, dim=1):
        k_star = variance[:, None, None] * correlation(scaled_distance(coords, t, length),
                                                       family, nu) * h[:, :, None]
        means.append(beta[:, None] + (k_star * alpha).sum(1))  # eq. 2.25 (+ mean)
        v = torch.linalg.solve_triangular(L, k_star, upper=False)
        var = variance[:, None] - v.square().sum(1)  # eq. 2.26
        if estimate_mean:  # eq. 2.42: (1 - 1'K^-1 k*)^2 / 1'K^-1 1
            var = var + (1.0 - (k_inv_h[:, :, None] * k_star).sum(1)).square() / h_k_h[:, None]
        variances.append(var + noise[:, None] if include_noise else var)
    return torch.cat(means, 1), torch.cat(variances, 1).clamp_min(0.0)


def _kernel_rows(kernels: Kernel | Sequence, B: int, C: int) -> list[Kernel]:
    """One Kernel for all, C (one per channel) or B x C (kernels[b][c]) -> B*C in row order."""
    if isinstance(kernels, Kernel):
        return [kernels] * (B * C)
    kernels = list(kernels)
    if kernels and all(isinstance(k, Kernel) for k in kernels) and len(kernels) == C:
        return kernels * B
    if len(kernels) == B and all(isinstance(row, Sequence) and len(row) == C for row in kernels):
        return [k for row in kernels for k in row]
    raise FieldpaintError(f"kernels must be one Kernel, {C} (one per channel) or {B} x {C}")


def gp_predict(obs: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor | None,
               kernels: Kernel | Sequence, *, mean: MeanMode = "gls", include_noise: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Kriging mean and std (B, C, H, W) from every observed valid pixel of each (field, channel).

    kernels: one Kernel, one per channel, or kernels[b][c] (fit_gp's output). mean: 'gls'
    (ordinary kriging) or 'fixed' (simple kriging with Kernel.mean). Observed pixels return the
    observation with std 0; never-valid pixels return 0 and 0. Exact: one Cholesky per problem,
    batched over problems of the same kernel family in chunks that fit MEMORY_BYTES.
    """
    if mean not in ("gls", "fixed"):
        raise FieldpaintError(f"GP mean must be 'gls' or 'fixed', got {mean!r}")
    values, observed, valid_rows = _observations(obs, mask, valid)
    B, C, H, W = obs.shape
    specs = _kernel_rows(kernels, B, C)
    targets = valid_rows & ~observed
    out_mean, out_var = torch.zeros_like(values), torch.zeros_like(values)
    grid, counts = _grid(H, W), observed.sum(1)
    with torch.no_grad():
        for p in torch.nonzero(counts == 0).flatten().tolist():  # nothing observed: the prior
            out_mean[p] = 0.0 if mean == "gls" else specs[p].mean
            out_var[p] = specs[p].variance + (specs[p].noise if include_noise else 0.0)
        groups: dict[tuple, list[int]] = {}
        for p in torch.argsort(counts).tolist():  # similar counts together: little padding
            if counts[p] > 0:
                groups.setdefault((specs[p].family, specs[p].nu), []).append(p)
        for rows in groups.values():
            step = max(1, MEMORY_BYTES // (24 * int(counts[rows].max()) ** 2))
            for chunk in torch.tensor(rows).split(step):
                idx, present = _pack(observed[chunk])
                t_idx, t_present = _pack(targets[chunk])
                mu, var = _predict_rows(grid[idx], values[chunk].gather(1, idx), present,
                                        grid[t_idx], [specs[p] for p in chunk.tolist()],
                                        mean == "gls", include_noise)
                at = (chunk[:, None].expand_as(t_idx)[t_present], t_idx[t_present])
                out_mean[at], out_var[at] = mu[t_present], var[t_present]
    out_mean = torch.where(observed, values, torch.where(valid_rows, out_mean, 0.0))
    out_var = torch.where(valid_rows & ~observed, out_var, 0.0)
    shape = (B, C, H, W)
    return (out_mean.reshape(shape).to(obs.device, obs.dtype),
            out_var.sqrt().reshape(shape).to(obs.device, obs.dtype))


# ------------------------------------------------------------------------------------------
# the oracle and the Reconstructor


def oracle_kernel(attrs: Mapping, mean: float = 0.0, std: float = 1.0) -> Kernel:
    """The generator's own kernel (fieldpaint.data.grf.generate_grf attrs) in normalised units.

    Reconstructors see x = (field - mean) / std (the train statistics of this channel), so the
    variance becomes variance / std^2 and the GP mean (attrs mean - mean) / std. The nugget is a
    1e-8 x variance jitter: the generated fields are noise-free.
    """
    if attrs.get("kernel") != "matern" or attrs.get("length_scale_units", "pixels") != "pixels":
        raise FieldpaintError("an oracle GP needs generator attrs with kernel='matern' and the "
                              f"length scale in pixels; got {dict(attrs)!r}")
    nu, ls = float(attrs["nu"]), float(attrs["length_scale"])
    variance = float(attrs.get("variance", 1.0)) / std**2
    family = "rbf" if math.isinf(nu) else "matern"
    return Kernel(family, nu, (ls, ls), variance, ORACLE_NUGGET * variance,
                  (float(attrs.get("mean", 0.0)) - mean) / std)


class GPReconstructor:
    """Kriging as a Reconstructor (fieldpaint.reconstruct); inputs in normalised units.

    mode 'per-field': each field's kernel fitted to its own observations, as a practitioner
    would. Default nu='auto': Matérn 0.5, 1.5 and 2.5 with ARD, the highest marginal likelihood
    per field and channel wins (smoothness is the one choice a geostatistician would not fix
    blind). mode 'dataset': one kernel per channel from training fields (fit_dataset), the same
    information the diffusion model gets. mode 'oracle': the generator's true kernel (from_attrs).
    mean: 'gls' (ordinary kriging: the default per field, where the mean is unknown) or 'fixed'
    (simple kriging with Kernel.mean: the default for 'dataset', where the training set fixes
    the mean at 0 in normalised units, as the diffusion model knows it, and for 'oracle', where
    it is the generator's). A per-field 'fixed' fits and predicts with mean 0. Gaussian:
    `samples` is ignored and members is None.
    """

    def __init__(self, mode: Literal["per-field", "dataset", "oracle"] = "per-field", *,
                 family: Family = "matern", nu: float | str = "auto", ard: bool = True,
                 mean: MeanMode | None = None, include_noise: bool = True, restarts: int = 3,
                 max_points: int = 1500, kernels: Sequence[Kernel] | None = None) -> None:
        if mode not in ("per-field", "dataset", "oracle"):
            raise FieldpaintError(f"GP mode must be 'per-field', 'dataset' or 'oracle', "
                                  f"got {mode!r}")
        if mean not in (None, "gls", "fixed"):
            raise FieldpaintError(f"GP mean must be 'gls' or 'fixed', got {mean!r}")
        _nus(family, nu)
        self.mode, self.family, self.nu, self.ard = mode, family, nu, ard
        self.mean: MeanMode = mean or ("gls" if mode == "per-field" else "fixed")
        self.include_noise, self.restarts, self.max_points = include_noise, restarts, max_points
        self.kernels = list(kernels) if kernels is not None else None
        self.name = f"gp-{mode}"

    @classmethod
    def from_attrs(cls, attrs: Mapping, stats=None, **options) -> GPReconstructor:
        """The oracle from generator attrs. stats: what normalised the data, a FieldStats (or
        any object with per-channel .mean and .std) or a (means, stds) pair; None: unnormalised."""
        if stats is None:
            channels = int(attrs.get("channels", 1))
            means, stds = [0.0] * channels, [1.0] * channels
        else:
            means, stds = (stats.mean, stats.std) if hasattr(stats, "std") else stats
        kernels = [oracle_kernel(attrs, float(m), float(s)) for m, s in zip(means, stds)]
        return cls("oracle", kernels=kernels, **options)

    def fit_dataset(self, fields: torch.Tensor, valid: torch.Tensor | None = None,
                    masks_or_coverage: torch.Tensor | float = 0.5, *, n_fields: int = 8,
                    seed: int = 0) -> list[Kernel]:
        """Fit one kernel per channel to the first n_fields training fields (N, C, H, W), in
        normalised units, seen through the given masks or random masks hiding `coverage` of
        the valid pixels (then subsampled to max_points); sets and returns self.kernels."""
        fields = torch.as_tensor(fields)[:n_fields]
        N, _, H, W = fields.shape
        if valid is not None:
            valid = torch.as_tensor(valid) > 0.5
            valid = valid[:n_fields] if valid.ndim == 4 and valid.shape[0] > 1 else valid
        if isinstance(masks_or_coverage, (int, float)):
            valid_np = None if valid is None else valid.expand(N, 1, H, W).numpy()
            masks = torch.from_numpy(make_masks("random", float(masks_or_coverage), N, H, W,
                                                valid=valid_np, seed=seed))
        else:
            masks = torch.as_tensor(masks_or_coverage)[:n_fields]
        self.kernels = fit_dataset_gp(fields, masks, valid, family=self.family, nu=self.nu,
                                      ard=self.ard, estimate_mean=self.mean == "gls",
                                      restarts=self.restarts, max_points=self.max_points,
                                      seed=seed)
        return self.kernels

    def reconstruct(self, obs: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor, *,
                    samples: int = 1, seed: int = 0) -> Reconstruction:
        with torch_threads(1):  # many small Cholesky factorisations: threads only contend
            return self._reconstruct(obs, mask, valid, seed)

    def _reconstruct(self, obs: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor, seed: int) -> Reconstruction:
        start = time.perf_counter()
        if self.mode == "per-field":
            kernels = fit_gp(obs, mask, valid, family=self.family, nu=self.nu, ard=self.ard,
                             estimate_mean=self.mean == "gls", restarts=self.restarts,
                             max_points=self.max_points, seed=seed)
        elif self.kernels is None:
            raise FieldpaintError(f"{self.name} has no kernels: call fit_dataset() or from_attrs()")
        else:
            kernels = self.kernels
        mean, std = gp_predict(obs, mask, valid, kernels, mean=self.mean,
                               include_noise=self.include_noise)
        return Reconstruction(mean, std, None, 0, time.perf_counter() - start)
