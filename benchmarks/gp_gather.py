"""The kernel fit's table lookup: `gather_table`'s row gather against indexing the flattened table
with per-row offsets (how it was written before), on the fit's shapes, alternated in one process.

The dataset kernel's fit reads every candidate parameter set's correlation table at the lag of each
pair of design points: tables (P, T) and lag indices (J, n, n). At the demo's 32x64 with 500 points
per field this lookup was a quarter of the fit's time under the profiler.

    python benchmarks/gp_gather.py                 # ~10 s on 2 cores
    python benchmarks/gp_gather.py --points 256 --rows 64
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.harness import load_average, machine_lines  # noqa: E402
from fieldpaint.baselines.gp import gather_table  # noqa: E402


def offset_indexing(table: torch.Tensor, idx: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """The peer: table.reshape(-1)[idx + which * T], what gather_table did before."""
    J = idx.shape[0]
    flat = idx.reshape(J, -1) + (which * table.shape[1])[:, None]
    return table.reshape(-1)[flat].reshape(idx.shape)


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", type=int, default=8, help="parameter sets P")
    parser.add_argument("--rows", type=int, default=12, help="data rows J")
    parser.add_argument("--points", type=int, default=500, help="design points n per row")
    parser.add_argument("--lags", type=int, default=32 * 64, help="table length T (lags of a 32x64 grid)")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    print("\n".join(machine_lines()))
    print(f"load average before: {load_average()}")
    g = torch.Generator().manual_seed(0)
    table = torch.randn(args.tables, args.lags, dtype=torch.float64, generator=g)
    idx = torch.randint(0, args.lags, (args.rows, args.points, args.points), generator=g)
    which = torch.randint(0, args.tables, (args.rows,), generator=g)
    assert torch.equal(gather_table(table, idx, which), offset_indexing(table, idx, which))
    ours, peer = [], []
    for _ in range(3):  # alternated, so drift hits both
        ours.append(median_seconds(lambda: gather_table(table, idx, which), args.repeats))
        peer.append(median_seconds(lambda: offset_indexing(table, idx, which), args.repeats))
    o, p = statistics.median(ours), statistics.median(peer)
    print(f"tables {args.tables} x {args.lags}, indices {args.rows} x {args.points}^2")
    print(f"gather_table (row gather): {o * 1e3:.2f} ms   offset indexing: {p * 1e3:.2f} ms   ratio {p / o:.2f}x")
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
