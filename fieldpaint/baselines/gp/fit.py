"""Hyperparameter fitting: the profile LML of padded observations, minimised by batched BFGS.

Each parameter set (one per (field, channel) per field, one per channel over a data set) has
x = log(ly, lx, g) with g = noise / s2 (or log(l, g) without ARD) in a box: l in
[0.5, 2 max(H, W)] px (at most L / 2 along a periodic axis, where the periodised kernel of a
longer scale is nearly constant), g in [1e-6, 10]. beta and s2 have closed-form maximisers and
are profiled out. A coarse grid (isotropic l = 1, 2, 4, ... px, three nuggets) screens starts
with one Cholesky each; BFGS (bfgs.py) runs from the `restarts` best, every (set, start) at
once in float64. nu='auto' fits Matérn 1.5, then 0.5 and 2.5 warm-started from it, and keeps
the highest LML.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fieldpaint.baselines.gp.bfgs import bfgs
from fieldpaint.baselines.gp.kernels import (DTYPE, NUS, Family, Kernel, correlation_table,
                                             gather_table, lag_index)
from fieldpaint.baselines.gp.likelihood import lml_gradient_terms, profile_lml, profile_terms
from fieldpaint.baselines.gp.observations import observations, pack, subsample
from fieldpaint.errors import FieldpaintError

MEMORY_BYTES = 2**29  # budget for one batch of (n x n) float64 matrices
MIN_FIT_POINTS = 3  # fewer observations keep the default kernel (nothing to fit)


@dataclass
class _Problems:
    """Padded observations (D rows) and the parameter set (base) each row is fitted with."""

    lag: torch.Tensor  # (D, n, n) entries of the lag table; H*W (zero) at padding. Parameter-free
    y: torch.Tensor  # (D, n), 0 at padding
    present: torch.Tensor  # (D, n) bool
    base: torch.Tensor  # (D,) parameter set of each row: itself per field, its channel per dataset
    family: str
    nu: float
    ard: bool
    estimate_mean: bool
    lo: torch.Tensor  # (k,) lower bounds of x
    hi: torch.Tensor  # (k,) upper bounds
    shape: tuple[int, int]
    periodic: tuple[bool, bool]

    def tables(self, x: torch.Tensor, grad: bool) -> list[torch.Tensor]:
        return correlation_table(x[:, :-1].exp().expand(-1, 2), self.family, self.nu,
                                 self.shape, self.periodic, grad)

    def terms(self, x: torch.Tensor, tables: list[torch.Tensor], pos: torch.Tensor,
              rows: torch.Tensor, grad: bool) -> tuple[torch.Tensor, ...]:
        """(q, log|R| / 2, beta[, a'dR a, tr(R^-1 dR)]) of data rows `rows` at parameters
        x[pos] (tables of x from tables()), the derivatives taken along x."""
        nugget, present, lag = x[pos, -1].exp(), self.present[rows], self.lag[rows]
        R = gather_table(tables[0], lag, pos)
        R.diagonal(dim1=-2, dim2=-1).add_(torch.where(present, nugget[:, None], 1.0))
        q, half_logdet, beta, a, L = profile_terms(R, self.y[rows], present, self.estimate_mean)
        if not grad:
            return q, half_logdet, beta
        S = [gather_table(t, lag, pos) for t in tables[1:]]
        S = S if self.ard else [S[0] + S[1]]
        return q, half_logdet, beta, *lml_gradient_terms(a, L, None, S, nugget[:, None] * present)

    def all_terms(self, x: torch.Tensor, pos: torch.Tensor, rows: torch.Tensor,
                  grad: bool = False) -> tuple[torch.Tensor, ...]:
        """terms() in chunks whose (n x n) matrices fit MEMORY_BYTES."""
        tables = self.tables(x, grad)
        step = max(1, MEMORY_BYTES // (80 * self.y.shape[1] ** 2))
        parts = [self.terms(x, tables, pos[c], rows[c], grad)
                 for c in torch.arange(len(rows), device=rows.device).split(step)]
        return tuple(torch.cat(t) for t in zip(*parts))


def _objective(prob: _Problems, starts: int, x: torch.Tensor, rows: torch.Tensor,
               grad: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(-LML / N, its gradient) for parameter rows `rows` at x (A, k); row r fits base
    r // starts. A parameter set serving several fields (dataset mode) shares s2 across them:
    LML = -N/2 (1 + log(2 pi Q / N)) - sum log|R_j| / 2 with Q = sum q_j and N = sum n_j."""
    pos, data = torch.nonzero(prob.base[None, :] == (rows // starts)[:, None], as_tuple=True)
    terms = prob.all_terms(x, pos, data, grad)
    n = prob.present[data].sum(1).to(DTYPE)
    N, Q, HLD = (n.new_zeros(len(rows)).index_add(0, pos, t) for t in (n, *terms[:2]))
    loss = -profile_lml(Q, HLD, N) / N
    if not grad:
        return loss, torch.zeros_like(x)
    quad, trace = terms[3:]
    dlml = torch.zeros_like(x).index_add(0, pos, 0.5 * (N / Q)[pos, None] * quad - 0.5 * trace)
    return loss, -dlml / N[:, None]


def log_bounds(height: int, width: int, ard: bool, periodic: tuple[bool, bool] = (False, False)
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes of [log ly, log lx, log g] (or [log l, log g]): l in [0.5, 2 max(H, W)] px, at most
    L / 2 on a periodic axis, g in [1e-6, 10] (the nugget floor keeps K well conditioned; one
    10x the signal is noise)."""
    top = [2.0 * max(height, width) if not wrap else size / 2.0
           for size, wrap in zip((height, width), periodic)]
    top = top if ard else [min(top)]
    lo = [math.log(0.5)] * len(top) + [math.log(1e-6)]
    hi = [math.log(t) for t in top] + [math.log(10.0)]
    return torch.tensor(lo, dtype=DTYPE), torch.tensor(hi, dtype=DTYPE)


def _start_grid(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """(G, k) log parameters to screen: isotropic l = 1, 2, 4, ... px x g in {floor, 1e-3, 0.1}
    (smooth data put g on its floor, which BFGS would otherwise approach in many small steps)."""
    lengths = torch.arange(0.0, float(hi[:-1].min()) / math.log(2.0) + 1e-9) * math.log(2.0)
    nuggets = torch.tensor([float(lo[-1].exp()), 1e-3, 1e-1], dtype=DTYPE).log()
    grid = torch.cartesian_prod(lengths.to(DTYPE), nuggets)
    return torch.cat([grid[:, :1].expand(-1, len(lo) - 1), grid[:, 1:]], 1)


def _fit(prob: _Problems, n_base: int, restarts: int, warm: torch.Tensor | None = None
         ) -> tuple[torch.Tensor, ...]:
    """Best (log parameters (n_base, k), LML, GLS mean, s2) of each parameter set.

    A coarse grid screens the starts (one Cholesky each); BFGS runs from the `restarts` best,
    or from `warm` (e.g. another nu's optimum) and the best screened start.
    """
    dev = prob.y.device
    grid = _start_grid(prob.lo, prob.hi).to(dev)
    G, k = grid.shape
    screen, _ = _objective(prob, G, grid.repeat(n_base, 1), torch.arange(n_base * G, device=dev),
                           grad=False)
    R = min(restarts if warm is None else 1, G)
    x0 = grid[screen.view(n_base, G).nan_to_num(math.inf).argsort(1)[:, :R]]  # (n_base, R, k)
    if warm is not None:
        x0, R = torch.cat([warm[:, None], x0], 1), R + 1
    groups = torch.arange(n_base, device=dev).repeat_interleave(R)
    x, loss = bfgs(lambda v, rows: _objective(prob, R, v, rows), x0.reshape(-1, k),
                   prob.lo, prob.hi, groups)
    pick = loss.view(n_base, R).nan_to_num(math.inf).argmin(1)
    x = x.view(n_base, R, k)[torch.arange(n_base, device=dev), pick]
    # the winners' LML in full, profiled s2 and (observation-weighted) GLS mean
    q, half_logdet, beta = prob.all_terms(x, prob.base, torch.arange(len(prob.base), device=dev))
    n = prob.present.sum(1).to(DTYPE)
    N, Q, HLD, NB = (n.new_zeros(n_base).index_add(0, prob.base, t)
                     for t in (n, q, half_logdet, n * beta))
    return x, profile_lml(Q, HLD, N), NB / N, Q / N


def nus(family: str, nu: float | str) -> tuple[float, ...]:
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
                 estimate_mean: bool, restarts: int, periodic: tuple[bool, bool]
                 ) -> list[Kernel]:
    """One kernel per parameter set (data row p fits set base[p]); with several nu, the highest
    LML wins. A set with no row of MIN_FIT_POINTS observations keeps a default kernel."""
    smooth = nus(family, nu)
    height, width = shape
    dev = values.device
    default = Kernel(family, 1.5 if nu == "auto" else smooth[0], (height / 4, width / 4))
    kernels, best = [default] * n_base, torch.full((n_base,), -math.inf, dtype=DTYPE)
    counts = flags.sum(1).cpu()
    base = base.cpu()
    keep = torch.nonzero(counts >= MIN_FIT_POINTS).flatten()
    if keep.numel() == 0:
        return kernels
    # sets in order of size, in chunks whose lag indices (8 n^2 bytes a row) fit the budget
    sets = torch.unique(base[keep])
    size = torch.zeros(n_base, dtype=torch.long).index_add(0, base[keep], counts[keep])[sets]
    sets = sets[torch.argsort(size, stable=True)]
    per_set = int(torch.bincount(base[keep]).max()) * 32 * int(counts.max()) ** 2
    lo, hi = (b.to(dev) for b in log_bounds(height, width, ard, periodic))
    for chunk in sets.split(max(1, MEMORY_BYTES // per_set)):
        rows = keep[torch.isin(base[keep], chunk)]
        idx, present = pack(flags[rows.to(dev)])
        lag = lag_index(idx, idx, shape, periodic, present, present)
        local = torch.nonzero(base[rows, None] == chunk)[:, 1].to(dev)  # each row's set
        y = values[rows.to(dev)].gather(1, idx) * present
        logp = None
        for nu_k in smooth:
            prob = _Problems(lag, y, present, local, family, nu_k, ard, estimate_mean, lo, hi,
                             shape, periodic)
            logp, lml, beta, s2 = _fit(prob, len(chunk), restarts, warm=logp)
            for i, b in enumerate(chunk.tolist()):
                if lml[i] > best[b]:  # NaN (a failed factorisation) never wins
                    best[b] = float(lml[i])
                    length = tuple(logp[i, :-1].exp().expand(2).tolist())
                    variance = float(s2[i])
                    noise = variance * float(logp[i, -1].exp())
                    kernels[b] = Kernel(family, nu_k, length, variance, noise, float(beta[i]))
    return kernels


def fit_gp(obs: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor | None = None, *,
           family: Family = "matern", nu: float | str = 1.5, ard: bool = True,
           estimate_mean: bool = True, restarts: int = 3, max_points: int = 1500,
           seed: int = 0, trend: torch.Tensor | None = None,
           periodic: tuple[bool, bool] = (False, False), device: torch.device | str = "cpu"
           ) -> list[list[Kernel]]:
    """Fit each (field, channel) to its own observations by maximum marginal likelihood.

    nu: 0.5, 1.5, 2.5, or 'auto' (all three; the highest LML wins per field and channel).
    estimate_mean: GLS constant mean (ordinary kriging); False fixes it at 0 (normalised units,
    after subtracting `trend` (C, H, W)). Above max_points observations a random subset of that
    many is used (row b*C + c draws from (seed, b*C + c)); gp_predict then conditions on all of
    them. Returns kernels[b][c].
    """
    values, observed, _ = observations(obs, mask, valid, trend, device)
    B, C, H, W = obs.shape
    flags = subsample(observed, max_points, seed)
    kernels = _fit_kernels(values, flags, torch.arange(B * C), B * C, (H, W), family=family,
                           nu=nu, ard=ard, estimate_mean=estimate_mean, restarts=restarts,
                           periodic=tuple(periodic))
    return [kernels[b * C:(b + 1) * C] for b in range(B)]


def fit_dataset_gp(fields: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor | None = None,
                   *, family: Family = "matern", nu: float | str = 1.5, ard: bool = True,
                   estimate_mean: bool = True, restarts: int = 3, max_points: int = 1500,
                   seed: int = 0, trend: torch.Tensor | None = None,
                   periodic: tuple[bool, bool] = (False, False),
                   device: torch.device | str = "cpu") -> list[Kernel]:
    """One kernel per channel, maximising the LML summed over training fields (N, C, H, W)
    observed where `mask` is 1 (at most max_points per field).

    The length scales, nugget ratio and s2 are shared; with estimate_mean each field keeps its
    own GLS mean (as ordinary kriging will at prediction) and Kernel.mean is their average.
    """
    values, observed, _ = observations(fields, mask, valid, trend, device)
    N, C, H, W = fields.shape
    flags = subsample(observed, max_points, seed)
    return _fit_kernels(values, flags, torch.arange(N * C) % C, C, (H, W), family=family,
                        nu=nu, ard=ard, estimate_mean=estimate_mean, restarts=restarts,
                        periodic=tuple(periodic))
