"""The Python API, for notebooks: an xarray Dataset of observations in, the CF reconstruction out.

    import fieldpaint, xarray as xr
    rec = fieldpaint.reconstructor("runs/palette")            # a trained run: its default method
    out = rec.reconstruct(xr.open_dataset("obs.nc"))           # the same dataset `fieldpaint inpaint` writes
    out = fieldpaint.reconstructor(method="gp").reconstruct(obs, variables=["sst"])   # kriging, no run needed

`out` holds per variable the mean, `<name>_std` and, for diffusion methods, `<name>_members`
along `realization`, with the input's coordinates and attributes (see fieldpaint.inpaint).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import xarray as xr

from fieldpaint.errors import FieldpaintError


@dataclass
class FieldReconstructor:
    """A method, with the run (if any) and options it was built with; `reconstruct` is the API."""

    method: str
    run: object = None  # fieldpaint.runs.TrainedRun
    train_data: str | Path | None = None
    gp: dict | None = None
    sampler: dict | None = None

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
        if self.run is not None:
            grid, expected = obs.values.shape[-2:], (self.run.config.data.height, self.run.config.data.width)
            if spec.needs != "data" and tuple(grid) != expected:
                raise FieldpaintError(f"the input grid is {grid[0]}x{grid[1]} but the model was trained on "
                                      f"{expected[0]}x{expected[1]}")
            stats = FieldStats(tuple(variables), self.run.stats.mean, self.run.stats.std)  # the user's names
        else:
            stats = observation_stats(obs, variables)
        baseline = BaselineData(stats, {}, load_train=_train_loader(self.run, self.train_data, variables, stats))
        method = build_reconstructor(self.method, run=self.run, data=baseline, sampler=self.sampler or {},
                                     gp=self.gp or {}, seed=seed)
        attrs = {"method": self.method, "checkpoint": str(self.run.checkpoint) if self.run is not None else ""}
        return reconstruct_observations(method, obs, variables, stats, samples=samples, seed=seed, attrs=attrs,
                                        history=history or history_line(f"fieldpaint.reconstructor("
                                                                        f"method={self.method!r}).reconstruct"))


def default_method(run) -> str:
    """The best sampler for the run's kind of model: conditional DDIM, or DDNM for unconditional ones."""
    return "conditional" if run.conditional else "ddnm"


def reconstructor(run: str | os.PathLike | None = None, *, method: str | None = None,
                  train_data: str | os.PathLike | None = None, gp: dict | None = None,
                  **sampler_options) -> FieldReconstructor:
    """A reconstructor from a run folder or checkpoint (diffusion methods; baselines may use its
    statistics and training data), or from a baseline's name alone (`method="gp"`)."""
    from fieldpaint.reconstruct import check_method

    loaded = None
    if run is not None:
        from fieldpaint.runs import load_run

        loaded = load_run(run)
    if method is None:
        if loaded is None:
            raise FieldpaintError("name a run, or a method (e.g. method='gp')")
        method = default_method(loaded)
    if check_method(method).needs != "data" and loaded is None:
        raise FieldpaintError(f"method {method!r} needs a trained run (a run folder or checkpoint)")
    return FieldReconstructor(method, loaded, train_data, gp, sampler_options)


def _train_loader(run, train_data, variables: list[str], stats):
    """The training split for gp-dataset: a given file, or the run's data, in the run's statistics."""
    path = train_data or (run.config.data.path if run is not None else None)
    if path is None:
        return None

    def load():
        from fieldpaint.data.fields import FieldDataset

        if train_data or run is None:
            return FieldDataset(path, variables, "train", stats=stats).fields()
        d = run.config.data
        return FieldDataset(path, d.variables, "train", stats=run.stats, sample_dim=d.sample_dim, y_dim=d.y_dim,
                            x_dim=d.x_dim, test_fraction=d.test_fraction).fields()

    return load
