"""The kernel: its spec, Matérn / RBF correlations, lag tables on the pixel grid, Cholesky.

Coordinates are pixels. Observations sit on the H x W grid, so a stationary ARD kernel between
two pixels depends only on their lag (|dy|, |dx|): `correlation_table` evaluates it once per lag
(an (H, W) table, with its derivatives) and every covariance matrix is a gather from it. On a
periodic axis of length L the lag is taken modulo L and the table is the kernel PERIODISED,
summed over its periodic images (c(d) = sum_n k(d + nL), rescaled to c(0) = 1), as
fieldpaint.models.gaussian does: k evaluated at the wrap-around distance min(|d|, L - |d|) is not
positive definite on small tori (e.g. min eigenvalue -0.69 against max 39.8 on an 8 x 16 torus,
nu = 1.5, l = 3 px), while the periodised kernel's spectrum is an aliased sum of the Matérn
spectral density, never negative (Bochner; Poisson summation). For l << L the images beyond the
nearest add nothing and the two agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch

from fieldpaint.errors import FieldpaintError

Family = Literal["matern", "rbf"]
NUS = (0.5, 1.5, 2.5)
DTYPE = torch.float64
# Relative jitters (x the mean diagonal) tried in turn when a Cholesky factorisation fails.
JITTERS = (1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2)
# Periodic images are summed out to REACH[nu] length scales, where c(r) < 1e-10 (e^-23 for
# nu = 0.5, (1 + d) e^-d at d = sqrt(3) 15.5 for 1.5, ... ; inf is the RBF): the truncation error
# of each entry is then below the 1e-6 relative nugget floor divided by 4,096 observations.
REACH = {0.5: 23.0, 1.5: 15.5, 2.5: 12.5, math.inf: 6.8}
TABLE_ELEMENTS = 2**23  # image offsets evaluated at once by correlation_table (64 MiB a table)


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

    @property
    def smoothness(self) -> float:
        """nu, with inf for the RBF (the key of REACH)."""
        return math.inf if self.family == "rbf" else float(self.nu)


def scaled_distance(a: torch.Tensor, b: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """r = |(a_i - b_j) / (ly, lx)|, (..., n, m), for coordinates a (..., n, 2), b (..., m, 2),
    clamped at 1e-15 so that -c'(r) / r stays finite."""
    dy = (a[..., :, None, 0] - b[..., None, :, 0]) / length[..., 0, None, None]
    dx = (a[..., :, None, 1] - b[..., None, :, 1]) / length[..., 1, None, None]
    return (dy.square() + dx.square()).clamp_min_(1e-30).sqrt_()


