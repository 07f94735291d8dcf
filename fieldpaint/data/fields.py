"""Fields from NetCDF/Zarr (user data and built-in data alike) as normalised tensors with a valid mask.

The path of one file through this module:

1. open lazily (`fieldpaint.data.io.open_dataset`); nothing is read yet;
2. find which dims are the samples and the grid (`find_layout`): named in the config, or detected
   from usual names (time/sample/member, y/lat/rows, x/lon/cols), or else the last two free dims;
3. label every sample 'train' or 'test' (`split_labels`): the file's `split` variable, or else the
   LAST `test_fraction` of the samples is the test split - contiguous, so consecutive time steps
   of a series do not leak between the splits;
4. read the selected split's samples, and only those, into memory as float32 (N, C, H, W): the
   fast in-memory training wants this; a 9,180 x 2 x 64 x 128 split takes 600 MB;
5. build the valid mask: a pixel is valid when every channel is finite there (NaN marks
   never-valid pixels such as land in an ocean field); inf is an error, not a mask;
6. z-score each channel with train-split statistics over valid pixels (`FieldStats`), then set
   invalid pixels to 0 so the network sees finite numbers; the mask travels with every sample so
   that losses and scores can ignore those pixels;
7. fit the model's grid (`grid`, the config's data.height x data.width; fieldpaint.data.grid):
   along an axis where the file is smaller, pad with never-valid pixels; where it is larger, keep
   the file's extent and let `FieldSplit.batch` cut random crops of the model's grid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import xarray as xr
from torch.utils.data import Dataset

from fieldpaint.config import MIN_GRID, PERIODICITIES, Config, DataConfig
from fieldpaint.data.grid import check_wrap_extent, crop_generator, crop_offsets, fit_shape, pad_fields, take_crops
from fieldpaint.data.io import SPLIT_VALUES, SPLIT_VARIABLE, open_dataset
from fieldpaint.data.layout import (X_DIM_NAMES, Y_DIM_NAMES, SAMPLE_DIM_NAMES, GridLayout,  # noqa: F401
                                    dataset_layout, file_variables, find_layout, gridded_variables)
from fieldpaint.data.stats import (CONSTANT_RTOL, STATS_CHUNK, FieldStats, compute_stats,  # noqa: F401
                                   stats_from_moments)
from fieldpaint.errors import ConfigError, DataError

Split = Literal["train", "test", "all"]

# ----------------------------------------------------------------------------------------------
# normalisation statistics


def periodic_axes(setting: str, attrs: Mapping[str, Any]) -> tuple[bool, bool]:
    """(periodic along y, along x) from a setting 'none' | 'x' | 'y' | 'xy', or 'auto': the data
    file's `periodic` attribute (the Kolmogorov generator records 'xy'), else not periodic."""
    value = str(attrs.get("periodic", "none")) if setting == "auto" else str(setting)
    if value not in PERIODICITIES:
        raise DataError(f"periodic must be one of auto, {', '.join(PERIODICITIES)}; got {value!r}")
    return "y" in value, "x" in value


def check_wrap(wrap: str, periodic: tuple[bool, bool], file_grid: tuple[int, int],
               model_grid: tuple[int, int]) -> None:
    """A model whose convolutions wrap around along `wrap` (model.wrap) fits this data: the field is
    periodic along those axes (`periodic`, (y, x)) and the file's grid there is the model's, so the
    pixel across the edge is the field's own neighbour, not padding or another crop's."""
    for axis, is_periodic in zip("yx", periodic):
        if axis in wrap and not is_periodic:
            raise DataError(f"model.wrap is {wrap!r} but the data is not periodic along {axis} (data.periodic, or "
                            f"the file's `periodic` attribute): set data.periodic, or model.wrap without {axis}")
    check_wrap_extent(wrap, file_grid, model_grid, "the file has")


def file_grid_and_attrs(data_config: DataConfig) -> tuple[tuple[int, int], dict[str, Any]]:
    """The (height, width) and the attributes of the file `data_config` names, from its metadata only."""
    with open_dataset(data_config.path) as ds:
        layout = dataset_layout(ds, data_config.variables, data_config.sample_dim, data_config.y_dim,
                                data_config.x_dim)
        return (int(ds.sizes[layout.y_dim]), int(ds.sizes[layout.x_dim])), dict(ds.attrs)


