"""Discrete symmetries a dataset declares: maps of the grid onto itself that leave the fields'
distribution unchanged, so a reconstruction may be drawn in any of their frames and mapped back.

A symmetry is a reflection along some axes, then a roll by a fraction of the field, then a sign per
variable: T(x)_c = s_c · roll(reflect(x), shift). On an axis the field wraps around on, the
reflection is j -> -j mod n (about index 0, where a spectral grid's origin lies); on another it is
j -> n-1-j, and no roll is allowed. A file declares them in its `symmetries` attribute as JSON, e.g.
the Kolmogorov generator's (its forcing sin(k_f y) e_x is odd about y = 0 and changes sign over
half a period, π/k_f):

    [{"reflect": "xy", "shift": [0, 0], "signs": {"u": -1, "v": -1, "vorticity": 1}},
     {"reflect": "x", "shift": [-0.125, 0], "signs": {"u": -1, "v": 1, "vorticity": -1}},
     {"reflect": "y", "shift": [0.125, 0], "signs": {"u": 1, "v": -1, "vorticity": -1}}]

(the point reflection (x, y) -> (-x, -y); the shift-reflect (x, y) -> (-x, y + π/k_f), u -> -u; and
their product). Shifts are (rows, columns) as fractions of the grid and must land on whole pixels.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fieldpaint.errors import DataError

SYMMETRY_SETTINGS = ("auto", "none")  # data.symmetries: the file's `symmetries` attribute, or none


@dataclass(frozen=True)
class Symmetry:
    """One declared symmetry on a (H, W) grid: reflected axes ('y', 'x' or both), a roll in pixels
    (rows, columns), whether each axis wraps around (y, x), and one sign per channel."""

    reflect: str
    shift: tuple[int, int]
    periodic: tuple[bool, bool]
    signs: tuple[float, ...]
    # Normalised fields z = (x - m) / σ: a sign s on x is z -> s z + (s - 1) m / σ there (`normalised`).
    offsets: tuple[float, ...] = ()

    def apply(self, x: torch.Tensor, signed: bool = True) -> torch.Tensor:
        """T(x) for (..., C, H, W) fields, C = len(signs); with `signed` False (a mask, a valid map,
        a noise std) only moved."""
        if self.is_identity:
            return x
        out = torch.roll(_reflect(x, self.reflect, self.periodic), self.shift, dims=(-2, -1))
        return self._signed(out) if signed else out

    def invert(self, x: torch.Tensor, signed: bool = True) -> torch.Tensor:
        """T⁻¹(x): the signs, the roll back, the reflection (an involution), in that order."""
        if self.is_identity:
            return x
        back = torch.roll(self._signed(x) if signed else x, (-self.shift[0], -self.shift[1]), dims=(-2, -1))
        return _reflect(back, self.reflect, self.periodic)

    def describe(self) -> str:
        """E.g. 'reflected along x, rolled by (-4, 0) pixels, signs -1, 1'."""
        parts = [f"reflected along {' and '.join(self.reflect)}"] if self.reflect else []
        if self.shift != (0, 0):
            parts.append(f"rolled by {self.shift} pixels (rows, columns)")
        parts.append("signs " + ", ".join(f"{s:+.0f}" for s in self.signs))
        return ", ".join(parts)

    @property
    def is_identity(self) -> bool:
        return not self.reflect and self.shift == (0, 0) and all(s == 1 for s in self.signs)

    def normalised(self, mean: Sequence[float], std: Sequence[float]) -> "Symmetry":
        """The same symmetry acting on fields normalised with per-channel `mean` and `std`."""
        offsets = tuple((s - 1.0) * m / d for s, m, d in zip(self.signs, mean, std))
        return dataclasses.replace(self, offsets=offsets if any(offsets) else ())

    def _signed(self, x: torch.Tensor) -> torch.Tensor:  # an involution: s (s z + o) + o = z when s o = -o
        if all(s == 1 for s in self.signs):
            return x
        out = x * torch.tensor(self.signs, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        if self.offsets:
            out = out + torch.tensor(self.offsets, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return out


def identity(periodic: tuple[bool, bool], channels: int) -> Symmetry:
    return Symmetry("", (0, 0), periodic, (1.0,) * channels)


def in_random_frames(x: torch.Tensor, valid: torch.Tensor, symmetries: Sequence[Symmetry],
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, H, W) fields and their (N, 1, H, W) valid maps, each field moved into the frame of a
    symmetry drawn uniformly from `symmetries` (training augmentation); never-valid pixels stay 0."""
    picks = torch.randint(len(symmetries), (len(x),), generator=generator)
    x, valid = x.clone(), valid.clone()
    for k, g in enumerate(symmetries):
        rows = picks == k
        if g.is_identity or not bool(rows.any()):
            continue
        x[rows] = g.apply(x[rows])
        valid[rows] = g.apply(valid[rows], signed=False)
    return x * valid, valid  # a sign's offset (normalised units) must not reach a never-valid pixel


