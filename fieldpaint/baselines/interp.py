"""Simple interpolation baselines: nearest neighbour, linear (Delaunay) and Laplace (harmonic) fill.

Each is a Reconstructor (fieldpaint.reconstruct) with std = 0: deterministic interpolants carry no
uncertainty. Observed pixels keep their observations; never-valid pixels are never used as data
and come back as 0. A mask shared by the channels fills them all at once (one triangulation or one
sparse factorisation); a per-channel mask fills each channel on its own. numpy/scipy on the CPU.
"""

from __future__ import annotations

import time
from typing import Callable, Literal

import numpy as np
import scipy.sparse as sp
import torch
from scipy import ndimage
from scipy.interpolate import LinearNDInterpolator
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import splu
from scipy.spatial import QhullError

from fieldpaint.errors import FieldpaintError
from fieldpaint.reconstruct import Reconstruction

Method = Literal["nearest", "linear", "laplace"]


def nearest_fill(values: np.ndarray, observed: np.ndarray, valid: np.ndarray | None = None
                 ) -> np.ndarray:
    """(C, H, W): every pixel takes the value of its nearest observed pixel (Euclidean).

    The exact Euclidean distance transform (scipy.ndimage.distance_transform_edt) returns, for
    each pixel, the index of a nearest zero of ~observed, i.e. of an observed pixel.
    """
    if not observed.any():
        return np.zeros_like(values)
    _, (iy, ix) = ndimage.distance_transform_edt(~observed, return_indices=True)
    return values[:, iy, ix]


def linear_fill(values: np.ndarray, observed: np.ndarray, valid: np.ndarray | None = None
                ) -> np.ndarray:
    """(C, H, W): piecewise linear on the Delaunay triangulation of the observed pixels
    (scipy LinearNDInterpolator); nearest neighbour outside their convex hull and when they
    cannot be triangulated (fewer than 3, or all on one line)."""
    out = nearest_fill(values, observed)
    points = np.argwhere(observed)  # row-major, the order of values[:, observed]
    if len(points) < 3:
        return out
    try:
        interpolate = LinearNDInterpolator(points, values[:, observed].T)
    except QhullError:
        return out
    targets = np.argwhere(~observed)
    linear = interpolate(targets)  # (m, C), NaN outside the hull
    inside = ~np.isnan(linear).any(axis=1)
    out[:, targets[inside, 0], targets[inside, 1]] = linear[inside].T
    return out


def _grid_edges(valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices (p, q) of every pair of 4-neighbour valid pixels, both directions."""
    height, width = valid.shape
    index = np.arange(height * width).reshape(height, width)
    p, q = [], []
    for a, b in ((index[:, :-1], index[:, 1:]), (index[:-1, :], index[1:, :])):
        both = valid.flat[a] & valid.flat[b]
        p += [a[both], b[both]]
        q += [b[both], a[both]]
    return np.concatenate(p), np.concatenate(q)


def laplace_fill(values: np.ndarray, observed: np.ndarray, valid: np.ndarray | None = None
                 ) -> np.ndarray:
    """(C, H, W): the discrete harmonic interpolant on the grid graph of valid pixels.

    Each hidden valid pixel i satisfies sum over valid 4-neighbours j of (u_i - u_j) = 0, with the
    observed pixels as Dirichlet data. Never-valid pixels are not in the graph, so no flux
    crosses into them (a Neumann boundary, as at the grid's edge). A hidden region touching no
    observation has no unique solution and keeps the nearest-neighbour value.
    """
    valid = np.ones_like(observed) if valid is None else valid
    out = nearest_fill(values, observed)
    unknown = valid & ~observed
    if not unknown.any() or not observed.any():
        return out
    number = np.full(observed.size, -1)
    number[unknown.flat] = np.arange(unknown.sum())
    p, q = _grid_edges(valid)
    p, q = p[unknown.flat[p]], q[unknown.flat[p]]  # equations are written at hidden pixels
    inner = unknown.flat[q]
    m = int(unknown.sum())
    degree = np.bincount(number[p], minlength=m).astype(np.float64)
    link = sp.coo_matrix((np.ones(inner.sum()), (number[p[inner]], number[q[inner]])), (m, m))
    flat = values.reshape(len(values), -1)
    rhs = np.zeros((m, len(values)))
    np.add.at(rhs, number[p[~inner]], flat[:, q[~inner]].T)
    # keep only the components that reach an observation (else the system is singular)
    _, component = connected_components(link, directed=False)
    anchored = np.bincount(component, weights=np.bincount(number[p[~inner]], minlength=m)) > 0
    keep = anchored[component]
    A = (sp.diags(degree) - link).tocsr()[keep][:, keep]
    solved = splu(A.tocsc()).solve(rhs[keep])
    targets = np.flatnonzero(unknown.flat)[keep]
    out.reshape(len(values), -1)[:, targets] = solved.T
    return out


FILLS: dict[str, Callable[..., np.ndarray]] = {
    "nearest": nearest_fill, "linear": linear_fill, "laplace": laplace_fill,
}


class InterpReconstructor:
    """A Reconstructor around nearest_fill, linear_fill or laplace_fill; std = 0, no members."""

    def __init__(self, method: Method) -> None:
        if method not in FILLS:
            raise FieldpaintError(f"interpolation method must be one of {', '.join(FILLS)}, "
                                  f"got {method!r}")
        self.name, self.fill = method, FILLS[method]

    def reconstruct(self, obs: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor | None, *,
                    samples: int = 1, seed: int = 0) -> Reconstruction:
        start = time.perf_counter()
        B, C, H, W = obs.shape
        x = obs.detach().cpu().double().numpy()
        valid_np = np.ones((B, 1, H, W), bool) if valid is None else \
            np.broadcast_to(valid.detach().cpu().numpy() > 0.5, (B, 1, H, W))
        observed = np.broadcast_to(mask.detach().cpu().numpy() > 0.5, (B, C, H, W)) \
            & valid_np & np.isfinite(x)
        x = np.where(observed, x, 0.0)
        mean = np.zeros_like(x)
        for b in range(B):
            if (observed[b] == observed[b, :1]).all():  # one mask for all channels
                mean[b] = self.fill(x[b], observed[b, 0], valid_np[b, 0])
            else:
                for c in range(C):
                    mean[b, c] = self.fill(x[b, c:c + 1], observed[b, c], valid_np[b, 0])[0]
        mean = np.where(observed, x, np.where(valid_np, mean, 0.0))
        out = torch.from_numpy(mean).to(obs.device, obs.dtype)
        return Reconstruction(out, torch.zeros_like(out), None, 0, time.perf_counter() - start)
