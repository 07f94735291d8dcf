"""Training-step throughput and peak memory of `standard_attn_slim` at 64x128.

One step of the training loop, timed by fieldpaint.steptimes.train_step_times: the batch
(make_batch: timesteps, noise, masks for conditional models) and fieldpaint.train.train_step
(forward and masked diffusion loss under the configured autocast, backward, gradient clipping,
AdamW step, LR-scheduler step, EMA update), on synthetic fields with a never-valid corner. Each
(model, precision, batch) case runs in a fresh Python process (benchmarks/harness.py), so the
memory figure of one case is not inflated by the cases before it.

Precisions (each pinned, whatever `train.precision: auto` would choose on this machine):
  fp32       NCHW, no autocast (`train.precision: fp32`; what auto gives without native bf16).
  bf16+cl    torch.autocast(bfloat16) with the model and the input in channels_last
             (`train.precision: bf16`, `train.channels_last: true`; what auto gives with AVX512-BF16,
             AMX or a bf16 GPU).

Memory:
  harness.PeakMemory, started once the model, optimizer and EMA are built: on cuda
  torch.cuda.max_memory_allocated() over the warm-up and timed steps and its increase over the
  allocation before the first step; on cpu the rise of the peak RSS (VmHWM) over the RSS before
  the first step, which includes allocator caching and the AdamW state created at step 1.

When diffusers is installed the same figures are measured for a diffusers UNet2DModel with the
slim model's widths (block_out_channels=(32, 64, 128, 128), layers_per_block=2, 4 heads of 32,
dropout 0.1, attention only in the mid block), and fieldpaint/diffusers ratios are printed, per
precision and each model at its fastest precision ("its best setting"). diffusers is optional
(`pip install diffusers`), never a fieldpaint dependency. Both models go through the same
fieldpaint training step (fused AdamW, multi-tensor EMA), so the ratio is that of the networks.
The two are not the same network: diffusers' last level does not downsample (its bottleneck is
8x16, fieldpaint's 4x8), its up path has layers_per_block + 1 ResBlocks per level, and its time
embedding is 128 wide (fieldpaint's 256). On CPU fieldpaint's dropout draws its mask from 15-bit
integers (fieldpaint.models.layers.Dropout), diffusers' from torch's serial Bernoulli draw: that
is part of the networks' difference (at batch 16 on 2 threads, 1.88x with torch's dropout,
2.22x with fieldpaint's).

    python benchmarks/train_throughput.py                 # batch 16 and 64, 1 warm-up + 3 timed steps
    python benchmarks/train_throughput.py --quick         # batch 4, 1 warm-up + 2 timed steps (smoke test)
    python benchmarks/train_throughput.py --threads 1         # steadier when other jobs share the CPU
    python benchmarks/train_throughput.py --batch-sizes 32 --steps 10 --device cuda

On a shared 2-core machine, torch's 2 OpenMP threads stall whenever another process holds a core
(steps then vary 2-5x); `--threads 1` is slower on an idle machine but far steadier on a busy one.
The load average before and after is printed so that the figures can be judged.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

PRESET = "standard_attn_slim"
HEIGHT, WIDTH = 64, 128
PRECISIONS = {"fp32": ["train.precision=fp32", "train.channels_last=false"],
              "bf16+cl": ["train.precision=bf16", "train.channels_last=true"]}


def diffusers_model(config):
    """A diffusers UNet2DModel with the slim model's widths, wrapped to fieldpaint's (x, t, cond) call."""
    import torch
    from diffusers import UNet2DModel

    m = config.model
    levels = len(m.channels)
    unet = UNet2DModel(
        sample_size=(config.data.height, config.data.width), in_channels=len(config.data.variables),
        out_channels=len(config.data.variables), block_out_channels=tuple(m.channels),
        layers_per_block=m.num_res_blocks, down_block_types=("DownBlock2D",) * levels,
        up_block_types=("UpBlock2D",) * levels,
        add_attention=True,  # the mid block's attention: the only one, like the slim model's bottleneck
        attention_head_dim=m.channels[-1] // m.attention_heads, norm_num_groups=m.norm_groups, dropout=m.dropout)

    class Wrapped(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x, t, cond=None):
            return self.net(x, t).sample

    return Wrapped(unet)


def run_case(spec: dict) -> dict:
    import torch

    from fieldpaint.config import load_config
    from fieldpaint.models.registry import count_parameters
    from fieldpaint.steptimes import train_step_times

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    config = load_config(PRESET, [f"data.height={HEIGHT}", f"data.width={WIDTH}", f"train.batch_size={spec['batch']}",
                                  *PRECISIONS[spec["precision"]]])
    torch.manual_seed(0)
    model = diffusers_model(config) if spec["model"] == "diffusers" else None
    meter = harness.PeakMemory(spec["device"])
    times = train_step_times(config, torch.device(spec["device"]), spec["steps"], warmup=spec["warmup"],
                             model=model, before_first_step=meter.start)
    if model is None:
        from fieldpaint.models.registry import build_model

        model = build_model(config)
    median = statistics.median(times)
    return {**spec, "params": count_parameters(model)[0], "step_s": median, "min_s": min(times), "max_s": max(times),
            "samples_per_s": spec["batch"] / median, "times_s": [round(x, 4) for x in times],
            "peak_bytes": meter.peak(), "increase_bytes": meter.rise(), "peak_source": meter.source}


def print_results(results: list[dict], cuda: bool) -> None:
    mem = "peak alloc MiB (+ over start)" if cuda else "peak RSS rise MiB"
    print(f"\n{'model':<11} {'params':>9} {'precision':<8} {'batch':>5} {'step s (min-max)':>22} "
          f"{'samples/s':>10} {mem:>{max(18, len(mem))}}")
    for r in results:
        head = f"{r['model']:<11} {r.get('params', 0) / 1e6:>8.2f}M {r['precision']:<8} {r['batch']:>5} "
        if "error" in r:
            print(head + f"  FAILED: {r['error']}")
            continue
        spread = f"{r['step_s']:.3f} ({r['min_s']:.3f}-{r['max_s']:.3f})"
        m = (f"{harness.mib(r['peak_bytes'])} (+{harness.mib(r['increase_bytes'])})" if cuda else
             harness.mib(r["increase_bytes"]) + (" [ru_maxrss]" if r["peak_source"] == "ru_maxrss" else ""))
        print(head + f"{spread:>22} {r['samples_per_s']:>10.2f} {m:>{max(18, len(mem))}}")
    ok = {(r["model"], r["precision"], r["batch"]): r for r in results if "error" not in r}
    speedups = [(k, ok[k[0], "bf16+cl", k[2]]["samples_per_s"] / ok[k]["samples_per_s"])
                for k in ok if k[1] == "fp32" and (k[0], "bf16+cl", k[2]) in ok]
    if speedups:
        print("\nbf16+cl / fp32 samples/s: " + ", ".join(f"{m} batch {b}: {s:.2f}x" for (m, _, b), s in speedups))
    pairs = [k for k in ok if k[0] == "fieldpaint" and ("diffusers", k[1], k[2]) in ok]
    if pairs:
        print("\nfieldpaint / diffusers ratios (samples/s > 1: fieldpaint faster; memory < 1: fieldpaint smaller):")
        a0, b0 = ok[pairs[0]], ok["diffusers", pairs[0][1], pairs[0][2]]
        print(f"  parameters: {a0['params']:,} / {b0['params']:,} = {a0['params'] / b0['params']:.2f}")
        key = "peak_bytes" if cuda else "increase_bytes"
        for k in pairs:
            a, b = ok[k], ok["diffusers", k[1], k[2]]
            mem_ratio = f"{a[key] / b[key]:.2f}" if b[key] else "n/a"
            print(f"  {k[1]:<8} batch {k[2]:>3}: samples/s {a['samples_per_s'] / b['samples_per_s']:.2f}, memory {mem_ratio}")
    for batch in sorted({k[2] for k in ok}):  # each model at its own fastest precision
        best = {m: max((r for k, r in ok.items() if k[0] == m and k[2] == batch), key=lambda r: r["samples_per_s"],
                       default=None) for m in ("fieldpaint", "diffusers")}
        if None not in best.values():
            a, b = best["fieldpaint"], best["diffusers"]
            print(f"  best vs best, batch {batch:>3}: fieldpaint {a['precision']} {a['samples_per_s']:.2f} / diffusers "
                  f"{b['precision']} {b['samples_per_s']:.2f} samples/s = {a['samples_per_s'] / b['samples_per_s']:.2f}x")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if harness.worker_main(argv, run_case):
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64], metavar="B")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per case; the median is reported")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="batch 4, 1 warm-up + 2 timed steps (a smoke test)")
    parser.add_argument("--no-diffusers", action="store_true", help="skip the diffusers UNet2DModel comparison")
    parser.add_argument("--timeout", type=float, default=600, help="seconds allowed per case (default 600)")
    parser.add_argument("--json", metavar="PATH", help="also write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_sizes, args.steps, args.warmup = [4], 2, 1
    if args.steps < 1 or args.warmup < 0 or any(b < 1 for b in args.batch_sizes) or args.threads < 0:
        parser.error("--steps and --batch-sizes must be at least 1, --warmup and --threads at least 0")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)  # so that the machine lines show it; workers set it too
    try:
        device = harness.resolve_device(args.device)
    except ValueError as err:
        parser.error(str(err))
    models = ["fieldpaint"]
    if not args.no_diffusers:
        try:
            import diffusers  # noqa: F401
            models.append("diffusers")
        except ImportError:
            print("diffusers: not installed (fieldpaint only)")
    print(f"train_throughput: {PRESET} at {HEIGHT}x{WIDTH}; step = make_batch + fieldpaint.train.train_step; "
          f"{args.warmup} warm-up + {args.steps} timed steps per case (median shown); one process per case")
    for line in harness.machine_lines(device) + [harness.busy_note(args.threads)]:
        if line:
            print("  " + line)
    started = time.perf_counter()
    specs = [{"model": m, "precision": p, "batch": b, "device": device, "steps": args.steps, "warmup": args.warmup,
              "threads": args.threads} for b in args.batch_sizes for p in PRECISIONS for m in models]

    def report(r: dict) -> None:
        note = r["error"] if "error" in r else f"{r['samples_per_s']:.2f} samples/s"
        print(f"  done: {r['model']} {r['precision']} batch {r['batch']}: {note}", flush=True)

    results = harness.run_cases(__file__, specs, args.timeout, report)
    print_results(results, device.startswith("cuda"))
    print(f"\nload average after: {harness.load_average()}; wall time {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": harness.machine_lines(device), "results": results}, indent=1))
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