def check_wrap_on_file(data_config: DataConfig, wrap: str) -> None:
    """`check_wrap` for the file `data_config` names, read from its metadata only."""
    if wrap == "none":
        return
    file_grid, attrs = file_grid_and_attrs(data_config)
    check_wrap(wrap, periodic_axes(data_config.periodic, attrs), file_grid, (data_config.height, data_config.width))


def augmentation_frames(data_config: DataConfig, stats: FieldStats) -> tuple:
    """The identity and the file's declared symmetries (data.symmetry) in `stats`' units, for
    train.augment; a ConfigError where it declares none or the model's grid crops the file's."""
    from fieldpaint.data.symmetry import data_symmetries
    grid, attrs = file_grid_and_attrs(data_config)
    if grid != (data_config.height, data_config.width):
        raise ConfigError(f"train.augment 'symmetries' needs the file's grid {grid[0]}x{grid[1]} as the model's "
                          f"(data.height x data.width), not crops of it: a symmetry maps the whole grid")
    found = data_symmetries(data_config.symmetries, attrs, data_config.variables,
                            periodic_axes(data_config.periodic, attrs), grid, stats)
    if len(found) == 1:
        raise ConfigError("train.augment is 'symmetries' but the data declares none (its `symmetries` attribute, "
                          "read with data.symmetries: auto): set train.augment: none")
    return found


def check_grid(height: int, width: int, expected: tuple[int, int] | None, grid: tuple[int, int] | None = None,
               crop: bool = True) -> None:
    """The file's grid is usable: large enough, equal to `expected` (when given), and not larger
    than the model's `grid` along an axis unless `crop` (random crops of it are trained)."""
    if height < MIN_GRID or width < MIN_GRID:
        raise DataError(f"grid {height}x{width} is too small (at least {MIN_GRID}x{MIN_GRID})")
    if expected is not None and (height, width) != tuple(expected):
        raise DataError(f"grid is {height}x{width} but {expected[0]}x{expected[1]} was expected "
                        "(data.height x data.width)")
    if grid is not None and not crop and (height > grid[0] or width > grid[1]):
        raise DataError(f"grid is {height}x{width}, larger than the model's {grid[0]}x{grid[1]} "
                        "(data.height x data.width), and data.crop is false: set data.crop=true to train "
                        "on random crops, or leave data.height and data.width unset to use the whole grid")


# ----------------------------------------------------------------------------------------------
# train/test split


def split_labels(ds: xr.Dataset, layout: GridLayout, n_samples: int, test_fraction: float) -> np.ndarray:
    """'train'/'test' for each sample: the file's `split` variable, else the last fraction is test."""
    if SPLIT_VARIABLE in ds.variables:
        var = ds[SPLIT_VARIABLE]
        expected = (layout.sample_dim,) if layout.sample_dim else ()
        if var.dims != expected:
            raise DataError(f"the {SPLIT_VARIABLE!r} variable has dims {var.dims}, expected {expected}")
        labels = np.array([v.decode() if isinstance(v, bytes) else str(v)
                           for v in np.asarray(var.values).reshape(-1)], dtype=object)
        bad = sorted(set(labels) - set(SPLIT_VALUES))
        if bad:
            raise DataError(f"the {SPLIT_VARIABLE!r} variable holds {bad}; only 'train' and 'test' are allowed")
        return labels
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction {test_fraction} is not in (0, 1)")
    # At least one sample on each side when there are two or more.
    n_test = 0 if n_samples < 2 else min(n_samples - 1, max(1, round(n_samples * test_fraction)))
    return np.array(["train"] * (n_samples - n_test) + ["test"] * n_test, dtype=object)


def split_indices(labels: np.ndarray, split: Split, source: str) -> np.ndarray:
    if split not in ("train", "test", "all"):
        raise DataError(f"split {split!r} is not one of 'train', 'test', 'all'")
    indices = np.arange(len(labels)) if split == "all" else np.flatnonzero(labels == split)
    if len(indices) == 0:
        raise DataError(f"no {split} samples in {source} ({len(labels)} samples, "
                        f"{int((labels == 'train').sum())} train, {int((labels == 'test').sum())} test)")
    return indices


# ----------------------------------------------------------------------------------------------
# reading and checking values


