"""The frames a diffusion method's members are drawn in (DiffusionReconstructor's `frames` and
`symmetries`): member k rolled by k/K of the field along the named periodic axes, after the data's
symmetry k mod their number, and mapped back after sampling."""

from __future__ import annotations

import torch

from fieldpaint.data.symmetry import Symmetry
from fieldpaint.errors import FieldpaintError
from fieldpaint.reconstruct import FRAMES


def member_shift(member: int, members: int, height: int, width: int, frames: str) -> tuple[int, int]:
    """(rows, columns) member `member` of `members` is rolled by: k/K of the field along each axis in
    `frames`, so the K frames are evenly spaced around it and member 0's is the field's own."""
    axes = "" if frames == "fixed" else frames  # ('fixed' has an x in it)
    return (member * height // members if "y" in axes else 0,
            member * width // members if "x" in axes else 0)


def roll_rows(x: torch.Tensor, shifts: list[tuple[int, int]], sign: int = 1) -> torch.Tensor:
    """Row i of (N, ..., H, W) rolled by sign * shifts[i] along (H, W)."""
    return torch.stack([torch.roll(row, (sign * dy, sign * dx), dims=(-2, -1)) for row, (dy, dx) in zip(x, shifts)])


class MemberFrames:
    """The frames of one chunk's members: row i rolled by shifts[i] after symmetries[i] (None: none)."""

    def __init__(self, shifts: list[tuple[int, int]], symmetries: list[Symmetry] | None) -> None:
        self.shifts = None if all(s == (0, 0) for s in shifts) else shifts
        self.symmetries = symmetries

    def __call__(self, x: torch.Tensor, signed: bool = True) -> torch.Tensor:
        if self.symmetries is not None:
            x = torch.stack([g.apply(row, signed) for row, g in zip(x, self.symmetries)])
        return x if self.shifts is None else roll_rows(x, self.shifts)

    def back(self, x: torch.Tensor) -> torch.Tensor:
        x = x if self.shifts is None else roll_rows(x, self.shifts, -1)
        if self.symmetries is not None:
            x = torch.stack([g.invert(row) for row, g in zip(x, self.symmetries)])
        return x


def check_frames(frames: str) -> None:
    if frames not in FRAMES:
        raise FieldpaintError(f"frames must be one of {', '.join(FRAMES)}, got {frames!r}")
