"""Training data larger than memory: one split of a NetCDF/Zarr file read lazily, block by block.

`StreamingSplit` is the lazy twin of `fieldpaint.data.fields.FieldSplit`: the same `batch(index,
seed=, step=, share=)` gives the same (x0, valid) tensors, bit for bit, for the same seed and
batch order, because every number goes through the same steps:

1. the statistics come from a streaming pass over the train split in blocks of
   `fields.STATS_CHUNK` samples with the in-memory path's float64 sums (two passes: mean, then
   squared deviations), so they are the very same floats;
2. a sample is read with `fields.read_fields` as part of a block of `block` consecutive samples
   of the split (the file's own chunking along the sample dim, capped at BLOCK_BYTES), checked
   (inf, all-NaN) and normalised in float32 by `fields.normalize_in_place`, padded to the model's
   grid by `grid.pad_fields`, and kept in an LRU cache of `cache_blocks` blocks;
3. crops are cut at `fields.batch_offsets(seed, step)`, drawn for the whole global batch, and
   only this DDP rank's `share` of the samples is read.

Files are opened lazily through xarray (no dask needed: xarray's lazy indexing reads only the
chunks a block touches). Memory is bounded by cache_blocks x block x C x H x W x 4 bytes.
`load_training_data` picks the in-memory or the streaming path from `data.streaming`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from fieldpaint.config import DataConfig
from fieldpaint.data.fields import (STATS_CHUNK, FieldSplit, FieldStats, Split, batch_offsets, check_grid,
                                    dataset_layout, load_splits, normalize_in_place, read_fields, split_indices,
                                    split_labels, stats_from_moments, valid_mask)
from fieldpaint.data.grid import fit_shape, pad_fields, take_crops
from fieldpaint.data.io import open_dataset
from fieldpaint.errors import DataError

BLOCK_BYTES = 32 * 2**20  # largest block read at once (float32 bytes of all channels)


class StreamingSplit:
    """One split of `data_config.path`, read lazily: `batch` as FieldSplit's, `len`, `first`,
    `take`, `fields` (everything in memory), and `x`/`valid` views for code that indexes them.

    The file stays open (one handle per process, opened on first use, also after pickling into a
    DataLoader worker or a DDP process)."""

    def __init__(self, data_config: DataConfig, split: Split = "train", *, stats: FieldStats | None = None,
                 max_samples: int | None = None, cache_blocks: int | None = None, block: int | None = None,
                 path: str | Path | None = None, rows: np.ndarray | None = None) -> None:
        self.config, self.split = data_config, split
        self.path = str(path or data_config.path)
        self.variables = tuple(data_config.variables)
        self.model_grid = (int(data_config.height), int(data_config.width))
        self.cache_blocks = int(cache_blocks or data_config.cache_chunks)
        self._ds = None
        self._lock = threading.Lock()
        self._cache: OrderedDict[int, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.reads = 0  # blocks read from the file (cache misses), for benchmarks and tests
        ds = self._open()
        self.layout = dataset_layout(ds, self.variables, data_config.sample_dim, data_config.y_dim, data_config.x_dim)
        self.file_grid = (int(ds.sizes[self.layout.y_dim]), int(ds.sizes[self.layout.x_dim]))
        check_grid(*self.file_grid, None, self.model_grid, data_config.crop)
        self.held_grid = fit_shape(self.file_grid, self.model_grid)
        n = int(ds.sizes[self.layout.sample_dim]) if self.layout.sample_dim else 1
        labels = split_labels(ds, self.layout, n, data_config.test_fraction)
        self._labels = labels
        # `all_rows`: the split's samples along the file; `rows`: those this object serves
        self.all_rows = split_indices(labels, split, self.path)[:max_samples]
        self.rows = self.all_rows if rows is None else np.asarray(rows, dtype=np.int64)
        self.block = int(block or self._block_size(ds))
        self.stats = stats if stats is not None else self._train_stats(ds)
        if tuple(self.stats.variables) != self.variables:
            raise DataError(f"the normalisation statistics are for variables {list(self.stats.variables)}, "
                            f"not {list(self.variables)}")
        self.crop = self.model_grid if self.held_grid != self.model_grid else None

    # -- the file ------------------------------------------------------------------------------

    def _open(self):
        if self._ds is None:
            self._ds = open_dataset(self.path)
        return self._ds

    def __getstate__(self) -> dict:  # a worker or process reopens the file, with an empty cache
        state = dict(self.__dict__)
        state.update(_ds=None, _lock=None, _cache=OrderedDict())
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def close(self) -> None:
        if self._ds is not None:
            self._ds.close()
            self._ds = None

    def _block_size(self, ds) -> int:
        """Samples per block: the file's chunk along the sample dim, capped at BLOCK_BYTES."""
        cap = max(1, BLOCK_BYTES // (4 * len(self.variables) * self.file_grid[0] * self.file_grid[1]))
        da = ds[self.variables[0]]
        chunks = da.encoding.get("chunksizes") or da.encoding.get("chunks") or da.encoding.get("preferred_chunks")
        size = None
        if isinstance(chunks, dict):
            size = chunks.get(self.layout.sample_dim)
        elif chunks is not None and self.layout.sample_dim in da.dims:
            size = tuple(chunks)[da.dims.index(self.layout.sample_dim)]
        return int(max(1, min(cap, size or 1)))

    def _train_stats(self, ds) -> FieldStats:
        """The in-memory path's statistics (fields.compute_stats: float64 sums in blocks of
        STATS_CHUNK samples), accumulated block by block: the same floats without the whole split."""
        train = split_indices(self._labels, "train", self.path)
        if self.split == "train":
            train = self.all_rows
        count, total, blocks = 0, None, []
        for start in range(0, len(train), STATS_CHUNK):
            idx = train[start:start + STATS_CHUNK]
            x = read_fields(ds, self.variables, self.layout, idx, self.path)
            valid = valid_mask(x, self.variables, idx)
            count += int(valid.sum())
            part = np.where(valid, x.astype(np.float64), 0.0).sum(axis=(0, 2, 3))
            total = part if total is None else total + part
            blocks.append(idx)
        if count == 0:
            raise DataError("no valid pixel to compute normalisation statistics from")
        mean = total / count
        var = None
        for idx in blocks:
            x = read_fields(ds, self.variables, self.layout, idx, self.path)
            valid = np.isfinite(x).all(axis=1, keepdims=True)
            part = np.where(valid, (x.astype(np.float64) - mean[:, None, None]) ** 2, 0.0).sum(axis=(0, 2, 3))
            var = part if var is None else var + part
        return stats_from_moments(mean, var / count, self.variables)

    # -- blocks and the cache ------------------------------------------------------------------

    def _block(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Block b of the split (positions b*block .. in all_rows): normalised x, float valid."""
        with self._lock:
            if b in self._cache:
                self._cache.move_to_end(b)
                return self._cache[b]
        idx = self.all_rows[b * self.block:(b + 1) * self.block]
        with self._lock:  # netCDF4 handles are not thread-safe: one read at a time
            x = read_fields(self._open(), self.variables, self.layout, idx, self.path)
        valid = valid_mask(x, self.variables, idx)
        normalize_in_place(x, valid, self.stats)
        x, valid = pad_fields(x, valid, self.held_grid)
        entry = (torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(valid).to(torch.float32))
        with self._lock:
            self.reads += 1
            self._cache[b] = entry
            while len(self._cache) > self.cache_blocks:
                self._cache.popitem(last=False)
        return entry

    def _read(self, positions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, valid) of the samples at `positions` in `rows`, on the held grid, in that order."""
        where = np.searchsorted(self.all_rows, self.rows[positions])  # all_rows is sorted
        x = torch.empty((len(positions), len(self.variables), *self.held_grid))
        valid = torch.empty((len(positions), 1, *self.held_grid))
        blocks = where // self.block
        for b in np.unique(blocks):  # each block read (or found in the cache) once per batch
            bx, bv = self._block(int(b))
            rows = torch.from_numpy(np.flatnonzero(blocks == b))
            local = torch.from_numpy(where[rows.numpy()] - b * self.block)
            x[rows], valid[rows] = bx[local], bv[local]
        return x, valid

    # -- FieldSplit's interface ----------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def index(self) -> np.ndarray:
        return self.rows

    def batch(self, index: torch.Tensor | np.ndarray | Sequence[int], *, seed: int = 0, step: int = 0,
              share: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        """As FieldSplit.batch: crops for the whole `index`, only `share` of it read."""
        index = np.asarray(torch.as_tensor(np.asarray(index), dtype=torch.int64))
        offsets = batch_offsets(len(index), self.held_grid, self.crop, seed, step)
        x0, valid = self._read(index[share])
        if offsets is None:
            return x0, valid
        return take_crops(x0, offsets[share], self.crop), take_crops(valid, offsets[share], self.crop)

    def take(self, rows: Sequence[int] | np.ndarray | slice) -> StreamingSplit:
        picked = self.rows[rows] if isinstance(rows, slice) else self.rows[np.asarray(rows, dtype=np.int64)]
        other = object.__new__(StreamingSplit)
        other.__dict__.update({**self.__dict__, "rows": np.asarray(picked)})  # shares the file, lock and cache
        return other

    def first(self, n: int) -> StreamingSplit:
        return self if n <= 0 or n >= len(self) else self.take(slice(0, n))

    def fields(self) -> FieldSplit:
        """All of this split's samples in memory, on the held grid (as FieldDataset.fields())."""
        x, valid = self._read(np.arange(len(self)))
        return FieldSplit(x, valid, np.asarray(self.rows), self.crop)

    @property
    def x(self) -> _Rows:
        return _Rows(self, 0)

    @property
    def valid(self) -> _Rows:
        return _Rows(self, 1)


class _Rows:
    """`split.x[index]` / `split.valid[index]` for code written for FieldSplit (no crops)."""

    def __init__(self, split: StreamingSplit, which: int):
        self.split, self.which = split, which

    def __len__(self) -> int:
        return len(self.split)

    @property
    def shape(self) -> tuple[int, ...]:
        channels = len(self.split.variables) if self.which == 0 else 1
        return (len(self.split), channels, *self.split.held_grid)

    def __getitem__(self, index) -> torch.Tensor:
        positions = np.arange(len(self.split))[index] if isinstance(index, slice) else \
            np.asarray(torch.as_tensor(np.asarray(index), dtype=torch.int64)).reshape(-1)
        return self.split._read(positions)[self.which]


# ----------------------------------------------------------------------------------------------
# batches for a training loop, and the choice between memory and streaming


def iter_batches(data: FieldSplit | StreamingSplit, order: torch.Tensor, batch_size: int, *, seed: int,
                 first_step: int = 0, rank: int = 0, world_size: int = 1,
                 prefetch: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x0, valid) of each full global batch of `order` (positions in `data`), this rank's share,
    step by step from `first_step` (the crops of step s come from (seed, s)). With `prefetch`,
    the next batch is read in a background thread while the caller trains on this one."""
    steps = len(order) // batch_size
    share = slice(rank * batch_size // world_size, (rank + 1) * batch_size // world_size)

    def get(i: int):
        return data.batch(order[i * batch_size:(i + 1) * batch_size], seed=seed, step=first_step + i, share=share)

    if not prefetch or steps < 2:
        for i in range(steps):
            yield get(i)
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(get, 0)
        for i in range(steps):
            current = pending.result()
            if i + 1 < steps:
                pending = pool.submit(get, i + 1)
            yield current


def chunked_order(n: int, block: int, window: int, seed: int, epoch: int) -> torch.Tensor:
    """An epoch order for streaming: the blocks of `block` consecutive samples in random order,
    samples shuffled within each group of `window` blocks. A cache of >= `window` blocks then
    reads every block once per epoch (a plain permutation reads ~one block per sample when the
    file is much larger than the cache). Used for both paths, it keeps their batches equal."""
    g = torch.Generator().manual_seed(seed * 7919 + epoch + 1)
    starts = torch.randperm(-(-n // block), generator=g) * block
    out = []
    for i in range(0, len(starts), window):
        group = torch.cat([torch.arange(int(s), min(int(s) + block, n)) for s in starts[i:i + window]])
        out.append(group[torch.randperm(len(group), generator=g)])
    return torch.cat(out)


def load_training_data(data_config: DataConfig, stats: FieldStats | None = None
                       ) -> tuple[FieldSplit | StreamingSplit, FieldSplit | StreamingSplit, FieldStats]:
    """(train, test, train statistics): in memory (fields.load_splits) or, with data.streaming,
    as StreamingSplits. Both answer `len`, `batch`, `first` and `take` alike."""
    if data_config.path is None:
        raise DataError("data.path is not set: name a NetCDF/Zarr file (make one with `fieldpaint data generate`)")
    if not data_config.streaming:
        train, test = load_splits(data_config, stats=stats)
        return train.fields(), test.fields(), train.stats
    train = StreamingSplit(data_config, "train", stats=stats, max_samples=data_config.train_samples)
    test = StreamingSplit(data_config, "test", stats=train.stats)
    return train, test, train.stats
