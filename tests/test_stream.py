"""The lazy loader (fieldpaint.data.stream) against the in-memory path (fieldpaint.data.fields).

The reference is the in-memory FieldSplit of the same file: the streaming path must give the very
same statistics and batches (bit for bit) for the same seed and batch order, whatever its block
size, cache size or number of DDP ranks.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from fieldpaint.config import DataConfig, load_config
from fieldpaint.data.fields import load_splits
from fieldpaint.data.io import write_dataset
from fieldpaint.data.stream import StreamingSplit, iter_batches, load_training_data

N, H, W = 23, 20, 40


def write_file(path, seed: int = 0):
    rng = np.random.default_rng(seed)
    u = (280.0 + 3.0 * rng.standard_normal((N, H, W))).astype(np.float32)  # large mean: float64 sums matter
    v = (-1.0 + 0.5 * rng.standard_normal((N, H, W))).astype(np.float32)
    u[:, :5, :7] = np.nan  # land: never valid
    v[:, :5, :7] = np.nan
    u[3, 10, 10] = np.nan  # a cloud in one sample
    split = np.array(["train"] * 19 + ["test"] * 4)
    return write_dataset(path, {"u": u, "v": v}, split, {"title": "stream test"})


@pytest.fixture(params=[".nc", ".zarr"])
def data_file(tmp_path, request):
    return write_file(tmp_path / f"fields{request.param}")


def _all_batches(split, order, batch_size, seed, **kw):
    return list(iter_batches(split, order, batch_size, seed=seed, **kw))


@pytest.mark.parametrize("grid, block, cache", [((16, 32), 1, 2), ((16, 32), 4, 1), ((20, 40), 3, 64),
                                                ((24, 48), 5, 2)])
def test_streaming_batches_equal_in_memory_batches(data_file, grid, block, cache):
    # (16, 32): random crops of the 20x40 file; (20, 40): the file's grid; (24, 48): padding
    config = DataConfig(path=str(data_file), height=grid[0], width=grid[1])
    train_mem, _ = load_splits(config)
    memory = train_mem.fields()
    stream = StreamingSplit(config, "train", block=block, cache_blocks=cache)
    assert stream.stats == train_mem.stats  # the same float64 sums: the same floats
    order = torch.randperm(len(memory), generator=torch.Generator().manual_seed(5))
    for prefetch in (False, True):
        got = _all_batches(stream, order, 4, seed=11, first_step=7, prefetch=prefetch)
        want = _all_batches(memory, order, 4, seed=11, first_step=7, prefetch=False)
        assert len(got) == len(want) == len(memory) // 4
        for (gx, gv), (wx, wv) in zip(got, want):
            assert gx.shape == (4, 2, *grid) and gv.shape == (4, 1, *grid)
            assert torch.equal(gx, wx) and torch.equal(gv, wv)
    assert len(stream._cache) <= cache  # the LRU cache stays bounded


def test_crops_differ_between_steps_and_padding_is_never_valid(data_file):
    config = DataConfig(path=str(data_file), height=16, width=32)
    stream = StreamingSplit(config, "train")
    a, _ = stream.batch([0, 0], seed=0, step=0)
    b, _ = stream.batch([0, 0], seed=0, step=1)
    assert not torch.equal(a, b)  # new windows each step
    padded = StreamingSplit(DataConfig(path=str(data_file), height=24, width=48), "train")
    _, valid = padded.batch(np.arange(len(padded)))
    assert not valid[..., H:, :].any() and not valid[..., :, W:].any()
    assert not valid[..., :5, :7].any()  # land stays never valid
    assert int(valid.sum()) == len(padded) * (H * W - 35) - 1  # one cloud pixel in sample 3


def test_ddp_shares_partition_the_global_batch(data_file):
    config = DataConfig(path=str(data_file), height=16, width=32)
    stream = StreamingSplit(config, "train", block=2)
    order = torch.randperm(len(stream), generator=torch.Generator().manual_seed(1))
    whole = _all_batches(stream, order, 6, seed=3)
    ranks = [_all_batches(StreamingSplit(config, "train", block=2), order, 6, seed=3, rank=r, world_size=3)
             for r in range(3)]
    for step, (wx, wv) in enumerate(whole):
        assert torch.equal(torch.cat([ranks[r][step][0] for r in range(3)]), wx)
        assert torch.equal(torch.cat([ranks[r][step][1] for r in range(3)]), wv)


def test_a_rank_reads_only_its_share(data_file):
    config = DataConfig(path=str(data_file), height=20, width=40)
    stream = StreamingSplit(config, "train", block=1)
    stream.batch(np.arange(8), share=slice(0, 4))
    assert stream.reads == 4


def test_pickled_split_reopens_the_file_and_views_index_like_a_tensor(data_file):
    config = DataConfig(path=str(data_file), height=16, width=32)
    stream = StreamingSplit(config, "test")
    again = pickle.loads(pickle.dumps(stream))
    idx = torch.tensor([2, 0])
    assert torch.equal(again.x[idx], stream.x[idx]) and torch.equal(again.valid[idx], stream.valid[idx])
    memory = load_splits(config)[1].fields()
    assert torch.equal(stream.x[idx], memory.x[idx])
    assert len(stream.x) == len(memory.x) == 4
    assert torch.equal(stream.first(2).fields().x, memory.first(2).x)


def test_load_training_data_picks_memory_or_streaming(data_file):
    values = ["model.channels=[8]", "model.norm_groups=4", "model.attention_heads=2", f"data.path={data_file}"]
    memory = load_training_data(load_config("palette_slim", values).data)
    streaming = load_training_data(load_config("palette_slim", [*values, "data.streaming=true"]).data)
    assert isinstance(streaming[0], StreamingSplit) and not isinstance(memory[0], StreamingSplit)
    assert memory[2] == streaming[2]
    index = torch.arange(len(memory[1]))
    for a, b in zip(memory[1].batch(index, seed=0, step=0), streaming[1].batch(index, seed=0, step=0)):
        assert torch.equal(a, b)


def test_chunked_order_is_a_permutation_that_reads_each_block_once(data_file):
    from fieldpaint.data.stream import chunked_order

    order = chunked_order(19, 4, 2, seed=0, epoch=0)
    assert sorted(order.tolist()) == list(range(19))
    assert not torch.equal(order, chunked_order(19, 4, 2, seed=0, epoch=1))
    stream = StreamingSplit(DataConfig(path=str(data_file), height=16, width=32), "train", block=4, cache_blocks=2)
    list(iter_batches(stream, order, 3, seed=0, prefetch=False))
    assert stream.reads == 5  # ceil(19 / 4) blocks, each read once with a cache of `window` blocks
