"""Whether `train.compile` (torch.compile of the model) pays: the training step of the same model
eager and compiled, each in a fresh process (benchmarks/harness.py), with the seconds the compiled
run's first steps spend compiling.

The step is fieldpaint.steptimes.train_step_times (make_batch + train_step: forward and loss under
the configured autocast, backward, clipping, AdamW, EMA) on synthetic fields, the net compiled as
fieldpaint.train compiles it. The default case is the CPU demo's conditional model (palette_slim,
[32, 64, 128] wrapped along x and y, 32x64, batch 32, `train.precision: auto`); `--full` the notes'
slim model at 64x128, batch 16.

    python benchmarks/compile_step.py             # ~4 min on 2 cores (most of it compiling)
    python benchmarks/compile_step.py --device cuda --full
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

from benchmarks.harness import load_average, machine_lines, resolve_device, run_cases, worker_main  # noqa: E402

CASES = {  # name: (preset, overrides)
    "demo": ("palette_slim", ["data.height=32", "data.width=64", "model.channels=[32,64,128]", "model.norm_groups=8",
                              "model.attention_levels=[bottleneck]", "model.dropout=0.0", "model.wrap=xy",
                              "train.batch_size=32"]),
    "slim 64x128": ("palette_slim", ["data.height=64", "data.width=128", "train.batch_size=16"]),
}


def run_case(spec: dict) -> dict:
    """One (case, compiled or not) in this process: seconds of the warm-up steps (compiling, when
    compiled) and the median of the timed ones."""
    import torch

    from fieldpaint.config import load_config
    from fieldpaint.steptimes import train_step_times

    preset, overrides = CASES[spec["case"]]
    config = load_config(preset, [*overrides, f"train.compile={spec['compile']}"])
    started = time.perf_counter()
    times = train_step_times(config, torch.device(spec["device"]), spec["steps"], warmup=spec["warmup"])
    return {**spec, "step_s": statistics.median(times), "warmup_s": time.perf_counter() - started - sum(times)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the slim model at 64x128 instead of the demo's")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per case (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (where compiling happens)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed per case")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    case = "slim 64x128" if args.full else "demo"
    print("\n".join(machine_lines(device)))
    print(f"load average before: {load_average()}")
    specs = [{"case": case, "compile": flag, "device": device, "steps": args.steps, "warmup": args.warmup}
             for flag in (False, True)]
    results = {r["compile"]: r for r in run_cases(__file__, specs, timeout=args.timeout)}
    for flag, r in results.items():
        name = "compiled" if flag else "eager"
        print(f"{case} {name}: " + (r["error"] if "error" in r else
                                    f"{r['step_s']:.3f} s a step (median of {args.steps}), "
                                    f"{r['warmup_s']:.1f} s for the {args.warmup} warm-up steps"))
    if all("error" not in r for r in results.values()):
        eager, compiled = results[False], results[True]
        print(f"compiled / eager step = {compiled['step_s'] / eager['step_s']:.3f}; compiling pays after "
              + (f"{(compiled['warmup_s'] - eager['warmup_s']) / (eager['step_s'] - compiled['step_s']):.0f} steps"
                 if compiled["step_s"] < eager["step_s"] else "never (the compiled step is not faster)"))
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    if worker_main(sys.argv, run_case):
        sys.exit(0)
    main()
