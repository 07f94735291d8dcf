"""Sampling in fp32 against bf16 autocast + channels_last: seconds per field and how far the means move.

One conditional model (a trained run given by --conditional, else `palette_slim` with random
weights at --height x --width) reconstructs the same --n fields x --samples members with
DPM-Solver++(2M), --steps steps, through DiffusionReconstructor, once per precision and --repeats
times alternately (fp32, bf16, fp32, bf16, ...), in this one process and on the same threads.
Printed: the median seconds per field of each precision, the fp32/bf16 ratio, and the RMS and
maximum difference between the two means (normalised units) beside the RMS of the fp32 mean's
error on hidden pixels when the fields are real (a run's test split). bf16 is only worth it where
the device computes it natively (`runtime.bf16_native`; the header says whether this one does).

    python benchmarks/sampling_precision.py --conditional demo/runs/conditional
    python benchmarks/sampling_precision.py --height 64 --width 128 --n 4 --samples 8
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402  (also puts the repository on sys.path)

import torch  # noqa: E402


def fields_and_model(args):
    """(x, valid, a TrainedRun-like (model, config)) from the run's test split, or random ones."""
    if args.conditional:
        from fieldpaint.evaluate import load_fields
        from fieldpaint.runs import load_run

        run = load_run(args.conditional)
        fields = load_fields([run], None, None, "test", args.n)[0]
        return fields.x, fields.valid, run.model, run.config
    from fieldpaint.config import from_dict, load_config, to_dict
    from fieldpaint.models.registry import build_model

    values = to_dict(load_config("palette_slim"))
    values["data"].update(variables=["u", "v"], height=args.height, width=args.width)
    config = from_dict(values)
    torch.manual_seed(0)
    x = torch.randn((args.n, 2, args.height, args.width))
    return x, torch.ones((args.n, 1, args.height, args.width)), build_model(config), config


def main() -> None:
    from fieldpaint.data.masks import make_masks
    from fieldpaint.diffusion.reconstructor import DiffusionReconstructor
    from fieldpaint.runtime import bf16_native, synchronize

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--conditional", default=None, help="a trained conditional run (its test fields)")
    p.add_argument("--height", type=int, default=32)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--n", type=int, default=12, help="fields")
    p.add_argument("--samples", type=int, default=10, help="members per field")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--coverage", type=float, default=0.95, help="hidden fraction (tracks masks)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(harness.resolve_device(args.device))
    for line in harness.machine_lines(str(device)):
        print(line)
    native, why = bf16_native(device)
    print(f"bf16 native: {native} ({why})")
    x, valid, model, config = fields_and_model(args)
    h, w = x.shape[-2:]
    mask = torch.from_numpy(make_masks("tracks", args.coverage, len(x), h, w, seed=0)).float()
    obs = x * mask
    methods = {name: DiffusionReconstructor(model, config, method="conditional-dpm", steps=args.steps,
                                            batch_size=32, precision=name, device=device)
               for name in ("fp32", "bf16")}
    seconds = {name: [] for name in methods}
    means = {}
    for _ in range(args.repeats):
        for name, method in methods.items():
            started = time.perf_counter()
            rec = method.reconstruct(obs, mask, valid, samples=args.samples, seed=0)
            synchronize(device)
            seconds[name].append((time.perf_counter() - started) / len(x))
            means[name] = rec.mean.cpu()
    print(f"{len(x)} fields of {h}x{w} x {args.samples} members, DPM-Solver++ {args.steps} steps, "
          f"{args.threads} threads, load average {harness.load_average()}")
    for name in methods:
        print(f"  {name:<5} median {statistics.median(seconds[name]):.3f} s/field  "
              f"(runs: {', '.join(f'{s:.3f}' for s in seconds[name])})")
    ratio = statistics.median(seconds["fp32"]) / statistics.median(seconds["bf16"])
    diff = means["bf16"] - means["fp32"]
    print(f"  fp32 / bf16 time: {ratio:.2f}x")
    print(f"  mean difference bf16 - fp32: rms {diff.pow(2).mean().sqrt():.2e}, max {diff.abs().max():.2e}")
    if args.conditional:
        hidden = ((mask < 0.5) & (valid > 0.5)).expand_as(x)
        for name in methods:
            err = (means[name] - x)[hidden]
            print(f"  {name:<5} MSE on hidden pixels {err.pow(2).mean():.5f}")


if __name__ == "__main__":
    main()
