"""Observations as padded batches, one row per (field, channel), and the training-mean trend."""

from __future__ import annotations

import numpy as np
import torch

from fieldpaint.baselines.gp.kernels import DTYPE
from fieldpaint.errors import FieldpaintError


def observations(obs: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor | None,
                 trend: torch.Tensor | None = None, device: torch.device | str = "cpu"
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(values, observed, valid) as (B*C, H*W) on `device`: float64 values minus the trend
    (C, H, W), observed = mask & valid & finite. (The GP runs in float64 wherever inputs live.)"""
    if obs.ndim != 4:
        raise FieldpaintError(f"obs must be (B, C, H, W), got shape {tuple(obs.shape)}")
    B, C, H, W = obs.shape
    obs = obs.detach().to(device)
    valid = torch.ones(1, 1, H, W, dtype=torch.bool, device=device) if valid is None \
        else torch.as_tensor(valid).to(device) > 0.5
    try:
        valid = torch.broadcast_to(valid, (B, C, H, W))
        observed = torch.broadcast_to(torch.as_tensor(mask).to(device) > 0.5, (B, C, H, W)) \
            & valid & obs.isfinite()
    except RuntimeError:
        raise FieldpaintError(f"mask {tuple(mask.shape)} / valid do not match obs "
                              f"{tuple(obs.shape)}; expected (B, 1 or C, H, W)") from None
    values = obs.to(DTYPE).nan_to_num(0.0, 0.0, 0.0)
    if trend is not None:
        values = values - trend_tensor(trend, C, H, W, device)
    return values.reshape(B * C, H * W), observed.reshape(B * C, H * W), valid.reshape(B * C, H * W)


def trend_tensor(trend: torch.Tensor, C: int, H: int, W: int, device) -> torch.Tensor:
    """The trend as a float64 (C, H, W) tensor on device; an error for any other shape."""
    trend = torch.as_tensor(trend).to(device, DTYPE)
    if tuple(trend.shape) != (C, H, W):
        raise FieldpaintError(f"trend must be (C, H, W) = {(C, H, W)}, got {tuple(trend.shape)}")
    return trend.nan_to_num(0.0, 0.0, 0.0)


def mean_field(fields: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """The training-mean field (C, H, W), float64: the mean over fields (N, C, H, W) of each
    pixel where valid (N or 1, 1 or C, H, W) and finite; 0 where no field is valid."""
    fields = torch.as_tensor(fields).detach()
    ok = fields.isfinite()
    if valid is not None:
        ok = ok & (torch.as_tensor(valid).to(fields.device) > 0.5)
    total = torch.where(ok, fields.to(DTYPE), 0.0).sum(0)
    return total / ok.sum(0).clamp_min(1)


def pack(flags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, N) bool -> (index (P, k), present (P, k)): each row's True positions, padded, k = max.
    Padding repeats index 0 (callers mask it with `present`)."""
    counts = flags.sum(1)
    k = int(counts.max()) if flags.numel() else 0
    order = torch.argsort((~flags).to(torch.int8), dim=1, stable=True)[:, :k]
    present = torch.arange(k, device=flags.device) < counts[:, None]
    return torch.where(present, order, 0), present


def subsample(flags: torch.Tensor, max_points: int, seed: int) -> torch.Tensor:
    """Keep at most max_points True per row, chosen at random; row p draws from (seed, p)."""
    flags = flags.clone()
    for p in torch.nonzero(flags.sum(1) > max_points).flatten().tolist():
        where = torch.nonzero(flags[p]).flatten().cpu().numpy()
        drop = np.random.default_rng((seed, p)).permutation(where)[max_points:]
        flags[p, torch.from_numpy(drop).to(flags.device)] = False
    return flags


def design_points(valid: torch.Tensor, points: int, seed: int, patch_fraction: float = 0.5
                  ) -> torch.Tensor:
    """(N, H*W) bool: `points` pixels per field for a likelihood fit on fully known fields.

    Half in one random square patch (every lag of 1-2 px, which pins down the smoothness nu and
    the nugget), half scattered at random over the field (long lags, which pin down the length
    scale); only valid pixels. Field i draws from (seed, i). Any design independent of the
    values gives a valid likelihood; this one covers short and long lags with few points.
    """
    N, HW = valid.shape[0], valid[0].numel()
    H, W = valid.shape[-2:]
    flags = torch.zeros(N, HW, dtype=torch.bool)
    side = max(1, min(H, W, int(round((patch_fraction * points) ** 0.5))))
    for i in range(N):
        rng = np.random.default_rng((seed, i))
        ok = valid[i].reshape(H, W).cpu().numpy()
        y0, x0 = rng.integers(0, H - side + 1), rng.integers(0, W - side + 1)
        take = np.zeros((H, W), bool)
        take[y0:y0 + side, x0:x0 + side] = True
        take &= ok
        rest = np.flatnonzero(ok & ~take)
        extra = rng.choice(rest, min(len(rest), max(0, points - int(take.sum()))), replace=False)
        take = take.reshape(-1)
        take[extra] = True
        flags[i] = torch.from_numpy(take)
    return flags


def grid(height: int, width: int, device="cpu") -> torch.Tensor:
    """(H*W, 2) float64 pixel coordinates (row, column) in raster order."""
    yy, xx = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device),
                            indexing="ij")
    return torch.stack([yy.flatten(), xx.flatten()], -1).to(DTYPE)
