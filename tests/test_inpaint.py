"""`fieldpaint inpaint` on user files: round trip, exact observations, no clobbering, mismatch errors."""

import numpy as np
import pytest
import xarray as xr

from fieldpaint.cli import main
from fieldpaint.config import from_dict
from fieldpaint.data.grf import sample_matern_grf
from fieldpaint.data.io import write_dataset
from fieldpaint.train import train


def _config(path, conditioning):
    return from_dict({
        "data": {"path": str(path), "variables": ["a", "b"], "height": 16, "width": 32},
        "model": {"channels": [8, 16], "norm_groups": 4, "attention_heads": 2, "conditioning": conditioning},
        "diffusion": {"timesteps": 50, "prediction": "v"},
        "train": {"epochs": 1, "batch_size": 8, "ema_warmup_steps": 5, "eval_train_samples": 8},
    })


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inpaint")
    fields = sample_matern_grf(20, 2, 16, 32, length_scale=4.0, seed=1)
    write_dataset(root / "data.nc", {"a": 10 + 3 * fields[:, 0], "b": fields[:, 1]},
                  np.array(["train"] * 16 + ["test"] * 4), {})
    for kind in ("none", "concat"):
        train(_config(root / "data.nc", kind), root / kind, progress=False)
    truth = 10 + 3 * fields[16:19, 0]
    observed = np.random.default_rng(0).random(truth.shape) < 0.3
    obs = {"a": np.where(observed, truth, np.nan), "b": np.where(observed, fields[16:19, 1], np.nan)}
    land = np.ones((3, 16, 32), np.int8)
    land[:, :2, :3] = 0
    xr.Dataset({k: (("time", "lat", "lon"), v) for k, v in obs.items()} | {"valid": (("time", "lat", "lon"), land)},
               coords={"lat": np.linspace(-10, 10, 16), "lon": np.linspace(0, 40, 32)}).to_netcdf(root / "obs.nc")
    return root


def _inpaint(run, obs, out, method, *extra):
    return main(["inpaint", "--checkpoint", str(run), "--input", str(obs), "--out", str(out), "--method", method,
                 "--samples", "3", "--steps", "5", "--jump-length", "2", "--jump-n-sample", "2", "--no-progress",
                 *extra])


@pytest.mark.parametrize("run, method", [("none", "repaint"), ("none", "ddnm"), ("concat", "conditional")])
def test_round_trip_keeps_observations_and_writes_everything(runs, tmp_path, run, method):
    out = tmp_path / "rec.nc"
    assert _inpaint(runs / run, runs / "obs.nc", out, method, "--valid-variable", "valid") == 0
    with xr.open_dataset(runs / "obs.nc") as obs, xr.open_dataset(out) as rec:
        assert rec["a"].dims == ("time", "lat", "lon") and rec["a_members"].sizes["realization"] == 3
        np.testing.assert_allclose(rec["lat"], obs["lat"])
        seen = np.isfinite(obs["a"].values) & (obs["valid"].values == 1)
        assert (rec["observed"].values == seen).all()
        for name in ("a", "b"):
            np.testing.assert_allclose(rec[name].values[seen], obs[name].values[seen], rtol=1e-5, atol=1e-5)
            hidden = ~seen & (obs["valid"].values == 1)
            assert np.isfinite(rec[name].values[hidden]).all() and (rec[f"{name}_std"].values[hidden] > 0).all()
            assert np.isnan(rec[name].values[obs["valid"].values == 0]).all()
        assert rec.attrs["method"] == method and rec.attrs["nfe"] > 0 and rec.attrs["samples"] == 3


def test_existing_output_is_not_overwritten(runs, tmp_path, capsys):
    out = tmp_path / "rec.nc"
    out.write_bytes(b"precious")
    assert _inpaint(runs / "none", runs / "obs.nc", out, "ddnm") == 2
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == b"precious"


@pytest.mark.parametrize("run, method, extra, message", [
    ("concat", "repaint", [], "conditional"),
    ("none", "conditional", [], "unconditional"),
    ("none", "ddnm", ["--variables", "a"], "2 variables"),
    ("none", "ddnm", ["--variables", "a,zz"], "zz"),
])
def test_mismatches_are_one_line_errors(runs, tmp_path, capsys, run, method, extra, message):
    assert _inpaint(runs / run, runs / "obs.nc", tmp_path / "rec.nc", method, *extra) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not (tmp_path / "rec.nc").exists()


def test_another_grid_is_padded_and_a_missing_checkpoint_is_an_error(runs, tmp_path, capsys):
    xr.Dataset({"a": (("y", "x"), np.ones((8, 32))), "b": (("y", "x"), np.ones((8, 32)))}).to_netcdf(tmp_path / "small.nc")
    # a grid the model does not have is padded to the model's grid and cropped back
    assert _inpaint(runs / "none", tmp_path / "small.nc", tmp_path / "rec.nc", "ddnm") == 0
    with xr.open_dataset(tmp_path / "rec.nc") as rec:
        assert rec["a"].shape[-2:] == (8, 32) and np.isfinite(rec["a"].values).all()
    assert _inpaint(tmp_path / "nothing", runs / "obs.nc", tmp_path / "rec2.nc", "ddnm") == 2
    assert "checkpoint" in capsys.readouterr().err


