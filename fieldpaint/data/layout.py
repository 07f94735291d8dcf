"""How a file's variables map to (sample, y, x): dims named or detected, and which variables are fields."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import xarray as xr

from fieldpaint.data.io import SPLIT_VARIABLE, open_dataset
from fieldpaint.errors import DataError

SAMPLE_DIM_NAMES = ("sample", "samples", "time", "t", "member", "ensemble", "realization",
                    "number", "init_time", "valid_time", "step", "record", "n", "index")
Y_DIM_NAMES = ("y", "lat", "latitude", "rows", "row", "nlat", "ny", "yc", "rlat", "south_north")
X_DIM_NAMES = ("x", "lon", "longitude", "cols", "col", "columns", "nlon", "nx", "xc", "rlon", "west_east")

FLAG_NAMES = ("mask", "valid", "land", "land_mask", "landmask", "lsm", "sea_mask", "observed", "split")
FLAG_ATTRS = ("flag_values", "flag_meanings", "flag_masks")


@dataclass(frozen=True)
class GridLayout:
    """How a variable's dims map to (sample, y, x); `squeeze` lists its extra size-1 dims."""

    sample_dim: str | None  # None: the variable is one sample
    y_dim: str
    x_dim: str
    squeeze: tuple[str, ...] = ()


def _match(dims: Sequence[str], names: Sequence[str], taken: set) -> str | None:
    for dim in dims:
        if dim not in taken and dim.lower() in names:
            return dim
    return None


def find_layout(name: str, dims: Sequence[str], sizes: Mapping[str, int], sample_dim: str | None = None,
                y_dim: str | None = None, x_dim: str | None = None) -> GridLayout:
    """Dims named in the config, else detected by usual names, else the last two free dims (C order)."""
    dims = tuple(str(d) for d in dims)
    for key, given in (("sample_dim", sample_dim), ("y_dim", y_dim), ("x_dim", x_dim)):
        if given is not None and given not in dims:
            raise DataError(f"data.{key} {given!r} is not a dimension of variable {name!r} (its dims: {dims})")
    y = y_dim or _match(dims, Y_DIM_NAMES, {sample_dim, x_dim})
    x = x_dim or _match(dims, X_DIM_NAMES, {sample_dim, y})
    free = [d for d in dims if d not in {sample_dim, y, x} and d.lower() not in SAMPLE_DIM_NAMES]
    x = x or (free.pop() if free else None)
    y = y or (free.pop() if free else None)
    if y is None or x is None:
        raise DataError(f"variable {name!r} has dims {dims}: fewer than two spatial dims "
                        "(need y and x; set data.y_dim and data.x_dim if they have other names)")
    rest = [d for d in dims if d not in (y, x)]
    sample = sample_dim or _match(rest, SAMPLE_DIM_NAMES, set())
    big = [d for d in rest if sizes[d] > 1]
    if sample is None and len(big) == 1:
        sample = big[0]  # one unnamed non-grid dim: it can only be the samples
    extra = [d for d in big if d != sample]
    if extra:
        listed = ", ".join(f"{d!r} (size {sizes[d]})" for d in extra)
        raise DataError(f"variable {name!r} has extra non-singleton dims {listed} besides sample {sample!r}, "
                        f"y {y!r}, x {x!r}: select one value of each first, or name data.sample_dim")
    return GridLayout(sample, y, x, tuple(d for d in rest if d != sample))


def dataset_layout(ds: xr.Dataset, variables: Sequence[str], sample_dim: str | None,
                   y_dim: str | None, x_dim: str | None) -> GridLayout:
    """The layout shared by all `variables`; DataError when one is missing or they disagree."""
    available = [str(v) for v in ds.data_vars if v != SPLIT_VARIABLE]
    layouts = []
    for name in variables:
        if name not in ds.data_vars or name == SPLIT_VARIABLE:
            raise DataError(f"no variable {name!r} in the data; available: {', '.join(available) or 'none'}")
        da = ds[name]
        if da.dtype.kind not in "fiu":
            raise DataError(f"variable {name!r} is not numeric (dtype {da.dtype})")
        layouts.append(find_layout(name, da.dims, da.sizes, sample_dim, y_dim, x_dim))
    first = layouts[0]
    for name, layout in zip(variables, layouts):
        same = (layout.sample_dim, layout.y_dim, layout.x_dim) == (first.sample_dim, first.y_dim, first.x_dim)
        if not same:
            raise DataError(f"variables {variables[0]!r} and {name!r} have different dims "
                            f"({first.sample_dim}, {first.y_dim}, {first.x_dim}) vs "
                            f"({layout.sample_dim}, {layout.y_dim}, {layout.x_dim})")
    return first


def gridded_variables(ds: xr.Dataset) -> list[str]:
    """The data variables that are fields, in file order: numeric, with both spatial dims and the
    largest number of dims any such variable has (so a 2-D land mask beside (time, y, x) fields
    is left out), not the split and not 0/1 flags. A file may name its own in a global attribute
    `default_variables` ("u,v": the Kolmogorov generator's velocity, whose vorticity is derived)."""
    declared = [v.strip() for v in str(ds.attrs.get("default_variables", "")).split(",") if v.strip()]
    if declared and all(v in ds.data_vars for v in declared):
        return declared
    candidates = []
    bounds = {str(v.attrs.get("bounds")) for v in ds.variables.values() if "bounds" in v.attrs}
    for name, da in ds.data_vars.items():
        if name == SPLIT_VARIABLE or da.dtype.kind not in "fiu" or da.ndim < 2 or name in bounds:
            continue
        if str(name).lower() in FLAG_NAMES or any(k in da.attrs for k in FLAG_ATTRS):
            continue  # a mask: CF flags (flag_values / flag_meanings / flag_masks) or a usual mask name
        try:
            find_layout(str(name), da.dims, da.sizes)
        except DataError:
            continue
        candidates.append((str(name), da))
    if not candidates:
        return []
    most = max(da.ndim for _, da in candidates)
    return [name for name, da in candidates if da.ndim == most and da.dtype.kind == "f"] or \
        [name for name, da in candidates if da.ndim == most]


def file_variables(path: str | Path) -> list[str]:
    """`gridded_variables` of a file; DataError when it has none."""
    with open_dataset(path) as ds:
        names = gridded_variables(ds)
    if not names:
        raise DataError(f"{path} has no gridded data variable (one with two spatial dims)")
    return names


def file_grid(path: str | Path, variables: Sequence[str] = (), sample_dim: str | None = None,
              y_dim: str | None = None, x_dim: str | None = None) -> tuple[list[str], tuple[int, int]]:
    """(variables, (H, W)) of a file as a config reads it: the named variables (all of them must
    exist and share one layout), else every gridded data variable in file order; the grid of
    their (y, x) dims. Reads only metadata."""
    with open_dataset(path) as ds:
        names = list(variables) or gridded_variables(ds)
        if not names:
            raise DataError(f"{path} has no gridded data variable (one with two spatial dims)")
        layout = dataset_layout(ds, names, sample_dim, y_dim, x_dim)
        return names, (int(ds.sizes[layout.y_dim]), int(ds.sizes[layout.x_dim]))
