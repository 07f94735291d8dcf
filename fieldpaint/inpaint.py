"""Observations in an xarray Dataset (or a NetCDF/Zarr file) in, a CF-compliant reconstruction out.

In the input, a pixel is observed where every variable is finite (and, with a mask variable,
where that variable is 1); everything else is reconstructed. An optional valid variable
(1 = valid) marks never-valid pixels such as land: they are neither observed nor reconstructed
and come out as the fill value. Fields are normalised with the run's statistics (or, for a
baseline without a run, with the observations' own) and every output is in the data's units.

The output carries every coordinate of the input variables (time, lat, lon, auxiliary 2-D
coordinates) with their attributes, each variable's attributes (units, standard_name, long_name),
`_FillValue` on never-valid pixels, the ensemble members along a `realization` dimension
(standard_name: realization) and a `history` line, so CF tools and ensemble scores over
`realization` (e.g. CRPS with xskillscore or scoringrules) read it as it is.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from fieldpaint import __version__
from fieldpaint.data.fields import FieldStats, dataset_layout, read_fields
from fieldpaint.data.io import open_dataset, write_netcdf_atomic
from fieldpaint.errors import DataError, FieldpaintError

FILL_VALUE = np.float32(9.969209968386869e36)  # netCDF's default float fill (NC_FILL_FLOAT)
MEMBER_DIM = "realization"
CARRIED_ATTRS = ("units", "standard_name", "long_name", "valid_min", "valid_max", "comment")


@dataclass
class Observations:
    values: np.ndarray  # (N, C, H, W) physical units, NaN where not observed
    mask: np.ndarray  # (N, 1, H, W) bool, True = observed
    valid: np.ndarray  # (N, 1, H, W) bool, False = never valid
    dims: tuple[str, str, str]  # (sample, y, x) names for the output
    coords: dict[str, xr.DataArray] = field(default_factory=dict)  # every coordinate of the variables
    variable_attrs: dict[str, dict] = field(default_factory=dict)
    global_attrs: dict = field(default_factory=dict)


def _read_flag(ds: xr.Dataset, name: str, layout, n: int, what: str) -> np.ndarray:
    if name not in ds.data_vars:
        raise DataError(f"no {what} variable {name!r} in the input; available: {', '.join(map(str, ds.data_vars))}")
    flag = read_fields(ds, [name], layout, np.arange(n))
    if not np.isin(flag[np.isfinite(flag)], (0.0, 1.0)).all():
        raise DataError(f"the {what} variable {name!r} must hold only 0 and 1")
    return np.nan_to_num(flag, nan=0.0) > 0.5


def observations_from_dataset(ds: xr.Dataset, variables: list[str], *, mask_variable: str | None = None,
                              valid_variable: str | None = None, source: str = "the input") -> Observations:
    layout = dataset_layout(ds, variables, None, None, None)
    n = ds.sizes[layout.sample_dim] if layout.sample_dim else 1
    values = read_fields(ds, variables, layout, np.arange(n), source=source)
    if np.isinf(values).any():
        raise DataError(f"{source} has infinite values; use NaN for unobserved pixels")
    valid = (_read_flag(ds, valid_variable, layout, n, "valid") if valid_variable
             else np.ones((n, 1) + values.shape[-2:], bool))
    mask = np.isfinite(values).all(axis=1, keepdims=True) & valid
    if mask_variable:
        mask &= _read_flag(ds, mask_variable, layout, n, "mask")
    grid_dims = {d for d in (layout.sample_dim, layout.y_dim, layout.x_dim) if d}
    coords = {str(k): c.load() for k, c in ds[variables[0]].coords.items() if set(c.dims) <= grid_dims}
    dims = (layout.sample_dim or "sample", layout.y_dim, layout.x_dim)
    return Observations(np.where(mask, values, np.nan), mask, valid, dims, coords,
                        {v: dict(ds[v].attrs) for v in variables}, dict(ds.attrs))


def read_observations(path: str | Path, variables: list[str], *, mask_variable: str | None = None,
                      valid_variable: str | None = None) -> Observations:
    with open_dataset(path) as ds:
        return observations_from_dataset(ds, variables, mask_variable=mask_variable, valid_variable=valid_variable,
                                          source=str(path))


def _described(attrs: dict, what: str, statistic: str | None = None) -> dict:
    """The input variable's attributes, with the long name saying which statistic this is."""
    kept = {k: attrs[k] for k in CARRIED_ATTRS if k in attrs}
    name = attrs.get("long_name", attrs.get("standard_name", ""))
    kept["long_name"] = f"{name} {what}".strip()
    if statistic and "standard_name" in attrs:
        kept["standard_name"] = f"{attrs['standard_name']} {statistic}"  # a CF standard-name modifier
    elif statistic:
        kept.pop("standard_name", None)
    return kept