def _reflect(x: torch.Tensor, axes: str, periodic: tuple[bool, bool]) -> torch.Tensor:
    for axis, dim, wraps in (("y", -2, periodic[0]), ("x", -1, periodic[1])):
        if axis in axes:
            x = torch.flip(x, (dim,))
            if wraps:  # n-1-j -> -j mod n
                x = torch.roll(x, 1, dims=dim)
    return x


def data_symmetries(setting: str, attrs: Mapping[str, Any], variables: Sequence[str],
                    periodic: tuple[bool, bool], grid: tuple[int, int], stats=None) -> tuple[Symmetry, ...]:
    """The frames a reconstruction may be drawn in: the identity first, then every symmetry the file
    declares (`attrs['symmetries']`) for these variables on this grid, acting on fields normalised by
    `stats` (FieldStats; None: physical units); only the identity with setting 'none' or no
    declaration. A declaration that is malformed, misses one of `variables`, or does not fit the
    grid is a DataError."""
    if setting not in SYMMETRY_SETTINGS:
        raise DataError(f"symmetries must be one of {', '.join(SYMMETRY_SETTINGS)}, got {setting!r}")
    declared = attrs.get("symmetries") if setting == "auto" else None
    found = [identity(periodic, len(variables))]
    if declared is None or str(declared).strip() in ("", "[]"):
        return tuple(found)
    try:
        entries = json.loads(str(declared))
    except json.JSONDecodeError as err:
        raise DataError(f"the file's `symmetries` attribute is not JSON ({err.msg}); set data.symmetries: none "
                        "to ignore it") from None
    if not isinstance(entries, list):
        raise DataError("the file's `symmetries` attribute must be a JSON list of symmetries")
    parsed = [parse_symmetry(e, variables, periodic, grid) for e in entries]
    if stats is not None:
        parsed = [g.normalised(stats.mean, stats.std) for g in parsed]
    return tuple(found + parsed)


def parse_symmetry(entry: Any, variables: Sequence[str], periodic: tuple[bool, bool],
                   grid: tuple[int, int]) -> Symmetry:
    """One declared symmetry (see the module's docstring) as a Symmetry on `grid`."""
    if not isinstance(entry, dict) or set(entry) - {"reflect", "shift", "signs"}:
        raise DataError(f"a symmetry is {{'reflect', 'shift', 'signs'}}, got {entry!r}")
    reflect, shift, signs = str(entry.get("reflect", "")), entry.get("shift", [0, 0]), entry.get("signs", {})
    if set(reflect) - set("xy"):
        raise DataError(f"a symmetry's reflect names axes among 'x' and 'y', got {reflect!r}")
    if not (isinstance(shift, list) and len(shift) == 2 and all(isinstance(s, (int, float)) for s in shift)):
        raise DataError(f"a symmetry's shift is [rows, columns] as fractions of the grid, got {shift!r}")
    pixels = []
    for axis, fraction, size, wraps in zip("yx", shift, grid, periodic):
        if fraction and not wraps:
            raise DataError(f"a symmetry shifts along {axis}, which the data does not wrap around on")
        if abs(fraction * size - round(fraction * size)) > 1e-6:
            raise DataError(f"a symmetry's shift of {fraction} of the {size} pixels along {axis} is not a whole "
                            "number of pixels on this grid")
        pixels.append(round(fraction * size))
    if not isinstance(signs, dict) or any(s not in (1, -1) for s in signs.values()):
        raise DataError(f"a symmetry's signs map variables to 1 or -1, got {signs!r}")
    missing = [v for v in variables if v not in signs]
    if missing:
        raise DataError(f"a symmetry declares no sign for variable(s) {missing}; set data.symmetries: none "
                        "for variables it does not cover")
    return Symmetry(reflect, (pixels[0], pixels[1]), periodic, tuple(float(signs[v]) for v in variables))


def kolmogorov_symmetries(forcing_wavenumber: int) -> str:
    """The Kolmogorov box's discrete symmetries (its `symmetries` attribute): the point reflection,
    the shift-reflect by half a forcing period along y, and their product (the module's docstring)."""
    half = 1.0 / (2 * forcing_wavenumber)  # π/k_f of the 2π box
    return json.dumps([
        {"reflect": "xy", "shift": [0, 0], "signs": {"u": -1, "v": -1, "vorticity": 1}},
        {"reflect": "x", "shift": [-half, 0], "signs": {"u": -1, "v": 1, "vorticity": -1}},
        {"reflect": "y", "shift": [half, 0], "signs": {"u": 1, "v": -1, "vorticity": -1}},
    ])
