"""The dataset file format: write it atomically and reproducibly, open any supported file lazily.

A fieldpaint dataset is one NetCDF4 file (or a Zarr store) holding

- one float32 data variable per channel, dims (sample, y, x);
- a `split` variable, dims (sample,), of 'train'/'test' strings;
- optional 1-D coordinates `y` and `x`;
- global attributes describing how it was made (generator, kernel, seed, ...).

Writes are atomic (temp name in the same folder, fsync, rename), so a crash never leaves a half
file and never damages an existing one, and reproducible: the same arrays give the same bytes.
netCDF-C turns HDF5's per-object modification times off, so its files carry no timestamps; the
only environment-dependent bytes are the `_NCProperties` library versions. Zarr metadata is
plain JSON in insertion order.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xarray as xr

from fieldpaint.atomic import fsync_path, temp_sibling, write_atomic
from fieldpaint.errors import DataError

SPLIT_VARIABLE = "split"
SPLIT_VALUES = ("train", "test")
DIMS = ("sample", "y", "x")
NetcdfEngine = Literal["netcdf4", "h5netcdf"]


def is_zarr_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".zarr"


# ----------------------------------------------------------------------------------------------
# writing


def build_dataset(channels: Mapping[str, np.ndarray], split: np.ndarray, attrs: Mapping[str, Any],
                  coords: Mapping[str, np.ndarray] | None = None) -> xr.Dataset:
    """Check the arrays and assemble the in-memory dataset that `write_dataset` stores."""
    if not channels:
        raise DataError("a dataset needs at least one channel")
    if SPLIT_VARIABLE in channels:
        raise DataError(f"{SPLIT_VARIABLE!r} is reserved for the train/test split; rename that channel")
    shapes = {name: np.shape(a) for name, a in channels.items()}
    shape = next(iter(shapes.values()))
    if len(shape) != 3 or len(set(shapes.values())) != 1:
        raise DataError(f"every channel must be (sample, y, x) of one shape; got {shapes}")
    split = np.asarray(split)
    if split.shape != (shape[0],):
        raise DataError(f"split has shape {split.shape}, expected ({shape[0]},) for {shape[0]} samples")
    bad = sorted(set(split.tolist()) - set(SPLIT_VALUES))
    if bad:
        raise DataError(f"split values must be 'train' or 'test'; found {bad}")
    data_vars: dict[str, Any] = {name: (DIMS, np.asarray(a, dtype=np.float32)) for name, a in channels.items()}
    # Object dtype is stored as variable-length strings: NetCDF's NC_STRING and Zarr v3's
    # standard "string" type (fixed-width unicode has no Zarr v3 spec and warns).
    data_vars[SPLIT_VARIABLE] = (("sample",), split.astype(object))
    coord_vars = {dim: ((dim,), np.asarray(values)) for dim, values in (coords or {}).items()}
    return xr.Dataset(data_vars, coords=coord_vars, attrs=_check_attrs(attrs))


def _check_attrs(attrs: Mapping[str, Any]) -> dict[str, str | int | float]:
    out: dict[str, str | int | float] = {}
    for key, value in attrs.items():
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise DataError(f"attribute {key!r}: {value!r} is not a str, int or float")
        out[str(key)] = value
    return out


def write_dataset(path: str | Path, channels: Mapping[str, np.ndarray], split: np.ndarray,
                  attrs: Mapping[str, Any], *, overwrite: bool = False,
                  coords: Mapping[str, np.ndarray] | None = None) -> Path:
    """Write channels (each (sample, y, x)) and the split to `path` (.nc or .zarr); return the path.

    Refuses to replace an existing file unless `overwrite`. Same input, same bytes.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise DataError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it")
    if not path.parent.is_dir():
        raise DataError(f"folder {path.parent} does not exist")
    ds = build_dataset(channels, split, attrs, coords)
    if is_zarr_path(path):
        _write_zarr_atomic(ds, path)
    else:
        write_netcdf_atomic(ds, path, overwrite=overwrite)
    return path


def write_netcdf_atomic(ds: xr.Dataset, path: Path, *, overwrite: bool = True) -> None:
    """Write `ds` as NetCDF4 through the atomic writer (no-clobber unless `overwrite`)."""
    # netCDF-C (not h5py) because it disables HDF5 object timestamps: reproducible bytes.
    write_atomic(path, lambda tmp: ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4"), overwrite=overwrite)


def _write_zarr_atomic(ds: xr.Dataset, path: Path) -> None:
    """Write to a temp folder, then swap it in; an old store is moved aside first, removed last."""
    tmp, old = temp_sibling(path), temp_sibling(path)
    try:
        # Consolidated metadata is not part of the Zarr v3 spec (zarr warns); a few small JSON
        # files are cheap to read without it.
        ds.to_zarr(tmp, mode="w-", consolidated=False)
        for root, _, files in os.walk(tmp):
            for name in files:
                fsync_path(Path(root) / name)
        if path.exists():
            os.replace(path, old)  # a directory cannot be replaced in one step
        os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException:
        if old.exists() and not path.exists():
            os.replace(old, path)  # put the old store back
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# reading


def open_dataset(path: str | Path, *, engine: NetcdfEngine | None = None) -> xr.Dataset:
    """Open a NetCDF file, a Zarr store or an .npz archive lazily (values are read on access).

    `engine` chooses the NetCDF reader; None = netCDF4, or h5netcdf where netCDF4 is missing.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"no such file: {path}")
    try:
        if is_zarr_path(path) or (path / "zarr.json").exists() or (path / ".zgroup").exists():
            return _open_zarr(path)
        if path.suffix.lower() == ".npz":
            return _open_npz(path)
        return xr.open_dataset(path, engine=engine or _default_netcdf_engine())
    except DataError:
        raise
    except Exception as err:  # the backends raise OSError, ValueError, KeyError, ... for bad files
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"cannot read {path} as a dataset: {reason}") from None


def _open_zarr(path: Path) -> xr.Dataset:
    # chunks=None: lazy indexing without dask. consolidated=None reads stores with or without
    # consolidated metadata; without it (our own stores) xarray warns about speed: not a problem.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Failed to open Zarr store with consolidated", RuntimeWarning)
        ds = xr.open_dataset(path, engine="zarr", chunks=None, consolidated=None)
    # A store's members have no order (they come as the filesystem lists them): sort them, so
    # the default channel order (every gridded variable, in order) is the same on every read.
    return ds[sorted(ds.data_vars, key=str)]


def _default_netcdf_engine() -> NetcdfEngine:
    try:
        import netCDF4  # noqa: F401
    except ImportError:
        return "h5netcdf"
    return "netcdf4"


def _open_npz(path: Path) -> xr.Dataset:
    """An .npz of (sample, y, x) or (y, x) arrays, plus an optional 1-D `split`, as a Dataset."""
    with np.load(path, allow_pickle=False) as archive:
        data_vars = {}
        for name in archive.files:
            array = archive[name]
            dims = ("sample",) if array.ndim == 1 else DIMS[-array.ndim:] if array.ndim <= 3 else \
                tuple(f"dim_{i}" for i in range(array.ndim))
            data_vars[name] = (dims, array)
    return xr.Dataset(data_vars)