def reconstruction_dataset(obs: Observations, variables: list[str], mean: np.ndarray, std: np.ndarray,
                           members: np.ndarray | None, attrs: dict, history: str) -> xr.Dataset:
    """The CF output: per variable its mean (the variable's own name), `_std` and `_members`."""
    s, y, x = obs.dims
    land = ~obs.valid  # (N, 1, H, W)
    data = {"observed": ((s, y, x), obs.mask[:, 0].astype(np.int8),
                         {"long_name": "observed pixel", "flag_values": np.array([0, 1], np.int8),
                          "flag_meanings": "reconstructed observed_and_kept_exactly"})}
    for c, name in enumerate(variables):
        source = obs.variable_attrs.get(name, {})
        ensemble = members is not None
        data[name] = ((s, y, x), np.where(land[:, 0], np.nan, mean[:, c]).astype(np.float32),
                      {**_described(source, "ensemble mean" if ensemble else "predictive mean"),
                       **({"cell_methods": f"{MEMBER_DIM}: mean"} if ensemble else {})})
        data[f"{name}_std"] = ((s, y, x), np.where(land[:, 0], np.nan, std[:, c]).astype(np.float32),
                               {**_described(source, "predictive standard deviation", "standard_error"),
                                **({"cell_methods": f"{MEMBER_DIM}: standard_deviation"} if ensemble else {})})
        if ensemble:
            kept = np.where(land[:, None, 0], np.nan, members[:, :, c]).astype(np.float32)
            data[f"{name}_members"] = ((s, MEMBER_DIM, y, x), kept, _described(source, "ensemble member"))
    coords = dict(obs.coords)
    if members is not None:
        coords[MEMBER_DIM] = ((MEMBER_DIM,), np.arange(members.shape[1], dtype=np.int32),
                              {"standard_name": "realization", "long_name": "ensemble member"})
    previous = obs.global_attrs.get("history", "")
    carried = {k: v for k, v in obs.global_attrs.items() if k in ("title", "institution", "source", "references")}
    out = xr.Dataset(data, coords=coords, attrs={**carried, "Conventions": "CF-1.8", **attrs,
                                                 "history": (history + ("\n" + previous if previous else ""))})
    for name in out.data_vars:
        if out[name].dtype == np.float32:
            out[name].encoding["_FillValue"] = FILL_VALUE
    return out


def observation_stats(obs: Observations, variables: list[str]) -> FieldStats:
    """Per-variable mean and std of the observed values: how a baseline without a run normalises."""
    means, stds = [], []
    for c in range(len(variables)):
        seen = obs.values[:, c][obs.mask[:, 0]]
        if seen.size < 2:
            raise DataError(f"variable {variables[c]!r} has fewer than two observed values")
        means.append(float(seen.mean()))
        stds.append(float(seen.std()) or 1.0)
    return FieldStats(tuple(variables), tuple(means), tuple(stds))