def test_a_kriging_file_equals_the_kriging_reconstructors_mean(runs, tmp_path):
    """`inpaint --method gp` writes, in physical units, exactly what GPReconstructor computes."""
    import torch

    from fieldpaint.baselines.gp import GPReconstructor
    from fieldpaint.data.fields import FieldStats
    from fieldpaint.inpaint import read_observations
    from fieldpaint.runs import load_run

    out = tmp_path / "gp.nc"
    assert main(["inpaint", "--checkpoint", str(runs / "none"), "--input", str(runs / "obs.nc"), "--out", str(out),
                 "--method", "gp", "--valid-variable", "valid"]) == 0
    obs = read_observations(runs / "obs.nc", ["a", "b"], valid_variable="valid")
    run = load_run(runs / "none")
    stats = FieldStats(("a", "b"), run.stats.mean, run.stats.std)
    normalised = np.nan_to_num(stats.normalize(obs.values), nan=0.0)
    from fieldpaint.reconstruct import KRIGING_DEFAULTS

    expected = GPReconstructor("per-field", **KRIGING_DEFAULTS).reconstruct(
        torch.from_numpy(normalised), torch.from_numpy(obs.mask.astype(np.float32)),
        torch.from_numpy(obs.valid.astype(np.float32)))
    mean = stats.denormalize(expected.mean.double().numpy())
    valid = obs.valid[:, 0]
    with xr.open_dataset(out) as rec:
        for c, name in enumerate(("a", "b")):
            np.testing.assert_allclose(rec[name].values[valid], mean[:, c][valid], rtol=1e-5, atol=1e-5)
            assert np.isnan(rec[name].values[~valid]).all()
        assert rec.attrs["method"] == "gp" and f"{name}_members" not in rec


def test_baselines_need_no_run(runs, tmp_path):
    out = tmp_path / "linear.nc"
    assert main(["inpaint", "--input", str(runs / "obs.nc"), "--out", str(out), "--method", "linear",
                 "--variables", "a,b"]) == 0
    with xr.open_dataset(runs / "obs.nc") as obs, xr.open_dataset(out) as rec:
        seen = np.isfinite(obs["a"].values)
        np.testing.assert_allclose(rec["a"].values[seen], obs["a"].values[seen], rtol=1e-5)
        assert np.isfinite(rec["a"].values).all()


def test_output_is_cf_with_coordinates_attributes_fill_and_realizations(runs, tmp_path):
    """Coordinates (time, lat, lon, a 2-D auxiliary one) and variable attributes round-trip, land
    carries _FillValue, members lie along `realization`, and an ensemble score over that dimension
    needs no reshaping."""
    import netCDF4

    with xr.open_dataset(runs / "obs.nc") as base:
        obs = base.load()
    obs = obs.assign_coords(time=("time", np.array(["2020-01-01", "2020-02-01", "2020-03-01"], "datetime64[ns]")),
                            area=(("lat", "lon"), np.ones((16, 32)), {"units": "km2", "long_name": "cell area"}))
    obs["lat"].attrs.update(units="degrees_north", standard_name="latitude")
    obs["a"].attrs.update(units="K", standard_name="sea_surface_temperature", long_name="SST")
    obs.attrs.update(title="monthly SST", history="made by a test")
    obs.to_netcdf(tmp_path / "cf.nc")
    out = tmp_path / "rec.nc"
    assert _inpaint(runs / "concat", tmp_path / "cf.nc", out, "conditional", "--valid-variable", "valid") == 0
    with xr.open_dataset(out) as rec, xr.open_dataset(tmp_path / "cf.nc") as src:
        np.testing.assert_array_equal(rec["time"].values, src["time"].values)
        assert rec["lat"].attrs["standard_name"] == "latitude" and rec["area"].dims == ("lat", "lon")
        assert rec["a"].attrs["units"] == "K" and rec["a"].attrs["standard_name"] == "sea_surface_temperature"
        assert rec["a_std"].attrs["standard_name"] == "sea_surface_temperature standard_error"
        assert rec["a_std"].attrs["units"] == "K" and "standard deviation" in rec["a_std"].attrs["long_name"]
        assert rec["realization"].attrs["standard_name"] == "realization"
        assert rec["a_members"].dims == ("time", "realization", "lat", "lon")
        assert rec.attrs["Conventions"].startswith("CF-") and rec.attrs["title"] == "monthly SST"
        assert "fieldpaint inpaint" in rec.attrs["history"] and "made by a test" in rec.attrs["history"]
        # the fair ensemble CRPS, E|X - y| - E|X - X'| / 2, straight over the member dimension
        truth = rec["a"].fillna(0)
        members = rec["a_members"]
        spread = abs(members - members.rename(realization="other")).mean(["realization", "other"])
        crps = abs(members - truth).mean("realization") - spread / 2
        assert crps.dims == ("time", "lat", "lon") and bool((crps.fillna(0) >= -1e-4).all())
    with netCDF4.Dataset(out) as raw:  # land is the fill value on disk, not a bare NaN
        assert raw["a"]._FillValue == np.float32(9.969209968386869e36)
        land = (obs["valid"].values == 0)
        assert raw["a"][:].mask[land].all()


def test_the_notebook_api_returns_what_inpaint_writes(runs, tmp_path):
    import fieldpaint

    out = tmp_path / "rec.nc"
    assert _inpaint(runs / "concat", runs / "obs.nc", out, "conditional", "--valid-variable", "valid") == 0
    rec = fieldpaint.reconstructor(runs / "concat", steps=5)  # conditional is the default for this run
    with xr.open_dataset(runs / "obs.nc") as obs, xr.open_dataset(out) as written:
        result = rec.reconstruct(obs, valid_variable="valid", samples=3)
        for name in ("a", "a_std", "b_members", "observed"):
            np.testing.assert_allclose(result[name].values, written[name].values, rtol=1e-6, atol=1e-6)
        assert result.attrs["method"] == "conditional" and result["b_members"].dims[1] == "realization"
    with pytest.raises(fieldpaint.errors.FieldpaintError, match="needs a trained run"):
        fieldpaint.reconstructor(method="ddnm")