def correlation(r: torch.Tensor, family: str, nu: float) -> torch.Tensor:
    """Unit-variance correlation c(r) (R&W sec. 4.2, eqs. 4.9, 4.17, 4.18; sklearn's forms).

    In-place steps on fresh tensors: these run on large tables and matrices inside the fit.
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
    """s2 k(a_i, b_j), (..., n, m), for pixel coordinates (..., n, 2) and (..., m, 2); no nugget,
    no periodicity (grid_kernel_matrix has both axes' options)."""
    a, b = torch.as_tensor(coords_a, dtype=DTYPE), torch.as_tensor(coords_b, dtype=DTYPE)
    length = torch.tensor(spec.length_scale, dtype=DTYPE, device=a.device)
    return spec.variance * correlation(scaled_distance(a, b, length), spec.family, spec.nu)


# ------------------------------------------------------------------------------------------
# lag tables on the grid


def correlation_table(length: torch.Tensor, family: str, nu: float, shape: tuple[int, int],
                      periodic: tuple[bool, bool] = (False, False), grad: bool = False
                      ) -> list[torch.Tensor]:
    """[c, dc / d log ly, dc / d log lx], each (P, H*W + 1): the correlation at lag (dy, dx),
    entry dy * W + dx, for P length scales (P, 2) in pixels; the last entry is 0 (padding).

    Lags run over 0..H-1 and 0..W-1: |d| on an open axis, d mod L on a periodic one, where the
    kernel is summed over its images d + nL out to REACH length scales and rescaled to c(0) = 1
    (so that s2 stays the marginal variance; the derivative follows the quotient rule).
    """
    height, width = shape
    P, dev = length.shape[0], length.device
    images = [math.ceil(REACH[math.inf if family == "rbf" else float(nu)] * float(length.max())
                        / size) * 2 + 1 if wrap else 1 for size, wrap in zip(shape, periodic)]
    step = max(1, TABLE_ELEMENTS // (height * width * images[0] * images[1]))
    if P > step:  # bounded memory: (P, images x H, images x W) per table
        parts = [correlation_table(c, family, nu, shape, periodic, grad) for c in length.split(step)]
        return [torch.cat(t) for t in zip(*parts)]
    reach = REACH[math.inf if family == "rbf" else float(nu)] * float(length.max())
    offsets = []
    for size, wrap in zip(shape, periodic):
        n_img = math.ceil(reach / size) if wrap else 0
        lags = torch.arange(size, dtype=DTYPE, device=dev)
        offsets.append(torch.cat([lags + j * size for j in range(-n_img, n_img + 1)]))
    # scaled squared offsets of every image: (P, Ny, 1) and (P, 1, Nx)
    sy = (offsets[0][None, :] / length[:, 0, None]).square_()[:, :, None]
    sx = (offsets[1][None, :] / length[:, 1, None]).square_()[:, None, :]
    r = (sy + sx).clamp_min_(1e-30).sqrt_()
    tables = [correlation(r, family, nu)]
    if grad:
        F = radial_derivative(r, family, nu)
        tables += [F * sy, F * sx]
    out = []
    for t in tables:  # fold the images onto the (H, W) lags
        t = t.reshape(P, -1, height, t.shape[-1]).sum(1)
        out.append(t.reshape(P, height, -1, width).sum(2).reshape(P, -1))
    if any(periodic):
        c0 = out[0][:, :1]
        out = [out[0] / c0] + [d / c0 - out[0] * d[:, :1] / c0.square() for d in out[1:]]
    return [torch.cat([t, t.new_zeros(P, 1)], 1) for t in out]


def lag_index(a: torch.Tensor, b: torch.Tensor, shape: tuple[int, int],
              periodic: tuple[bool, bool] = (False, False), a_present: torch.Tensor | None = None,
              b_present: torch.Tensor | None = None) -> torch.Tensor:
    """(..., n, m) entries of correlation_table for flat pixel indices a (..., n), b (..., m)
    (p = y W + x); pairs with a padded (not present) end get H*W, the table's zero."""
    height, width = shape
    a, b = a.to(torch.int32), b.to(torch.int32)  # int32 arithmetic: twice the speed of int64
    ay, ax, by, bx = a // width, a % width, b // width, b % width
    dy = ay[..., :, None] - by[..., None, :]
    dx = ax[..., :, None] - bx[..., None, :]
    dy = dy.remainder_(height) if periodic[0] else dy.abs_()
    dx = dx.remainder_(width) if periodic[1] else dx.abs_()
    idx = dy.mul_(width).add_(dx).long()
    if a_present is not None:
        idx = idx.masked_fill(~a_present[..., :, None], height * width)
    if b_present is not None:
        idx = idx.masked_fill(~b_present[..., None, :], height * width)
    return idx


def gather_table(table: torch.Tensor, idx: torch.Tensor, which: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """table[which[j], idx[j]] for tables (P, T) and indices (J, ...); which defaults to 0..J-1."""
    J = idx.shape[0]
    rows = table[:J] if which is None else table.index_select(0, which)
    # gather along each row: 4x faster than indexing the flattened table with offset indices (it
    # was a quarter of the dataset kernel's fit), and no (J, n^2) offset tensor
    return rows.gather(1, idx.reshape(J, -1)).reshape(idx.shape)


def grid_kernel_matrix(a: torch.Tensor, b: torch.Tensor, spec: Kernel, shape: tuple[int, int],
                       periodic: tuple[bool, bool] = (False, False)) -> torch.Tensor:
    """s2 k between flat pixel indices a (n,) and b (m,) of an H x W grid, (n, m); no nugget."""
    length = torch.tensor([spec.length_scale], dtype=DTYPE, device=a.device)
    table = correlation_table(length, spec.family, spec.nu, shape, periodic)[0]
    return spec.variance * gather_table(table, lag_index(a, b, shape, periodic)[None])[0]


# ------------------------------------------------------------------------------------------
# Cholesky


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
