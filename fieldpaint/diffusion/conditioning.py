"""Observation masks as tensors, and the conditioning input that conditional models see.

Convention (DESIGN.md): mask 1 = observed, 0 = hidden; never-valid pixels are never observed.
"""

from __future__ import annotations

import numpy as np
import torch

from fieldpaint.config import MasksConfig
from fieldpaint.data.masks import make_masks


def conditioning_input(x0: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[mask, known values] (B, 1 + C, H, W): known values are x0 where observed and 0 where hidden."""
    return torch.cat([mask, x0 * mask], dim=1)


def draw_training_masks(valid: torch.Tensor, masks: MasksConfig, seed: int) -> torch.Tensor:
    """One mask per sample from `masks.family` (weighted by `masks.mixed_weights`), coverage uniform
    in `masks.coverage`, (B, 1, H, W).

    Depends only on `seed` and the valid pixels, so a step's masks are the same on resume.
    """
    n, _, h, w = valid.shape
    rng = np.random.default_rng(seed)
    low, high = masks.coverage
    coverage = rng.uniform(low, high, size=n)
    valid_np = valid[:, 0].cpu().numpy() > 0.5
    drawn = make_masks(masks.family, coverage, n, h, w, valid=valid_np, seed=int(rng.integers(2**31)),
                       mixed_weights=masks.mixed_weights)
    return torch.from_numpy(np.ascontiguousarray(drawn)).to(valid.dtype)
