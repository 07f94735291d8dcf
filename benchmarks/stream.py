"""Train-loader throughput and peak memory: streaming (fieldpaint.data.stream) vs in memory.

Generates a Zarr store of random fields (written chunk by chunk, so it can be far larger than
memory), then, each in a fresh subprocess so that peak RSS is its own:

- memory: `load_splits` (the whole train split read into RAM), then one epoch of
  `FieldSplit.batch` batches;
- streaming: `StreamingSplit` (streaming statistics pass, then lazy blocks through an LRU cache,
  next batch prefetched in a thread), the same epoch order and crops.

It prints samples/s of the epoch (load and statistics time separately) and the peak RSS.
Small by default (~0.1 GB, well under a minute on 2 cores). The 10 GB case (memory mode is then
skipped unless it fits: it would need ~10 GB of RAM):

    python benchmarks/stream.py --gb 10 --out /scratch/fields.zarr --modes streaming
    python benchmarks/stream.py --gb 10 --out /scratch/fields.zarr --modes streaming,memory   # RAM >= 12 GB
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

CHUNK = 64  # samples per Zarr chunk


def generate(path: Path, gb: float, channels: int, height: int, width: int) -> int:
    """A Zarr store of ~gb GB float32 (sample, y, x) fields with a land corner; returns N."""
    per_sample = channels * height * width * 4
    n = max(2 * CHUNK, int(gb * 2**30 / per_sample) // CHUNK * CHUNK)
    if path.exists() and xr.open_zarr(path).sizes.get("sample") == n:
        return n
    shutil.rmtree(path, ignore_errors=True)
    rng = np.random.default_rng(0)
    for start in range(0, n, CHUNK):
        block = rng.standard_normal((CHUNK, height, width), dtype=np.float32)
        block[:, : height // 4, : width // 4] = np.nan
        ds = xr.Dataset({f"c{c}": (("sample", "y", "x"), block + c) for c in range(channels)})
        encoding = {f"c{c}": {"chunks": (CHUNK, height, width)} for c in range(channels)}
        if start == 0:
            ds.to_zarr(path, mode="w", encoding=encoding, consolidated=False)
        else:
            ds.to_zarr(path, append_dim="sample", consolidated=False)
    return n


def run_mode(mode: str, path: str, grid: tuple[int, int], batch: int, max_steps: int, cache: int,
             order_kind: str, train_steps: int = 0, train_batch: int = 16) -> dict:
    from fieldpaint.config import DataConfig
    from fieldpaint.data.fields import load_splits
    from fieldpaint.data.stream import StreamingSplit, chunked_order, iter_batches

    config = DataConfig(path=path, height=grid[0], width=grid[1], streaming=mode == "streaming", cache_chunks=cache)
    started = time.perf_counter()
    if mode == "memory":
        data = load_splits(config)[0].fields()
    else:
        data = StreamingSplit(config, "train")
    load_s = time.perf_counter() - started
    if order_kind == "chunked":  # blocks in random order, shuffled within windows of cache/2 blocks
        order = chunked_order(len(data), CHUNK, max(1, cache // 2), seed=0, epoch=0)[: max_steps * batch]
    else:
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[: max_steps * batch]
    started, seen = time.perf_counter(), 0
    for x0, _ in iter_batches(data, order, batch, seed=0, prefetch=mode == "streaming"):
        seen += len(x0)
    seconds = time.perf_counter() - started
    result = {"mode": mode, "samples": seen, "load_s": load_s, "epoch_s": seconds, "samples_per_s": seen / seconds}
    if train_steps:
        result["train_samples_per_s"] = train_rate(data, path, grid, train_batch, train_steps, order)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def train_rate(data, path: str, grid: tuple[int, int], batch: int, steps: int, order: torch.Tensor) -> float:
    """Samples/s of real training steps (make_batch + train_step, the slim preset at half width)
    whose batches come from `data`: what the loader costs a training run, not the loader alone."""
    from fieldpaint.config import load_config
    from fieldpaint.diffusion.schedule import make_schedule
    from fieldpaint.ema import EMA
    from fieldpaint.runtime import Runtime
    from fieldpaint.train import build_optimization, build_training_model, make_batch, train_step

    config = load_config("standard_attn_slim", [f"data.path={path}", f"data.height={grid[0]}",
                                                f"data.width={grid[1]}", f"train.batch_size={batch}",
                                                "model.channels=[16,32,64,64]", "model.norm_groups=8"])
    device = torch.device("cpu")
    model = build_training_model(config, device).train()
    optimizer, scheduler, _ = build_optimization(model, config, steps + 1)
    ema = EMA(model, config.train.ema_decay, config.train.ema_warmup_steps)
    schedule = make_schedule(config.diffusion.schedule, config.diffusion.timesteps)
    started = None
    for step in range(steps + 1):  # step 0 is an untimed warm-up
        if step == 1:
            started = time.perf_counter()
        index = order[(step * batch) % max(1, len(order) - batch):][:batch]
        batch_ = make_batch(data, index, config, 0, step, Runtime(device))
        train_step(model, batch_, optimizer=optimizer, scheduler=scheduler, ema=ema, schedule=schedule,
                   config=config, step=step)
    return steps * batch / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=0.1, help="size of the generated store")
    parser.add_argument("--out", default="/tmp/fieldpaint_stream_bench.zarr")
    parser.add_argument("--channels", type=int, default=2)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--crop", default="64x128", help="model grid: random crops of this size")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40, help="batches timed per mode (at most one epoch)")
    parser.add_argument("--modes", default="memory,streaming")
    parser.add_argument("--order", choices=["chunked", "random"], default="chunked",
                        help="epoch order: stream.chunked_order (blocks shuffled) or a plain permutation")
    parser.add_argument("--cache-blocks", type=int, default=8, help="streaming: blocks (chunks) in the LRU cache")
    parser.add_argument("--train-steps", type=int, default=0,
                        help="also time this many real training steps fed by each loader (0: none)")
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    grid = tuple(int(v) for v in args.crop.split("x"))
    if args.child:
        print(json.dumps(run_mode(args.child, args.out, grid, args.batch, args.steps, args.cache_blocks, args.order,
                                  args.train_steps, args.train_batch)))
        return
    started = time.perf_counter()
    n = generate(Path(args.out), args.gb, args.channels, args.height, args.width)
    size = n * args.channels * args.height * args.width * 4 / 2**30
    print(f"{args.out}: {n} samples x {args.channels} x {args.height}x{args.width} = {size:.2f} GB "
          f"(generated in {time.perf_counter() - started:.1f} s); crops {grid[0]}x{grid[1]}, batch {args.batch}")
    for mode in args.modes.split(","):
        child = [sys.executable, __file__, "--child", mode, *sys.argv[1:]]
        result = json.loads(subprocess.run(child, check=True, capture_output=True, text=True).stdout)
        print(f"{mode:>9}: {result['samples_per_s']:8.0f} samples/s over {result['samples']} samples "
              f"({result['epoch_s']:.1f} s), load/statistics {result['load_s']:.1f} s, "
              f"peak RSS {result['peak_rss_mb']:.0f} MB" +
              (f"; training {result['train_samples_per_s']:.1f} samples/s" if "train_samples_per_s" in result else ""))
    print(f"order: {args.order}; streaming cache: {args.cache_blocks} blocks of {CHUNK} samples "
          f"({args.cache_blocks * CHUNK * args.channels * args.height * args.width * 4 / 2**20:.0f} MB at most)")
    print("10 GB case: python benchmarks/stream.py --gb 10 --out /scratch/fields.zarr --train-steps 10")


if __name__ == "__main__":
    main()