def read_fields(ds: xr.Dataset, variables: Sequence[str], layout: GridLayout,
                indices: np.ndarray, source: str = "the dataset") -> np.ndarray:
    """The chosen samples of every variable as float32 (N, C, H, W); reads only those samples."""
    height, width = ds.sizes[layout.y_dim], ds.sizes[layout.x_dim]
    out = np.empty((len(indices), len(variables), height, width), dtype=np.float32)
    contiguous = len(indices) > 0 and np.array_equal(indices, np.arange(indices[0], indices[0] + len(indices)))
    which = slice(int(indices[0]), int(indices[-1]) + 1) if contiguous else indices
    for c, name in enumerate(variables):
        da = ds[name].isel({d: 0 for d in layout.squeeze})
        if layout.sample_dim is None:
            da = da.expand_dims("__sample__")
            sample_dim = "__sample__"
        else:
            sample_dim = layout.sample_dim
        da = da.isel({sample_dim: which}).transpose(sample_dim, layout.y_dim, layout.x_dim)
        try:
            out[:, c] = np.asarray(da.values, dtype=np.float32)
        except (OSError, RuntimeError, ValueError) as err:  # a damaged chunk shows only when read
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise DataError(f"cannot read variable {name!r} from {source}: {reason}") from None
    return out


def valid_mask(x: np.ndarray, variables: Sequence[str], sample_index: np.ndarray) -> np.ndarray:
    """(N, 1, H, W) bool, True where every channel is finite; DataError for inf or an all-NaN sample."""
    infinite = np.isinf(x)
    if infinite.any():
        n, c = np.argwhere(infinite.any(axis=(2, 3)))[0]
        raise DataError(f"variable {variables[c]!r} has infinite values (first in sample {sample_index[n]}); "
                        "use NaN for missing pixels")
    valid = np.isfinite(x).all(axis=1, keepdims=True)
    empty = np.flatnonzero(~valid.any(axis=(1, 2, 3)))
    if len(empty):
        raise DataError(f"sample {sample_index[empty[0]]} has no valid pixel (all NaN in some channel)"
                        + (f"; {len(empty)} such samples" if len(empty) > 1 else ""))
    return valid


def normalize_in_place(x: np.ndarray, valid: np.ndarray, stats: FieldStats) -> None:
    """z-score x (N, C, H, W) in place, then 0 at never-valid pixels: the network needs finite input."""
    x -= np.asarray(stats.mean, dtype=x.dtype).reshape(-1, 1, 1)
    x /= np.asarray(stats.std, dtype=x.dtype).reshape(-1, 1, 1)
    np.copyto(x, 0.0, where=~valid)


