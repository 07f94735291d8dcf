"""Batched projected BFGS in a box: many small independent minimisations at once.

Knows nothing about GPs: `fun(x, rows) -> (f, grad)` evaluates rows `rows` of the problem batch
at points x, and every row runs its own iteration and line search.
"""

from __future__ import annotations

from typing import Callable

import torch

Objective = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def bfgs(fun: Objective, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
         groups: torch.Tensor | None = None, *, max_iter: int = 100, gtol: float = 1e-5,
         ftol: float = 1e-9, max_step: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise fun(x[rows], rows) -> (f, grad) for every row of x (P, k) in the box [lo, hi].

    Projected BFGS, each row on its own: variables on a bound whose gradient points outwards
    are held for the step, as in L-BFGS-B (Byrd et al. 1995); the step is capped at max_step in
    the infinity norm, projected into the box and backtracked until Armijo holds (c1 = 1e-4).
    Inverse-Hessian update and initial scaling: Nocedal & Wright (2006) eqs. 6.17 and 6.20.
    A row stops when its free gradient is below gtol, when f improves by under
    ftol (1 + |f|), or when no step is accepted. Rows with the same `groups` value are starts
    of one problem: of two within 0.01 of each other the worse stops. Returns (x, f) at the end.
    """
    P, k = x.shape
    dev = x.device
    lo, hi = lo.to(dev, x.dtype), hi.to(dev, x.dtype)
    groups = torch.arange(P, device=dev) if groups is None else groups.to(dev)
    x, eye = x.clamp(lo, hi), torch.eye(k, dtype=x.dtype, device=dev)
    H, fresh = eye.repeat(P, 1, 1), torch.ones(P, dtype=torch.bool, device=dev)
    f, g = fun(x, torch.arange(P, device=dev))
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
        p = p * (max_step / p.abs().amax(-1).clamp_min(max_step))[:, None]
        step = torch.ones(len(a), dtype=x.dtype, device=dev)
        moved = torch.zeros(len(a), dtype=torch.bool, device=dev)
        x_new, f_new, g_new = xa.clone(), f[a].clone(), ga.clone()
        todo = torch.arange(len(a), device=dev)
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
