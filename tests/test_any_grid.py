"""A user's file on an odd grid with land, end to end through the CLI (fieldpaint.cli.main):
train with no variables and no grid given, inpaint back onto the file's grid, evaluate.

The expected numbers come from the file itself: its 18x50 grid, its land pixels (NaN in every
sample) and the padded model grid 20x52 (the next multiples of 2^2 for model.channels=[8,16]).
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import xarray as xr
import yaml

from fieldpaint.cli import main

T, H, W = 14, 18, 50
LAND = (slice(0, 9), slice(0, 12))  # 108 land pixels
TINY = ["--set", "model.channels=[8,16]", "--set", "model.norm_groups=4", "--set", "model.attention_heads=2",
        "--set", "diffusion.timesteps=20", "--set", "train.epochs=1", "--set", "train.batch_size=4"]


def write_sst(path):
    """A CF-style monthly SST: dims time/latitude/longitude, land as NaN, no `split` variable."""
    rng = np.random.default_rng(0)
    lon = np.linspace(0, 360, W, endpoint=False)
    sst = (15 + 5 * np.sin(np.deg2rad(lon))[None, None] + rng.standard_normal((T, H, W))).astype(np.float32)
    sst[:, LAND[0], LAND[1]] = np.nan
    ds = xr.Dataset({"sst": (("time", "latitude", "longitude"), sst,
                             {"units": "degC", "standard_name": "sea_surface_temperature"})},
                    coords={"time": np.arange(T), "latitude": np.linspace(-40, 40, H), "longitude": lon})
    ds.to_netcdf(path)
    return ds


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("any_grid")
    data = root / "sst.nc"
    ds = write_sst(data)
    run = root / "R"
    assert main(["train", "--config", "palette_slim", "--set", f"data.path={data}", *TINY,
                 "--run-dir", str(run), "--no-progress"]) == 0
    return root, data, run, ds


def test_train_resolves_variables_and_pads_the_grid(trained):
    _, _, run, _ = trained
    data = yaml.safe_load((run / "config.yaml").read_text())["data"]
    assert data["variables"] == ["sst"]  # every gridded data variable of the file
    assert (data["height"], data["width"]) == (20, 52)  # 18x50 padded to multiples of 2^2


def test_inpaint_writes_the_original_grid_with_land_as_fill(trained):
    root, _, run, ds = trained
    obs = ds.isel(time=slice(T - 2, T)).copy(deep=True)
    hidden = np.random.default_rng(1).random(obs.sst.shape) < 0.9
    obs["sst"] = obs.sst.where(~hidden)
    obs.to_netcdf(root / "obs.nc")
    out = root / "rec.nc"
    assert main(["inpaint", "--checkpoint", str(run), "--input", str(root / "obs.nc"), "--out", str(out),
                 "--method", "conditional", "--samples", "2", "--steps", "4", "--no-progress"]) == 0
    rec = xr.open_dataset(out)
    assert rec.sst.shape == (2, H, W) and rec.sst_members.shape == (2, 2, H, W)
    land = np.zeros((H, W), bool)
    land[LAND] = True
    values = rec.sst.values
    assert np.isnan(values[:, land]).all() and np.isfinite(values[:, ~land]).all()
    observed = np.isfinite(obs.sst.values)
    np.testing.assert_array_equal(values[observed], obs.sst.values[observed])  # observations kept exactly
    np.testing.assert_array_equal(rec.latitude.values, ds.latitude.values)


def test_evaluate_scores_only_valid_pixels_of_the_original_grid(trained):
    root, _, run, _ = trained
    out = root / "E"
    assert main(["evaluate", "--run", str(run), "--methods", "conditional", "--steps", "4", "--reference", "gp",
                 "--validation-fields", "2", "--masks", "random", "--coverages", "0.9", "--n", "2",
                 "--samples", "1", "--out", str(out), "--no-progress"]) == 0
    rows = list(csv.DictReader((out / "cases.csv").open()))
    assert rows and all(np.isfinite(float(r["mse"])) for r in rows)
    group = np.load(out / "groups" / "random_0.9000.npz")
    valid, mask = group["valid"] > 0.5, group["mask"] > 0.5
    n_valid = H * W - 108  # the original grid's valid pixels: padding adds none
    assert int(valid.sum()) == n_valid
    scored = valid & ~mask  # what every score of the case counts (metrics.scored_pixels)
    assert abs(int(scored.sum()) - 0.9 * n_valid) <= 1