def reconstruct_observations(method, obs: Observations, variables: list[str], stats: FieldStats, *,
                             samples: int, seed: int, attrs: dict, history: str) -> xr.Dataset:
    """Run a Reconstructor on observations in physical units; the CF output dataset."""
    normalised = np.nan_to_num(stats.normalize(obs.values), nan=0.0)
    result = method.reconstruct(torch.from_numpy(normalised), torch.from_numpy(obs.mask.astype(np.float32)),
                                torch.from_numpy(obs.valid.astype(np.float32)), samples=samples, seed=seed)
    valid = torch.from_numpy(obs.valid).expand_as(result.mean)
    if not bool(torch.isfinite(result.mean.cpu()[valid]).all()):
        raise FieldpaintError(f"{getattr(method, 'name', 'the method')} produced non-finite values; nothing was written")
    scale = np.asarray(stats.std, dtype=np.float32).reshape(1, -1, 1, 1)
    mean = stats.denormalize(result.mean.cpu().numpy())
    std = result.std.cpu().numpy() * scale
    members = None if result.members is None else stats.denormalize(result.members.cpu().numpy())
    attrs = {**attrs, "samples": samples if members is not None else 0, "seed": seed, "nfe": int(result.nfe),
             "seconds": float(result.seconds), "fieldpaint_version": __version__}
    for key in ("steps", "eta", "cg_iterations"):
        if hasattr(method, key):
            attrs[key] = float(getattr(method, key)) if key == "eta" else int(getattr(method, key))
    if getattr(method, "precision", None) is not None:
        attrs["precision"] = method.precision.name  # the network's arithmetic while sampling
    if getattr(method, "mean_step", None) is not None:  # the mean is not the members' average
        attrs["mean_step"] = int(method.mean_step)
    if getattr(method, "spread_scale", None) is not None:  # members recentred on the mean, spread rescaled
        attrs["spread_scale"] = float(method.spread_scale)
    if getattr(method, "frames", "fixed") != "fixed":  # members drawn in rolled frames
        attrs["frames"] = method.frames
    if getattr(method, "symmetries", ()):  # and in the frames of the data's symmetries
        attrs["symmetric_frames"] = len(method.symmetries)
    if hasattr(method, "sigma_y"):
        from fieldpaint.diffusion.sigma_y import sigma_y_attribute

        attrs["sigma_y"] = sigma_y_attribute(method.sigma_y)  # normalised units
    if attrs.get("method") == "repaint":
        attrs.update(jump_length=method.jump_length, jump_n_sample=method.jump_n_sample)
    return reconstruction_dataset(obs, variables, mean, std, members, attrs, history)


def history_line(command: str) -> str:
    return f"{datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}: {command}"


def inpaint_file(checkpoint: str | Path | None, input_path: str | Path, out: str | Path, *, method: str,
                 variables: list[str] | None = None, mask_variable: str | None = None,
                 valid_variable: str | None = None, samples: int = 8, seed: int = 0, overwrite: bool = False,
                 train_data: str | Path | None = None, gp_options: dict | None = None,
                 command: str | None = None, **sampler_options) -> dict:
    """Reconstruct every field of `input_path` with any method (fieldpaint.reconstruct.METHODS) and
    write the CF output to `out`; returns the output's attributes. See fieldpaint.api.reconstructor."""
    from fieldpaint.api import reconstructor
    from fieldpaint.atomic import check_writable

    out = check_writable(out, overwrite)
    rec = reconstructor(checkpoint, method=method, train_data=train_data, gp=gp_options, **sampler_options)
    with open_dataset(input_path) as ds:
        result = rec.reconstruct(ds, variables=variables, mask_variable=mask_variable,
                                 valid_variable=valid_variable, samples=samples, seed=seed,
                                 history=history_line(command or f"fieldpaint inpaint --method {method} "
                                                                 f"--input {input_path} --out {out}"),
                                 source=str(input_path))
    result.attrs["input"] = str(input_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_netcdf_atomic(result, out, overwrite=overwrite)
    return dict(result.attrs)
