"""Per-channel normalisation statistics: mean and std over the valid pixels of the train split.

They travel with every run and checkpoint (`FieldStats.to_dict`), so every output can be put
back in the data's physical units.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from fieldpaint.errors import DataError

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)

# A spread below float32's resolution (~1e-7 of the values) is rounding, not signal.
CONSTANT_RTOL = 1e-6
STATS_CHUNK = 256  # samples per float64 block when accumulating statistics


@dataclass(frozen=True)
class FieldStats:
    """Per-channel mean and standard deviation (physical units), saved with every run."""

    variables: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if not len(self.variables) == len(self.mean) == len(self.std):
            raise DataError(f"normalisation statistics: {len(self.variables)} variables but "
                            f"{len(self.mean)} means and {len(self.std)} stds")
        for name, m, s in zip(self.variables, self.mean, self.std):
            if not (np.isfinite(m) and np.isfinite(s) and s > 0):
                raise DataError(f"normalisation statistics for {name!r}: mean {m}, std {s} (need finite, std > 0)")

    def to_dict(self) -> dict[str, list]:
        return {"variables": list(self.variables), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> FieldStats:
        try:
            return cls(tuple(str(v) for v in values["variables"]),
                       tuple(float(m) for m in values["mean"]), tuple(float(s) for s in values["std"]))
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"normalisation statistics are malformed: {err!r}") from None

    def _shaped(self, x: ArrayT) -> tuple[ArrayT, ArrayT]:
        """mean and std as (C, 1, 1) in x's type, dtype and device, to broadcast over (..., C, H, W)."""
        if x.ndim < 3 or x.shape[-3] != len(self.variables):
            raise ValueError(f"expected (..., {len(self.variables)}, H, W), got {tuple(x.shape)}")
        if isinstance(x, torch.Tensor):
            dtype = x.dtype if x.is_floating_point() else torch.float32
            as_t = lambda v: torch.tensor(v, dtype=dtype, device=x.device).view(-1, 1, 1)  # noqa: E731
            return as_t(self.mean), as_t(self.std)
        dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
        return (np.asarray(self.mean, dtype=dtype).reshape(-1, 1, 1),
                np.asarray(self.std, dtype=dtype).reshape(-1, 1, 1))

    def normalize(self, x: ArrayT) -> ArrayT:
        mean, std = self._shaped(x)
        return (x - mean) / std

    def denormalize(self, x: ArrayT) -> ArrayT:
        mean, std = self._shaped(x)
        return x * std + mean


def compute_stats(x: np.ndarray, valid: np.ndarray, variables: Sequence[str]) -> FieldStats:
    """Mean and (population) std per channel of x (N, C, H, W) over valid (N, 1, H, W) pixels.

    Two passes in float64 blocks: exact enough for fields with a large mean (pressure in Pa)
    and no float64 copy of the whole split.
    """
    count = int(valid.sum())
    if count == 0:
        raise DataError("no valid pixel to compute normalisation statistics from")
    mean = _masked_channel_sum(x, valid, lambda b: b) / count
    var = _masked_channel_sum(x, valid, lambda b: (b - mean[:, None, None]) ** 2) / count
    return stats_from_moments(mean, var, variables)


def stats_from_moments(mean: np.ndarray, var: np.ndarray, variables: Sequence[str]) -> FieldStats:
    """FieldStats from per-channel float64 means and variances; DataError for a constant channel."""
    std = np.sqrt(var)
    for name, m, s in zip(variables, mean, std):
        if s <= CONSTANT_RTOL * abs(m) or s == 0:
            raise DataError(f"channel {name!r} is constant over the train split (mean {m:.6g}, std {s:.3g}): "
                            "it cannot be normalised; remove it from data.variables")
    return FieldStats(tuple(variables), tuple(float(m) for m in mean), tuple(float(s) for s in std))


def _masked_channel_sum(x: np.ndarray, valid: np.ndarray, f) -> np.ndarray:
    total = np.zeros(x.shape[1], dtype=np.float64)
    for start in range(0, x.shape[0], STATS_CHUNK):
        block = f(x[start:start + STATS_CHUNK].astype(np.float64))
        total += np.where(valid[start:start + STATS_CHUNK], block, 0.0).sum(axis=(0, 2, 3))
    return total


# ----------------------------------------------------------------------------------------------
# which dims are samples and grid
