"""The Python API, for notebooks: an xarray Dataset of observations in, the CF reconstruction out.

    import fieldpaint, xarray as xr
    rec = fieldpaint.reconstructor("runs/palette")            # a trained run: its default method
    out = rec.reconstruct(xr.open_dataset("obs.nc"))           # the same dataset `fieldpaint inpaint` writes
    out = fieldpaint.reconstructor(method="gp").reconstruct(obs, variables=["sst"])   # kriging, no run needed

`out` holds per variable the mean, `<name>_std` and, for diffusion methods, `<name>_members`
along `realization`, with the input's coordinates and attributes (see fieldpaint.inpaint).

Any grid: a diffusion model runs on its own grid (the run's data.height x data.width). An input
grid that is smaller along an axis is padded there with never-valid pixels and the output cropped
back (`OnModelGrid`); one that is larger is reconstructed from overlapping tiles of the model's
grid blended with a raised-cosine window (fieldpaint.data.grid.reconstruct_tiled). Each tile
is sampled independently (its own seed): in the overlaps the blend averages two samples, so an
ensemble's spread there is somewhat lower than inside a tile.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import xarray as xr

from fieldpaint.data.grid import check_wrap_extent, crop, fit_shape, pad_to, reconstruct_tiled
from fieldpaint.errors import DataError, FieldpaintError

TILE_SEED_STRIDE = 7919  # tile i samples with seed + i * TILE_SEED_STRIDE: tiles are independent


class OnModelGrid:
    """A Reconstructor for a model of grid `grid` (H, W), applied to observations on any grid:
    padded with never-valid pixels (mask 0, valid 0) where smaller, tiled where larger
    (`overlap` pixels shared between tiles, default a quarter of the tile), cropped back. A model
    whose convolutions wrap around (`wrap`, model.wrap) takes only fields of its own extent along
    those axes: padding or a tile there would put the wrong pixels across the edge."""

    def __init__(self, inner, grid: tuple[int, int], overlap: tuple[int, int] | int | None = None,
                 wrap: str = "none"):
        self.inner, self.grid, self.wrap = inner, (int(grid[0]), int(grid[1])), wrap
        self.overlap = overlap if overlap is not None else (max(1, self.grid[0] // 4), max(1, self.grid[1] // 4))
        self.name = inner.name

    def __getattr__(self, key: str):  # steps, eta, jump_length, ... of the wrapped method
        if key == "inner":
            raise AttributeError(key)
        return getattr(self.inner, key)

    def reconstruct(self, obs: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor, *, samples: int = 1,
                    seed: int = 0):
        from fieldpaint.reconstruct import Reconstruction

        started, original = time.perf_counter(), tuple(obs.shape[-2:])
        check_wrap_extent(self.wrap, original, self.grid, "these fields have")
        held = fit_shape(original, self.grid)
        obs, mask, valid = (pad_to(a, held) for a in (obs, mask, valid))  # padding: mask 0, valid 0
        if held == self.grid:
            r = self.inner.reconstruct(obs, mask, valid, samples=samples, seed=seed)
            mean, std, members, nfe, mean_step = r.mean, r.std, r.members, r.nfe, r.mean_step
        else:
            tiles = iter(range(10**9))
            done = []

            def one_tile(o, m, v):
                r = self.inner.reconstruct(o, m, v, samples=samples, seed=seed + next(tiles) * TILE_SEED_STRIDE)
                done.append(r)
                return r.mean, r.std, r.members

            mean, std, members = reconstruct_tiled(one_tile, [obs, mask, valid], self.grid, self.overlap)
            nfe, mean_step = max(r.nfe for r in done), done[0].mean_step
            observed = ((mask > 0.5) & (valid > 0.5)).expand_as(mean)
            if getattr(self.inner, "sigma_y", 0.0) == 0.0:  # observed values stay exact, as untiled
                mean = torch.where(observed, obs.to(mean.dtype), mean)
                std = torch.where(observed, torch.zeros_like(std), std)
        return Reconstruction(mean=crop(mean, original), std=crop(std, original),
                              members=None if members is None else crop(members, original), nfe=nfe,
                              seconds=time.perf_counter() - started, mean_step=mean_step)


def on_model_grid(method, config, overlap: tuple[int, int] | int | None = None):
    """`method` wrapped to run any grid on the model grid of `config` (a run's Config)."""
    return OnModelGrid(method, (config.data.height, config.data.width), overlap, config.model.wrap)


@dataclass
class FieldReconstructor:
    """A method, with the run (if any) and options it was built with; `reconstruct` is the API."""

    method: str
    run: object = None  # fieldpaint.runs.TrainedRun
    train_data: str | Path | None = None
    gp: dict | None = None
    sampler: dict | None = None
    tile_overlap: int | None = None  # pixels shared by neighbouring tiles on a grid larger than the model's
    symmetric_frames: bool = False  # members also drawn in the frames of the symmetries the observations declare

    def reconstruct(self, observations: xr.Dataset, *, variables: list[str] | None = None,
                    mask_variable: str | None = None, valid_variable: str | None = None, samples: int = 8,
                    seed: int = 0, history: str | None = None, source: str = "the observations") -> xr.Dataset:
        """Reconstruct every field of `observations` (NaN = not observed); returns the CF dataset."""
        from fieldpaint.data.fields import FieldStats, gridded_variables
        from fieldpaint.inpaint import (history_line, observation_stats, observations_from_dataset,
                                        reconstruct_observations)
        from fieldpaint.reconstruct import BaselineData, build_reconstructor, check_method

        if samples < 1:
            raise FieldpaintError(f"samples must be at least 1 (got {samples})")
        spec = check_method(self.method)
        trained = list(self.run.config.data.variables) if self.run is not None else None
        variables = list(variables or trained or [v for v in gridded_variables(observations)
                                                  if v not in (mask_variable, valid_variable)])
        if not variables:
            raise FieldpaintError(f"{source} has no gridded data variable (one with two spatial dims)")
        if trained and len(variables) != len(trained):
            raise FieldpaintError(f"the model reconstructs {len(trained)} variables ({', '.join(trained)}); "
                                  f"got {len(variables)}: {', '.join(variables)}")
        obs = observations_from_dataset(observations, variables, mask_variable=mask_variable,
                                        valid_variable=valid_variable, source=source)
        if valid_variable is None and self.run is not None:
            _mark_never_valid(obs, self.run)
        if self.run is not None:
            stats = FieldStats(tuple(variables), self.run.stats.mean, self.run.stats.std)  # the user's names
        else:
            stats = observation_stats(obs, variables)
        baseline = BaselineData(stats, {}, load_train=_train_loader(self.run, self.train_data, variables, stats))
        method = build_reconstructor(self.method, run=self.run, data=baseline, sampler=self.sampler or {},
                                     gp=self.gp or {}, seed=seed)
        if self.symmetric_frames:
            method = _in_symmetric_frames(method, spec, observations.attrs, stats, obs.values.shape[-2:], self.run)
        if spec.needs != "data":  # the model's grid: pad, tile, crop back
            method = on_model_grid(method, self.run.config, self.tile_overlap)
        attrs = {"method": self.method, "checkpoint": str(self.run.checkpoint) if self.run is not None else ""}
        return reconstruct_observations(method, obs, variables, stats, samples=samples, seed=seed, attrs=attrs,
                                        history=history or history_line(f"fieldpaint.reconstructor("
                                                                        f"method={self.method!r}).reconstruct"))


def _in_symmetric_frames(method, spec, attrs, stats, grid: tuple[int, int], run):
    """`method` drawing member k in the frame of symmetry k mod n of those the observations' file
    declares (its `symmetries` attribute, fieldpaint.data.symmetry); a one-line error where there are
    none, the method is a baseline, or the grid is not the model's (a padded or tiled field's frames
    are not the field's)."""
    from fieldpaint.data.fields import periodic_axes
    from fieldpaint.data.symmetry import data_symmetries
    from fieldpaint.reconstruct import on_innermost

    if spec.needs == "data":
        raise FieldpaintError(f"symmetric frames apply to diffusion methods, not {spec.name}")
    model_grid = (run.config.data.height, run.config.data.width)
    if tuple(grid) != model_grid:
        raise FieldpaintError(f"symmetric frames need the model's grid {model_grid[0]}x{model_grid[1]}; the "
                              f"observations are {grid[0]}x{grid[1]}")
    symmetries = data_symmetries("auto", attrs, stats.variables, periodic_axes(run.config.data.periodic, attrs),
                                 model_grid, stats)
    if len(symmetries) < 2:
        raise FieldpaintError("symmetric frames: the observations' file declares no symmetries (its `symmetries` "
                              "attribute, see fieldpaint.data.symmetry)")
    return on_innermost(method, lambda core: core.with_symmetries(symmetries))


def _mark_never_valid(obs, run) -> None:
    """Without a valid variable, the pixels never valid in the run's training data (land: NaN in
    every training sample) stay never valid in the output, when the input is on that file's grid."""
    import warnings

    from fieldpaint.data.fields import never_valid_pixels

    path = run.config.data.path
    if path is None or not Path(path).exists():
        return
    try:
        land = never_valid_pixels(run.config.data)
    except DataError as err:
        warnings.warn(f"the run's never-valid pixels could not be read from {path}: {err}", stacklevel=3)
        return
    if land.shape == obs.valid.shape[-2:] and land.any():
        obs.valid &= ~land
        obs.mask &= ~land


def default_method(run) -> str:
    """The best sampler for the run's kind of model: conditional DDIM, or DDNM for unconditional ones."""
    return "conditional" if run.conditional else "ddnm"


def default_mean_step(run, method: str) -> int | None:
    """Where a reconstruction's mean comes from when not given: step 1 for the conditional methods of
    a model trained with diffusion.terminal_fraction > 0, whose first step (pure noise) returns the
    trained regression E[x0 | y] (on the demo's model within 0.5 % of the best step's validation MSE
    in every group and 7-12 % below the members' average); the members' average (None) otherwise."""
    from fieldpaint.reconstruct import check_method

    conditional = check_method(method).needs == "conditional"
    return 1 if conditional and run.config.diffusion.terminal_fraction > 0 else None


def reconstructor(run: str | os.PathLike | None = None, *, method: str | None = None,
                  train_data: str | os.PathLike | None = None, gp: dict | None = None,
                  tile_overlap: int | None = None, symmetric_frames: bool = False,
                  **sampler_options) -> FieldReconstructor:
    """A reconstructor from a run folder or checkpoint (diffusion methods; baselines may use its
    statistics and training data), or from a baseline's name alone (`method="gp"`). Diffusion
    methods take any grid (`OnModelGrid`); `tile_overlap` sets the tiles' overlap in pixels;
    `symmetric_frames` draws the members in the frames of the observations' declared symmetries.
    `sampler_options` are DiffusionReconstructor's (steps, eta, mean_step, precision, ...); precision
    is "auto" unless given, as on the command line, and mean_step `default_mean_step` (None given:
    the members' average)."""
    from fieldpaint.reconstruct import check_method

    loaded = None
    if run is not None:
        from fieldpaint.runs import load_run

        loaded = load_run(run)
    if method is None:
        if loaded is None:
            raise FieldpaintError("name a run, or a method (e.g. method='gp')")
        method = default_method(loaded)
    if check_method(method).needs != "data":
        if loaded is None:
            raise FieldpaintError(f"method {method!r} needs a trained run (a run folder or checkpoint)")
        sampler_options.setdefault("precision", "auto")  # as `fieldpaint inpaint --precision` by default
        sampler_options.setdefault("mean_step", default_mean_step(loaded, method))
    return FieldReconstructor(method, loaded, train_data, gp, sampler_options, tile_overlap, symmetric_frames)


def _train_loader(run, train_data, variables: list[str], stats):
    """The training split for gp-dataset: a given file, or the run's data, in the run's statistics."""
    path = train_data or (run.config.data.path if run is not None else None)
    if path is None:
        return None

    def load():
        from fieldpaint.data.fields import FieldDataset

        if train_data or run is None:
            return FieldDataset(path, variables, "train", stats=stats).fields()
        d = run.config.data  # the file's own grid: the baselines need no padding
        return FieldDataset(path, d.variables, "train", stats=run.stats, sample_dim=d.sample_dim, y_dim=d.y_dim,
                            x_dim=d.x_dim, test_fraction=d.test_fraction).fields()

    return load
