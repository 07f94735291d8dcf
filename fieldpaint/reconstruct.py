"""The one interface every reconstruction method shares: diffusion samplers and baselines alike.

A `Reconstructor` turns observations and a mask into a mean field, a per-pixel standard deviation
and, for ensemble methods, the members. Everything is in normalised units (the run's statistics);
callers denormalise. The evaluation harness treats all methods alike through this interface.

Shapes: obs (B, C, H, W) with anything at hidden pixels (they are ignored), mask (B, 1, H, W) with
1 = observed, 0 = hidden, valid (B, 1, H, W) with 0 at never-valid pixels (no observation, no score).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class Reconstruction:
    mean: torch.Tensor  # (B, C, H, W)
    std: torch.Tensor  # (B, C, H, W) predictive standard deviation; 0 where observed exactly
    members: torch.Tensor | None = None  # (B, K, C, H, W) ensemble members, None for Gaussian methods
    nfe: int = 0  # network evaluations per member (0 for baselines)
    seconds: float = 0.0  # wall time for the whole batch


class Reconstructor(Protocol):
    name: str

    def reconstruct(self, obs: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor, *,
                    samples: int = 1, seed: int = 0) -> Reconstruction:
        """Reconstruct every hidden valid pixel of each field from its observed pixels."""
        ...


def ensemble_summary(members: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) over the member axis of (B, K, C, H, W); std is 0 for a single member."""
    mean = members.mean(dim=1)
    std = members.std(dim=1, unbiased=True) if members.shape[1] > 1 else torch.zeros_like(mean)
    return mean, std
