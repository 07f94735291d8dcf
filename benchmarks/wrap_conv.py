"""What wrapping the convolutions costs: a training step of the same model with `model.wrap: x` and
`xy` against `model.wrap: none`, alternated in one process so that drift hits all three.

The step is fieldpaint.steptimes.train_step_times (make_batch + train_step: forward and loss under the
configured autocast, backward, clipping, AdamW, EMA) on synthetic fields. The default case is the CPU
demo's conditional model (palette_slim, [32, 64, 128], 32x64, batch 32, bf16 + channels_last where the
CPU does bf16 natively, else fp32); `--full` adds the notes' slim model at 64x128, batch 16.

    python benchmarks/wrap_conv.py            # ~1.5 min on 2 cores
    python benchmarks/wrap_conv.py --full     # ~6 min on 2 cores
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.harness import load_average, machine_lines  # noqa: E402
from fieldpaint.config import load_config  # noqa: E402
from fieldpaint.steptimes import train_step_times  # noqa: E402

CASES = {  # name: (preset, overrides)
    "demo": ("palette_slim", ["data.height=32", "data.width=64", "model.channels=[32,64,128]", "model.norm_groups=8",
                              "model.attention_levels=[bottleneck]", "model.dropout=0.0", "train.batch_size=32"]),
    "slim 64x128": ("palette_slim", ["data.height=64", "data.width=128", "train.batch_size=16"]),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also the slim model at 64x128")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per round (median)")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of none / x / xy")
    args = parser.parse_args(argv)
    print("\n".join(machine_lines()))
    print(f"load average before: {load_average()}")
    for name in list(CASES)[:2 if args.full else 1]:
        preset, overrides = CASES[name]
        medians: dict[str, list[float]] = {"none": [], "x": [], "xy": []}
        for _ in range(args.rounds):
            for wrap in medians:
                config = load_config(preset, [*overrides, f"model.wrap={wrap}"])
                times = train_step_times(config, torch.device("cpu"), args.steps, warmup=1)
                medians[wrap].append(statistics.median(times))
        step = {wrap: statistics.median(times) for wrap, times in medians.items()}
        print(f"{name}: step " + ", ".join(f"{s:.3f} s (wrap {w})" for w, s in step.items()) + "; "
              + ", ".join(f"{w} / none = {step[w] / step['none']:.3f}" for w in ("x", "xy")))
        print("  rounds: " + "; ".join(f"{w} {[round(t, 3) for t in times]}" for w, times in medians.items()))
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