def _plain(value: Any) -> Any:
    """netCDF attributes come back as numpy scalars and arrays; runs store them as JSON."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


# ----------------------------------------------------------------------------------------------
# the dataset


@dataclass
class FieldSplit:
    """A split held in memory: what training, evaluation and the baselines work on.

    x (N, C, H, W) normalised, 0 at never-valid pixels; valid (N, 1, H, W) float 0/1; index (N,)
    each sample's position along the file's sample dimension. `crop` (h, w): the model's grid when
    the held grid is larger; `batch` then cuts random h x w windows (None: the held grid is the
    model's).
    """

    x: torch.Tensor
    valid: torch.Tensor
    index: np.ndarray
    crop: tuple[int, int] | None = None

    def __len__(self) -> int:
        return self.x.shape[0]

    def take(self, rows: Sequence[int] | np.ndarray | slice) -> FieldSplit:
        """The samples at `rows` (a slice, or positions within this split)."""
        if isinstance(rows, slice):
            return FieldSplit(self.x[rows], self.valid[rows], self.index[rows], self.crop)
        rows = np.asarray(rows, dtype=np.int64)
        picked = torch.from_numpy(rows)
        return FieldSplit(self.x[picked], self.valid[picked], self.index[rows], self.crop)

    def first(self, n: int) -> FieldSplit:
        """The first n samples (n <= 0: all)."""
        return self if n <= 0 or n >= len(self) else self.take(slice(0, n))

    def batch(self, index: torch.Tensor | np.ndarray | Sequence[int], *, seed: int = 0, step: int = 0,
              share: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, valid) of the samples at `index` (positions in this split) on the model's grid:
        random crops drawn from `crop_generator(seed, step)` for the whole `index` when the held
        grid is larger, then cut to `share` (a DDP rank's part), so the crops do not depend on the
        number of processes. `fieldpaint.data.stream.StreamingSplit.batch` gives the same."""
        index = torch.as_tensor(np.asarray(index), dtype=torch.int64)
        offsets = batch_offsets(len(index), tuple(self.x.shape[-2:]), self.crop, seed, step)
        picked = index[share]
        x0, valid = self.x[picked], self.valid[picked]
        if offsets is None:
            return x0, valid
        return take_crops(x0, offsets[share], self.crop), take_crops(valid, offsets[share], self.crop)


def batch_offsets(n: int, grid: tuple[int, int], shape: tuple[int, int] | None, seed: int,
                  step: int) -> np.ndarray | None:
    """(n, 2) crop corners of one batch of n samples (None when the grid is the model's)."""
    if shape is None or tuple(shape) == tuple(grid):
        return None
    return crop_offsets(n, grid, shape, crop_generator(seed, step))


class FieldDataset(Dataset):
    """One split of a gridded dataset as normalised (C, H, W) tensors with a (1, H, W) valid mask.

    The selected split is read into memory on construction (float32, N*C*H*W*4 bytes) and the file
    is closed; only that split's samples are read from disk. Statistics come from `stats` when
    given (the test split and inference reuse the train statistics), else from the train split of
    the same source (limited to `max_samples` when `split` is 'train').

    `grid` (H, W): the model's grid: the file's grid is padded to it with never-valid pixels
    along an axis where it is smaller; where it is larger, `crop` allows it (`fields().batch` cuts
    random crops) or not (DataError). `expected_shape`: the file's grid must be exactly this.

    `max_samples` keeps the first N samples of the split. Items are
    dict(x=(C, H, W) float32 with never-valid pixels 0, valid=(1, H, W) float32 0/1,
    index=position of the sample along the file's sample dim).
    """

    def __init__(self, source: str | Path | xr.Dataset, variables: Sequence[str], split: Split = "train", *,
                 stats: FieldStats | None = None, sample_dim: str | None = None, y_dim: str | None = None,
                 x_dim: str | None = None, test_fraction: float = 0.1, max_samples: int | None = None,
                 expected_shape: tuple[int, int] | None = None, grid: tuple[int, int] | None = None,
                 crop: bool = True) -> None:
        self.model_grid = None if grid is None else (int(grid[0]), int(grid[1]))
        self.crop = crop
        self.variables = tuple(variables)
        if not self.variables:
            raise DataError("at least one variable is needed")
        if stats is not None and tuple(stats.variables) != self.variables:
            raise DataError(f"the normalisation statistics are for variables {list(stats.variables)}, "
                            f"not {list(self.variables)}")
        if max_samples is not None and max_samples < 1:
            raise DataError(f"max_samples {max_samples} must be at least 1")
        if isinstance(source, xr.Dataset):
            self._load(source, "the given dataset", split, stats, sample_dim, y_dim, x_dim,
                       test_fraction, max_samples, expected_shape)
        else:
            with open_dataset(source) as ds:
                self._load(ds, str(source), split, stats, sample_dim, y_dim, x_dim,
                           test_fraction, max_samples, expected_shape)

    def _load(self, ds: xr.Dataset, source: str, split: Split, stats: FieldStats | None,
              sample_dim: str | None, y_dim: str | None, x_dim: str | None, test_fraction: float,
              max_samples: int | None, expected_shape: tuple[int, int] | None) -> None:
        layout = dataset_layout(ds, self.variables, sample_dim, y_dim, x_dim)
        self.sample_dim, self.y_dim, self.x_dim = layout.sample_dim, layout.y_dim, layout.x_dim
        self.height, self.width = int(ds.sizes[layout.y_dim]), int(ds.sizes[layout.x_dim])
        check_grid(self.height, self.width, expected_shape, self.model_grid, self.crop)
        n_samples = int(ds.sizes[layout.sample_dim]) if layout.sample_dim else 1
        labels = split_labels(ds, layout, n_samples, test_fraction)
        self.sample_index = split_indices(labels, split, source)[:max_samples]
        x = read_fields(ds, self.variables, layout, self.sample_index, source)
        valid = valid_mask(x, self.variables, self.sample_index)
        if stats is None and split == "train":
            stats = compute_stats(x, valid, self.variables)
        elif stats is None:
            train = split_indices(labels, "train", source)
            x_train = read_fields(ds, self.variables, layout, train, source)
            stats = compute_stats(x_train, valid_mask(x_train, self.variables, train), self.variables)
            del x_train
        self.stats = stats
        normalize_in_place(x, valid, stats)
        if self.model_grid is not None:  # padding is never valid: x = 0 and valid = False there
            x, valid = pad_fields(x, valid, fit_shape((self.height, self.width), self.model_grid))
        self._x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        self._valid = torch.from_numpy(valid)
        self.attrs = {str(k): _plain(v) for k, v in ds.attrs.items()}
        self.coords = {d: np.asarray(ds[d].values) for d in (layout.y_dim, layout.x_dim) if d in ds.coords}

    def __len__(self) -> int:
        return self._x.shape[0]

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"x": self._x[i], "valid": self._valid[i].to(torch.float32), "index": int(self.sample_index[i])}

    def fields(self) -> FieldSplit:
        """The whole split in memory. x is the dataset's own storage (no 600 MB copy): do not
        modify it in place."""
        held = tuple(self._x.shape[-2:])
        crop = self.model_grid if self.model_grid is not None and held != self.model_grid else None
        return FieldSplit(self._x, self._valid.to(torch.float32), np.asarray(self.sample_index), crop)


