"""`fieldpaint inpaint`: observations in a NetCDF/Zarr file in, reconstructed fields out.

In the input, a pixel is observed where every model variable is finite (and, with a mask
variable, where that variable is 1); everything else is reconstructed. An optional valid
variable (1 = valid) marks never-valid pixels such as land: they are neither observed nor
reconstructed and come out as NaN. Fields are normalised with the run's statistics and every
output is in the data's physical units.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from fieldpaint import __version__
from fieldpaint.data.fields import FieldStats, dataset_layout, read_fields
from fieldpaint.data.io import open_dataset, write_netcdf_atomic
from fieldpaint.errors import DataError, FieldpaintError


@dataclass
class Observations:
    values: np.ndarray  # (N, C, H, W) physical units, NaN where not observed
    mask: np.ndarray  # (N, 1, H, W) bool, True = observed
    valid: np.ndarray  # (N, 1, H, W) bool, False = never valid
    dims: tuple[str, str, str]  # (sample, y, x) names for the output
    coords: dict[str, np.ndarray]


def _read_flag(ds: xr.Dataset, name: str, layout, n: int, what: str) -> np.ndarray:
    if name not in ds.data_vars:
        raise DataError(f"no {what} variable {name!r} in the input; available: {', '.join(map(str, ds.data_vars))}")
    flag = read_fields(ds, [name], layout, np.arange(n))
    if not np.isin(flag[np.isfinite(flag)], (0.0, 1.0)).all():
        raise DataError(f"the {what} variable {name!r} must hold only 0 and 1")
    return np.nan_to_num(flag, nan=0.0) > 0.5


def read_observations(path: str | Path, variables: list[str], *, mask_variable: str | None = None,
                      valid_variable: str | None = None) -> Observations:
    ds = open_dataset(path)
    try:
        layout = dataset_layout(ds, variables, None, None, None)
        n = ds.sizes[layout.sample_dim] if layout.sample_dim else 1
        values = read_fields(ds, variables, layout, np.arange(n), source=str(path))
        if np.isinf(values).any():
            raise DataError(f"{path} has infinite values; use NaN for unobserved pixels")
        valid = (_read_flag(ds, valid_variable, layout, n, "valid") if valid_variable
                 else np.ones((n, 1) + values.shape[-2:], bool))
        mask = np.isfinite(values).all(axis=1, keepdims=True) & valid
        if mask_variable:
            mask &= _read_flag(ds, mask_variable, layout, n, "mask")
        coords = {d: np.asarray(ds[d].values) for d in (layout.y_dim, layout.x_dim) if d in ds.coords}
        dims = (layout.sample_dim or "sample", layout.y_dim, layout.x_dim)
    finally:
        ds.close()
    return Observations(np.where(mask, values, np.nan), mask, valid, dims, coords)


def write_reconstruction(out: Path, obs: Observations, variables: list[str], mean: np.ndarray, std: np.ndarray,
                         members: np.ndarray | None, attrs: dict) -> None:
    s, y, x = obs.dims
    land = ~obs.valid  # (N, 1, H, W)
    data = {"observed": ((s, y, x), obs.mask[:, 0].astype(np.int8))}
    for c, name in enumerate(variables):
        data[name] = ((s, y, x), np.where(land[:, 0], np.nan, mean[:, c]).astype(np.float32))
        data[f"{name}_std"] = ((s, y, x), np.where(land[:, 0], np.nan, std[:, c]).astype(np.float32))
        if members is not None:
            kept = np.where(land[:, None, 0], np.nan, members[:, :, c])
            data[f"{name}_members"] = ((s, "member", y, x), kept.astype(np.float32))
    ds = xr.Dataset(data, coords={d: ((d,), v) for d, v in obs.coords.items()}, attrs=attrs)
    ds["observed"].attrs["meaning"] = "1 = observed (kept exactly), 0 = reconstructed"
    write_netcdf_atomic(ds, out)


def inpaint_file(checkpoint: str | Path, input_path: str | Path, out: str | Path, *, method: str,
                 variables: list[str] | None = None, mask_variable: str | None = None,
                 valid_variable: str | None = None, samples: int = 8, seed: int = 0, overwrite: bool = False,
                 **sampler_options) -> dict:
    """Reconstruct every field of `input_path` with a trained model; returns the output's attributes."""
    from fieldpaint.diffusion.reconstructor import load_reconstructor

    out = Path(out)
    if out.exists() and not overwrite:
        raise FieldpaintError(f"{out} already exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise FieldpaintError(f"folder {out.parent} does not exist")
    if samples < 1:
        raise FieldpaintError(f"--samples must be at least 1 (got {samples})")
    reconstructor, stats, config = load_reconstructor(checkpoint, method, **sampler_options)
    model_variables = list(config.data.variables)
    variables = variables or model_variables
    if len(variables) != len(model_variables):
        raise FieldpaintError(f"the model reconstructs {len(model_variables)} variables ({', '.join(model_variables)}); "
                              f"got {len(variables)}: {', '.join(variables)}")
    obs = read_observations(input_path, variables, mask_variable=mask_variable, valid_variable=valid_variable)
    grid, expected = obs.values.shape[-2:], (config.data.height, config.data.width)
    if tuple(grid) != expected:
        raise FieldpaintError(f"the input grid is {grid[0]}x{grid[1]} but the model was trained on "
                              f"{expected[0]}x{expected[1]}")
    stats = FieldStats(tuple(variables), stats.mean, stats.std)  # the user's names, the run's numbers
    normalised = np.nan_to_num(stats.normalize(obs.values), nan=0.0)
    result = reconstructor.reconstruct(torch.from_numpy(normalised), torch.from_numpy(obs.mask.astype(np.float32)),
                                       torch.from_numpy(obs.valid.astype(np.float32)), samples=samples, seed=seed)
    scale = np.asarray(stats.std, dtype=np.float32).reshape(1, -1, 1, 1)
    mean = stats.denormalize(result.mean.cpu().numpy())
    std = result.std.cpu().numpy() * scale
    members = None if result.members is None else stats.denormalize(result.members.cpu().numpy())
    attrs = {"method": method, "samples": samples, "seed": seed, "nfe": int(result.nfe),
             "seconds": float(result.seconds), "checkpoint": str(checkpoint), "input": str(input_path),
             "fieldpaint_version": __version__, "steps": reconstructor.steps, "eta": float(reconstructor.eta),
             "sigma_y": float(reconstructor.sigma_y)}
    if method == "repaint":
        attrs.update(jump_length=reconstructor.jump_length, jump_n_sample=reconstructor.jump_n_sample)
    write_reconstruction(out, obs, variables, mean, std, members, attrs)
    return attrs
