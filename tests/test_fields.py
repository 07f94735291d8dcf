"""Dataset files (fieldpaint.data.io) and FieldDataset (fieldpaint.data.fields).

Expected values come from numpy on the arrays that were written (np.nanmean/np.nanstd, plain
indexing), never from the code under test.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from fieldpaint.config import DataConfig
from fieldpaint.data import io
from fieldpaint.data.fields import FieldDataset, FieldStats, find_layout, load_splits
from fieldpaint.data.io import open_dataset, write_dataset
from fieldpaint.errors import DataError

N, H, W = 10, 16, 32
SPLIT = np.array(["train"] * 8 + ["test"] * 2)


def random_channels(seed: int = 0, n: int = N) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"u": (3.0 + 2.0 * rng.standard_normal((n, H, W))).astype(np.float32),
            "v": (-1.0 + 0.5 * rng.standard_normal((n, H, W))).astype(np.float32)}


def tree_bytes(path: Path) -> dict[str, bytes]:
    """A file's bytes, or every file of a Zarr store by relative path."""
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------------
# io: round trip, reproducibility, atomicity


@pytest.mark.parametrize("suffix, engine", [(".nc", "netcdf4"), (".nc", "h5netcdf"), (".zarr", None)])
def test_round_trip_returns_the_written_values(tmp_path, suffix, engine):
    channels = random_channels()
    path = write_dataset(tmp_path / f"d{suffix}", channels, SPLIT, {"kernel": "matern52", "seed": 7},
                         coords={"y": np.linspace(-1, 1, H), "x": np.arange(W, dtype=float)})
    with open_dataset(path, engine=engine) as ds:
        train = FieldDataset(ds, ["u", "v"], "train")
        test = FieldDataset(ds, ["u", "v"], "test", stats=train.stats)
    for dataset, rows in ((train, np.arange(8)), (test, np.arange(8, 10))):
        split = dataset.fields(); x, valid = split.x, split.valid
        expected = np.stack([channels["u"], channels["v"]], axis=1)[rows]
        np.testing.assert_allclose(dataset.stats.denormalize(x).numpy(), expected, rtol=1e-5, atol=1e-5)
        assert valid.dtype == torch.float32 and bool((valid == 1).all())
        assert [dataset[i]["index"] for i in range(len(dataset))] == rows.tolist()
    assert train.attrs == {"kernel": "matern52", "seed": 7}
    np.testing.assert_allclose(train.coords["y"], np.linspace(-1, 1, H))
    assert (train.height, train.width, train.variables) == (H, W, ("u", "v"))