def data_options(data_config: DataConfig) -> dict[str, Any]:
    """The FieldDataset keywords a data config implies: dims, split rule, the model's grid, crops."""
    return dict(sample_dim=data_config.sample_dim, y_dim=data_config.y_dim, x_dim=data_config.x_dim,
                test_fraction=data_config.test_fraction, grid=(data_config.height, data_config.width),
                crop=data_config.crop)


def load_split(data_config: DataConfig, split: Split, stats: FieldStats | None = None,
               max_samples: int | None = None, path: str | Path | None = None) -> FieldDataset:
    """One split of `path` (default data.path) as `data_config` reads it, on the model's grid."""
    return FieldDataset(path or data_config.path, data_config.variables, split, stats=stats,
                        max_samples=max_samples, **data_options(data_config))


def load_splits(data_config: DataConfig, stats: FieldStats | None = None) -> tuple[FieldDataset, FieldDataset]:
    """(train, test) from `data.path` on the model's grid (padded, or kept larger for crops):
    train statistics computed (or the given ones, e.g. a checkpoint's on resume), the test split
    reusing them."""
    if data_config.path is None:
        raise DataError("data.path is not set: generate a dataset first (fieldpaint data generate ...)")
    options = data_options(data_config)
    train = FieldDataset(data_config.path, data_config.variables, "train", stats=stats,
                         max_samples=data_config.train_samples, **options)
    test = FieldDataset(data_config.path, data_config.variables, "test", stats=train.stats, **options)
    return train, test


def never_valid_pixels(data_config: DataConfig, path: str | Path | None = None) -> np.ndarray:
    """(H, W) bool on the file's grid: pixels not valid in any train sample of `path` (default
    data.path), e.g. land in an ocean field; read in blocks of STATS_CHUNK samples."""
    source = path or data_config.path
    with open_dataset(source) as ds:
        layout = dataset_layout(ds, data_config.variables, data_config.sample_dim, data_config.y_dim,
                                data_config.x_dim)
        n = int(ds.sizes[layout.sample_dim]) if layout.sample_dim else 1
        train = split_indices(split_labels(ds, layout, n, data_config.test_fraction), "train", str(source))
        seen = np.zeros((ds.sizes[layout.y_dim], ds.sizes[layout.x_dim]), dtype=bool)
        for start in range(0, len(train), STATS_CHUNK):
            block = read_fields(ds, data_config.variables, layout, train[start:start + STATS_CHUNK], str(source))
            seen |= np.isfinite(block).all(axis=1).any(axis=0)
    return ~seen


def synthetic_split(config: Config, n: int, seed: int = 0) -> FieldSplit:
    """n random N(0, 1) fields of config's grid and channels, with a never-valid corner (land)."""
    g = torch.Generator().manual_seed(seed)
    h, w = config.data.height, config.data.width
    valid = torch.ones(n, 1, h, w)
    valid[:, :, : h // 4, : w // 4] = 0
    x = torch.randn(n, len(config.data.variables), h, w, generator=g) * valid
    return FieldSplit(x, valid, np.arange(n))