def test_getitem_gives_float32_field_mask_and_file_index(tmp_path):
    path = write_dataset(tmp_path / "d.nc", random_channels(), SPLIT, {})
    test = FieldDataset(path, ["v", "u"], "test")
    item = test[1]
    assert item["x"].shape == (2, H, W) and item["x"].dtype == torch.float32
    assert item["valid"].shape == (1, H, W) and item["valid"].dtype == torch.float32
    assert item["index"] == 9  # position in the file, not in the split
    batch = next(iter(torch.utils.data.DataLoader(test, batch_size=2)))
    assert batch["x"].shape == (2, 2, H, W)


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_repeated_writes_are_byte_identical(tmp_path, suffix):
    channels = random_channels()
    a = write_dataset(tmp_path / f"a{suffix}", channels, SPLIT, {"kernel": "rbf"})
    time.sleep(1.1)  # HDF5 object timestamps have one-second resolution
    b = write_dataset(tmp_path / f"b{suffix}", channels, SPLIT, {"kernel": "rbf"})
    assert tree_bytes(a) == tree_bytes(b)
    c = write_dataset(tmp_path / f"c{suffix}", random_channels(seed=1), SPLIT, {"kernel": "rbf"})
    assert tree_bytes(a) != tree_bytes(c)  # the comparison does see the data


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_existing_file_is_kept_unless_overwrite(tmp_path, suffix):
    path = write_dataset(tmp_path / f"d{suffix}", random_channels(0), SPLIT, {})
    before = tree_bytes(path)
    with pytest.raises(DataError, match="already exists"):
        write_dataset(path, random_channels(1), SPLIT, {})
    assert tree_bytes(path) == before
    write_dataset(path, random_channels(1), SPLIT, {}, overwrite=True)
    with open_dataset(path) as ds:
        np.testing.assert_array_equal(ds["u"].values, random_channels(1)["u"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temp files left


def test_crash_during_write_leaves_the_old_file_intact(tmp_path, monkeypatch):
    path = write_dataset(tmp_path / "d.nc", random_channels(0), SPLIT, {})
    before = path.read_bytes()

    def crash(_path):
        raise OSError("disk full")

    import fieldpaint.atomic as atomic

    monkeypatch.setattr(atomic, "fsync_path", crash)  # the temp file is written, then the crash
    with pytest.raises(OSError, match="disk full"):
        write_dataset(path, random_channels(1), SPLIT, {}, overwrite=True)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["d.nc"]


def test_npz_archive_loads_like_netcdf(tmp_path):
    channels = random_channels()
    np.savez(tmp_path / "d.npz", **channels, split=SPLIT)
    train = FieldDataset(tmp_path / "d.npz", ["u"], "train")
    np.testing.assert_allclose(train.stats.denormalize(train.fields().x).numpy()[:, 0],
                               channels["u"][:8], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# NaN, statistics, splits


def test_nan_pixels_are_masked_and_excluded_from_stats(tmp_path):
    channels = random_channels()
    land = np.zeros((H, W), dtype=bool)
    land[:5, :9] = True
    for a in channels.values():
        a[:, land] = np.nan
    channels["v"][2, 10, 20] = np.nan  # NaN in one channel makes the pixel invalid for all
    path = write_dataset(tmp_path / "d.nc", channels, SPLIT, {})
    train = FieldDataset(path, ["u", "v"], "train")
    split = train.fields(); x, valid = split.x, split.valid
    assert torch.isfinite(x).all()
    assert (x[:, :, torch.from_numpy(land)] == 0).all()
    np.testing.assert_array_equal(valid[:, 0].numpy() == 0, np.broadcast_to(land, (8, H, W)) | _one_pixel(2))
    assert (x[2, :, 10, 20] == 0).all()
    for c, name in enumerate(["u", "v"]):
        reference = channels[name][:8].astype(np.float64)
        reference[2, 10, 20] = np.nan  # the pixel is invalid in every channel
        np.testing.assert_allclose(train.stats.mean[c], np.nanmean(reference), rtol=1e-10)
        np.testing.assert_allclose(train.stats.std[c], np.nanstd(reference), rtol=1e-10)


def _one_pixel(sample: int) -> np.ndarray:
    out = np.zeros((8, H, W), dtype=bool)
    out[sample, 10, 20] = True
    return out


def test_stats_come_from_the_train_split_only(tmp_path):
    channels = random_channels()
    channels["u"][8:] += 100.0  # a test split far from train: would move the mean by ~20
    path = write_dataset(tmp_path / "d.nc", channels, SPLIT, {})
    train = FieldDataset(path, ["u", "v"], "train")
    np.testing.assert_allclose(train.stats.mean[0], channels["u"][:8].astype(np.float64).mean(), rtol=1e-10)
    np.testing.assert_allclose(train.stats.std[0], channels["u"][:8].astype(np.float64).std(), rtol=1e-10)
    test_alone = FieldDataset(path, ["u", "v"], "test")  # no stats given: still the train ones
    assert test_alone.stats == train.stats
    assert float(test_alone.fields().x[:, 0].mean()) > 20  # normalised by train stats, not its own
    train2, test2 = load_splits(DataConfig(path=str(path), variables=("u", "v"), height=H, width=W))
    assert test2.stats == train2.stats == train.stats
    np.testing.assert_allclose(test2.stats.denormalize(test2.fields().x).numpy()[:, 0],
                               channels["u"][8:], rtol=1e-5, atol=1e-4)


def test_test_fraction_takes_the_last_samples(tmp_path):
    ds = xr.Dataset({"u": (("time", "y", "x"), random_channels()["u"])})
    train = FieldDataset(ds, ["u"], "train", test_fraction=0.3)
    test = FieldDataset(ds, ["u"], "test", test_fraction=0.3)
    assert train.sample_index.tolist() == list(range(7)) and test.sample_index.tolist() == [7, 8, 9]
    assert FieldDataset(ds, ["u"], "train", max_samples=3).sample_index.tolist() == [0, 1, 2]


def test_only_the_selected_split_is_read(tmp_path):
    channels = random_channels()
    channels["u"][0, 0, 0] = np.inf  # a bad train sample
    path = write_dataset(tmp_path / "d.nc", channels, SPLIT, {})
    stats = FieldStats(("u",), (3.0,), (2.0,))
    test = FieldDataset(path, ["u"], "test", stats=stats)
    assert len(test) == 2
    with pytest.raises(DataError, match="infinite"):
        FieldDataset(path, ["u"], "train")


def test_user_file_with_time_lat_lon_and_land_is_detected(tmp_path):
    rng = np.random.default_rng(3)
    sst = (15 + 3 * rng.standard_normal((N, 1, W, H))).astype(np.float32)  # (time, depth, lon, lat)
    sst[:, :, 20:, :4] = np.nan  # land
    ds = xr.Dataset({"sst": (("time", "depth", "lon", "lat"), sst)},
                    coords={"time": np.arange(N), "lat": np.linspace(-40, 40, H),
                            "lon": np.linspace(0, 355, W), "depth": [5.0]})
    ds.to_netcdf(tmp_path / "user.nc", engine="h5netcdf")
    train, test = load_splits(DataConfig(path=str(tmp_path / "user.nc"), variables=("sst",),
                                         height=H, width=W, test_fraction=0.2))
    assert (len(train), len(test), train.height, train.width) == (8, 2, H, W)
    assert (train.sample_dim, train.y_dim, train.x_dim) == ("time", "lat", "lon")
    expected = sst[8:, 0].transpose(0, 2, 1)  # (time, lat, lon)
    split = test.fields(); x, valid = split.x, split.valid
    np.testing.assert_array_equal(valid[:, 0].numpy() == 0, np.isnan(expected))
    restored = test.stats.denormalize(x)[:, 0].numpy()
    np.testing.assert_allclose(restored[~np.isnan(expected)], expected[~np.isnan(expected)], rtol=1e-5)
    np.testing.assert_allclose(train.coords["lon"], np.linspace(0, 355, W))


def test_dims_named_in_the_config_and_a_single_2d_field():
    data = random_channels()["u"]
    ds = xr.Dataset({"u": (("frame", "r", "c"), data), "one": (("r", "c"), data[0])})
    named = FieldDataset(ds, ["u"], "all", sample_dim="frame", y_dim="r", x_dim="c")
    assert len(named) == N and (named.height, named.width) == (H, W)
    single = FieldDataset(ds, ["one"], "all", stats=FieldStats(("one",), (0.0,), (1.0,)))
    assert len(single) == 1
    np.testing.assert_allclose(single[0]["x"][0].numpy(), data[0])
    assert find_layout("u", ("a", "b", "c"), {"a": 4, "b": 8, "c": 8}).sample_dim == "a"


def test_field_stats_serialise_and_transform_numpy_and_torch():
    stats = FieldStats(("u", "v"), (3.0, -1.0), (2.0, 0.5))
    assert FieldStats.from_dict(json.loads(json.dumps(stats.to_dict()))) == stats
    x = np.random.default_rng(0).standard_normal((4, 2, 8, 8)).astype(np.float32)
    expected = (x - np.array([3.0, -1.0])[:, None, None]) / np.array([2.0, 0.5])[:, None, None]
    np.testing.assert_allclose(stats.normalize(x), expected, rtol=1e-6)
    np.testing.assert_allclose(stats.normalize(torch.from_numpy(x)).numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(stats.denormalize(stats.normalize(x[0])), x[0], rtol=1e-6, atol=1e-6)
    assert stats.normalize(torch.from_numpy(x)).dtype == torch.float32
    with pytest.raises(ValueError, match="expected"):
        stats.normalize(np.zeros((3, 8, 8)))
    with pytest.raises(DataError, match="statistics are for variables"):
        FieldDataset(xr.Dataset({"w": (("y", "x"), x[0, 0])}), ["w"], "all", stats=stats)


# ----------------------------------------------------------------------------------------------
# bad input: one DataError naming the problem


def _field(n=N, h=H, w=W, seed=0):
    return np.random.default_rng(seed).standard_normal((n, h, w)).astype(np.float32)


def _with(ds_vars, **coords):
    return xr.Dataset(ds_vars, coords=coords)


def _all_nan_sample():
    u = _field()
    u[3] = np.nan
    return _with({"u": (("sample", "y", "x"), u)})


def _inf_value():
    u = _field()
    u[1, 2, 3] = -np.inf
    return _with({"u": (("sample", "y", "x"), u)})


def _constant_v():
    return _with({"u": (("sample", "y", "x"), _field()), "v": (("sample", "y", "x"), np.full((N, H, W), 0.1, "f4"))})


BAD_INPUTS = {
    "missing variable": (lambda: _with({"u": (("sample", "y", "x"), _field())}), ["u", "w"], {},
                         r"no variable 'w'.*available: u"),
    "1-D variable": (lambda: _with({"u": (("time",), np.arange(5.0))}), ["u"], {}, "fewer than two spatial dims"),
    "too small grid": (lambda: _with({"u": (("sample", "y", "x"), _field(h=4))}), ["u"], {}, "too small"),
    "other grid than the config": (lambda: _with({"u": (("sample", "y", "x"), _field())}), ["u"],
                                   {"expected_shape": (64, 128)}, "16x32 but 64x128"),
    "all-NaN sample": (_all_nan_sample, ["u"], {}, "sample 3 has no valid pixel"),
    "infinite value": (_inf_value, ["u"], {}, r"'u' has infinite values \(first in sample 1\)"),
    "no train samples": (lambda: _with({"u": (("sample", "y", "x"), _field()),
                                        "split": (("sample",), np.array(["test"] * N))}), ["u"], {},
                         "no train samples"),
    "constant channel": (_constant_v, ["u", "v"], {}, "channel 'v' is constant"),
    "extra non-singleton dim": (lambda: _with({"u": (("time", "level", "y", "x"), _field().reshape(5, 2, H, W))}),
                                ["u"], {}, r"extra non-singleton dims 'level' \(size 2\)"),
    "bad split label": (lambda: _with({"u": (("sample", "y", "x"), _field()),
                                       "split": (("sample",), np.array(["train"] * 9 + ["valid"]))}), ["u"], {},
                        "'valid'"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gives_a_one_line_data_error(case):
    make, variables, kwargs, pattern = BAD_INPUTS[case]
    with pytest.raises(DataError, match=pattern) as info:
        FieldDataset(make(), variables, "train", **kwargs)
    assert "\n" not in str(info.value)


def test_missing_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(DataError, match="no such file: .*nothere.nc"):
        FieldDataset(tmp_path / "nothere.nc", ["u"])
    corrupt = tmp_path / "corrupt.nc"
    corrupt.write_bytes(b"CDF\x01 this is not a netCDF file" * 10)
    with pytest.raises(DataError, match="cannot read .*corrupt.nc"):
        FieldDataset(corrupt, ["u"])
    truncated = tmp_path / "truncated.nc"
    whole = write_dataset(tmp_path / "whole.nc", random_channels(), SPLIT, {}).read_bytes()
    truncated.write_bytes(whole[: len(whole) // 3])
    with pytest.raises(DataError, match="truncated.nc"):
        FieldDataset(truncated, ["u"])
    store = write_dataset(tmp_path / "damaged.zarr", random_channels(), SPLIT, {})
    (store / "u" / "c" / "0" / "0" / "0").write_bytes(b"\xff" * 64)  # header fine, a chunk damaged
    with pytest.raises(DataError, match="cannot read variable 'u' from .*damaged.zarr"):
        FieldDataset(store, ["u"])
    with pytest.raises(DataError, match="data.path is not set"):
        load_splits(DataConfig())
    assert not os.path.exists(tmp_path / "nothere.nc")


# ----------------------------------------------------------------------------------------------
# any grid: defaults from the file, padding, crops


def _odd_file(tmp_path, h=18, w=50):
    rng = np.random.default_rng(3)
    sst = (20 + rng.standard_normal((N, h, w))).astype(np.float32)
    sst[:, :4, :6] = np.nan  # land
    ds = xr.Dataset({"sst": (("time", "lat", "lon"), sst),
                     "lsm": (("time", "lat", "lon"), np.isnan(sst).astype(np.float32), {"flag_values": [0, 1]}),
                     "land": (("lat", "lon"), np.isnan(sst[0]).astype(np.float32))})
    path = tmp_path / "odd.nc"
    ds.to_netcdf(path)
    return path, sst


def test_variables_and_grid_default_to_the_file_padded_for_the_model(tmp_path):
    from fieldpaint.config import load_config

    path, _ = _odd_file(tmp_path)
    config = load_config("palette_slim", [f"data.path={path}"])
    assert config.data.variables == ("sst",)  # not the flag variable, not the 2-D mask
    assert (config.data.height, config.data.width) == (32, 64)  # 18x50 -> multiples of 2^4
    small = load_config("palette_slim", [f"data.path={path}", "model.channels=[8,16]", "model.norm_groups=4",
                                         "model.attention_heads=2"])
    assert (small.data.height, small.data.width) == (20, 52)
    assert DataConfig().variables == ("u", "v") and (DataConfig().height, DataConfig().width) == (64, 128)
    assert DataConfig(path=str(path)).height == 18  # a data section alone: the file's own grid


def test_padded_split_holds_no_extra_valid_pixel(tmp_path):
    path, sst = _odd_file(tmp_path)
    train, test = load_splits(DataConfig(path=str(path), variables=("sst",), height=20, width=52))
    fields = train.fields()
    assert fields.x.shape[-2:] == (20, 52) and fields.crop is None
    assert int(fields.valid.sum()) == int(np.isfinite(sst[: len(fields)]).sum())
    assert (fields.x[..., 18:, :] == 0).all() and (fields.valid[..., :, 50:] == 0).all()
    unpadded = FieldDataset(path, ["sst"], "train").fields()
    torch.testing.assert_close(fields.x[..., :18, :50], unpadded.x)
    assert train.stats == FieldDataset(path, ["sst"], "train").stats  # padding never enters the statistics


def test_larger_file_grid_gives_random_crops_or_an_error(tmp_path):
    path, _ = _odd_file(tmp_path, 24, 40)
    data = DataConfig(path=str(path), variables=("sst",), height=16, width=32)
    fields = load_splits(data)[0].fields()
    assert fields.x.shape[-2:] == (24, 40) and fields.crop == (16, 32)
    x0, valid = fields.batch(torch.arange(4), seed=0, step=0)
    assert x0.shape == (4, 1, 16, 32) and valid.shape == (4, 1, 16, 32)
    again, _ = fields.batch(torch.arange(4), seed=0, step=0)
    assert torch.equal(x0, again)
    with pytest.raises(DataError, match="data.crop"):
        load_splits(DataConfig(path=str(path), variables=("sst",), height=16, width=32, crop=False))
