"""Training-step throughput and peak memory of `standard_attn_slim` at 64x128.

One training step, as in fieldpaint.train: masked diffusion loss (forward), backward, gradient
clipping (train.grad_clip), AdamW step (fieldpaint.optim.build_optimizer). Data loading, EMA and
the LR scheduler are not included. Each (model, precision, batch) case runs in a fresh Python
process, so the memory figure of one case is not inflated by the cases before it.

Precisions:
  fp32       NCHW, no autocast (the default of `train.precision`).
  bf16+cl    torch.autocast(bfloat16) with the model and the input in channels_last
             (`train.precision: bf16`, `train.channels_last: true`).

Memory:
  cuda       torch.cuda.max_memory_allocated() over the warm-up and timed steps (weights, grads,
             AdamW state, activations), and its increase over the allocation before the first step.
  cpu        the process's peak resident set size (VmHWM, reset through /proc/self/clear_refs just
             before the first step; getrusage ru_maxrss when that reset is not possible) minus the
             RSS before the first step. This is an RSS figure: it includes allocator caching and
             the AdamW state created at step 1, and it is not an exact tensor count.

When diffusers is installed the same figures are measured for a diffusers UNet2DModel with the
slim model's widths (block_out_channels=(32, 64, 128, 128), layers_per_block=2, 4 heads of 32,
dropout 0.1, attention only in the mid block), and fieldpaint/diffusers ratios are printed.
The two are not the same network: diffusers' last level does not downsample (its bottleneck is
8x16, fieldpaint's 4x8), its up path has layers_per_block + 1 ResBlocks per level, and its time
embedding is 128 wide (fieldpaint's 256).

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
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PRESET = "standard_attn_slim"
HEIGHT, WIDTH = 64, 128
PRECISIONS = ("fp32", "bf16+cl")
MARKER = "@@RESULT "


# ----------------------------------------------------------------------------------------------
# the machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_lines(device: str) -> list[str]:
    import torch

    lines = [f"torch {torch.__version__}, python {platform.python_version()}, {platform.system()} {platform.machine()}"]
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    lines.append(f"CPU: {cpu_model()}; {os.cpu_count()} logical CPUs ({affinity} usable); "
                 f"torch threads {torch.get_num_threads()} intra-op / {torch.get_num_interop_threads()} inter-op")
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        lines.append(f"device: {device} = {props.name}, {props.total_memory / 2**30:.1f} GiB, "
                     f"CUDA {torch.version.cuda}")
    else:
        lines.append("device: cpu")
    try:
        import diffusers
        lines.append(f"diffusers {diffusers.__version__}")
    except ImportError:
        lines.append("diffusers: not installed (fieldpaint only)")
    return lines


def load_average() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1 / 5 / 15 min)"
    except OSError:
        return "n/a"


def _busy_hint(threads: int) -> str:
    """A warning when other processes already keep the CPUs busy (the figures then mean less)."""
    try:
        load, cpus = os.getloadavg()[0], len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return ""
    if load < 0.5 * cpus:
        return ""
    hint = "" if threads == 1 else "; --threads 1 gives steadier figures on a busy machine"
    return f"note: load average {load:.1f} on {cpus} CPUs before the run: other jobs share the CPUs{hint}"


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not (name == "cpu" or name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit())):
        raise ValueError(f"--device {name!r}: choose auto, cpu, cuda or cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA device is available")
    return name


# ----------------------------------------------------------------------------------------------
# models


def fieldpaint_model(config):
    from fieldpaint.models.registry import build_model

    return build_model(config)


def diffusers_model(config):
    """A diffusers UNet2DModel with the slim model's widths, wrapped to fieldpaint's (x, t, cond) call."""
    import torch
    from diffusers import UNet2DModel

    m = config.model
    levels = len(m.channels)
    unet = UNet2DModel(
        sample_size=(config.data.height, config.data.width),
        in_channels=len(config.data.variables),
        out_channels=len(config.data.variables),
        block_out_channels=tuple(m.channels),
        layers_per_block=m.num_res_blocks,
        down_block_types=("DownBlock2D",) * levels,
        up_block_types=("UpBlock2D",) * levels,
        add_attention=True,  # the mid block's attention: the only one, like the slim model's bottleneck
        attention_head_dim=m.channels[-1] // m.attention_heads,
        norm_num_groups=m.norm_groups,
        dropout=m.dropout,
    )

    class Wrapped(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x, t, cond=None):
            return self.net(x, t).sample

    return Wrapped(unet)


MODELS = {"fieldpaint": fieldpaint_model, "diffusers": diffusers_model}


# ----------------------------------------------------------------------------------------------
# one case, in its own process


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> bool:
    """Reset VmHWM (Linux >= 4.0); False when this is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes(reset_ok: bool) -> int:
    if reset_ok:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def run_case(spec: dict) -> dict:
    import torch

    from fieldpaint.config import load_config
    from fieldpaint.diffusion.loss import diffusion_loss
    from fieldpaint.diffusion.schedule import make_schedule
    from fieldpaint.models.registry import count_parameters
    from fieldpaint.optim import build_optimizer

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    bf16 = spec["precision"] == "bf16+cl"
    batch = spec["batch"]
    config = load_config(PRESET, [f"data.height={HEIGHT}", f"data.width={WIDTH}"])
    torch.manual_seed(0)

    model = MODELS[spec["model"]](config).to(device)
    params = count_parameters(model)[0]
    if bf16:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = build_optimizer(model, config.train)
    schedule = make_schedule(config.diffusion.schedule, config.diffusion.timesteps).to(device)
    C = len(config.data.variables)
    x0 = torch.randn(batch, C, HEIGHT, WIDTH, device=device)
    valid = torch.ones(batch, 1, HEIGHT, WIDTH, device=device)
    valid[:, :, : HEIGHT // 4, : WIDTH // 4] = 0  # a never-valid corner, as land in an ocean field
    if bf16:
        x0 = x0.contiguous(memory_format=torch.channels_last)
    generator = torch.Generator(device=device).manual_seed(1)

    def step() -> float:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = diffusion_loss(model, x0, valid, schedule, config.diffusion.prediction, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
        optimizer.step()
        return float(loss.detach())  # waits for the step to finish

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        reset_ok = True
    else:
        before = _rss_bytes()
        reset_ok = _reset_peak_rss()
        if not reset_ok:
            before = max(before, _peak_rss_bytes(False))  # ru_maxrss never falls: count only what rises

    for _ in range(spec["warmup"]):
        loss = step()
    times = []
    for _ in range(spec["steps"]):
        sync()
        start = time.perf_counter()
        loss = step()
        sync()
        times.append(time.perf_counter() - start)

    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = _peak_rss_bytes(reset_ok)
    median = statistics.median(times)
    return {**spec, "params": params, "step_s": median, "min_s": min(times), "max_s": max(times),
            "samples_per_s": batch / median, "times_s": [round(x, 4) for x in times], "peak_bytes": peak, "before_bytes": before,
            "increase_bytes": max(0, peak - before), "peak_source": "cuda" if device.type == "cuda"
            else ("VmHWM" if reset_ok else "ru_maxrss"), "loss": loss}


def spawn_case(spec: dict, timeout: float | None, script: Path | None = None) -> dict:
    """Run one case in a fresh process (`script --worker SPEC`), so peak memory does not carry over."""
    cmd = [sys.executable, str(script or Path(__file__).resolve()), "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timed out after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER):])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {**spec, "error": f"exit {proc.returncode}: {tail}"}


# ----------------------------------------------------------------------------------------------
# the table


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def print_results(results: list[dict], device: str) -> None:
    cuda = device.startswith("cuda")
    mem = "peak alloc MiB (+ over start)" if cuda else "peak RSS rise MiB"
    print(f"\n{'model':<11} {'params':>9} {'precision':<8} {'batch':>5} {'step s (min-max)':>22} "
          f"{'samples/s':>10} {mem:>{max(18, len(mem))}}")
    for r in results:
        head = f"{r['model']:<11} {r.get('params', 0) / 1e6:>8.2f}M {r['precision']:<8} {r['batch']:>5} "
        if "error" in r:
            print(head + f"  FAILED: {r['error']}")
            continue
        spread = f"{r['step_s']:.3f} ({r['min_s']:.3f}-{r['max_s']:.3f})"
        if cuda:
            m = f"{mib(r['peak_bytes'])} (+{mib(r['increase_bytes'])})"
        else:
            m = mib(r["increase_bytes"]) + (" [ru_maxrss]" if r["peak_source"] == "ru_maxrss" else "")
        print(head + f"{spread:>22} {r['samples_per_s']:>10.2f} {m:>{max(18, len(mem))}}")

    ok = {(r["model"], r["precision"], r["batch"]): r for r in results if "error" not in r}
    fp32 = [k for k in ok if k[1] == "fp32"]
    speedups = [(k, ok[k[0], "bf16+cl", k[2]]["samples_per_s"] / ok[k]["samples_per_s"])
                for k in fp32 if (k[0], "bf16+cl", k[2]) in ok]
    if speedups:
        print("\nbf16+cl / fp32 samples/s: " + ", ".join(f"{m} batch {b}: {s:.2f}x" for (m, _, b), s in speedups))
    pairs = [k for k in ok if k[0] == "fieldpaint" and ("diffusers", k[1], k[2]) in ok]
    if pairs:
        print("\nfieldpaint / diffusers ratios (samples/s > 1: fieldpaint faster; memory < 1: fieldpaint smaller):")
        some = ok[pairs[0]]
        other = ok["diffusers", pairs[0][1], pairs[0][2]]
        print(f"  parameters: {some['params']:,} / {other['params']:,} = {some['params'] / other['params']:.2f}")
        key = "peak_bytes" if cuda else "increase_bytes"
        for k in pairs:
            a, b = ok[k], ok["diffusers", k[1], k[2]]
            mem_ratio = f"{a[key] / b[key]:.2f}" if b[key] else "n/a"
            print(f"  {k[1]:<8} batch {k[2]:>3}: samples/s {a['samples_per_s'] / b['samples_per_s']:.2f}, "
                  f"memory {mem_ratio}")


def main(argv: list[str] | None = None) -> int:
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
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(MARKER + json.dumps(run_case(json.loads(args.worker))), flush=True)
        return 0
    if args.quick:
        args.batch_sizes, args.steps, args.warmup = [4], 2, 1
    if args.steps < 1 or args.warmup < 0 or any(b < 1 for b in args.batch_sizes):
        parser.error("--steps and --batch-sizes must be at least 1, --warmup at least 0")

    if args.threads < 0:
        parser.error("--threads must be at least 1 (0 = torch's choice)")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)  # so that the machine line shows it; workers set it too
    try:
        device = resolve_device(args.device)
    except ValueError as err:
        parser.error(str(err))
    models = ["fieldpaint"]
    if not args.no_diffusers:
        try:
            import diffusers  # noqa: F401
            models.append("diffusers")
        except ImportError:
            pass
    print(f"train_throughput: {PRESET} at {HEIGHT}x{WIDTH}; step = masked diffusion loss + backward + "
          f"grad clip + AdamW; {args.warmup} warm-up + {args.steps} timed steps per case (median shown); "
          f"one process per case")
    for line in machine_lines(device):
        print("  " + line)
    print(f"  load average before: {load_average()}")
    busy = _busy_hint(args.threads)
    if busy:
        print("  " + busy)

    started = time.perf_counter()
    results = []
    for batch in args.batch_sizes:
        for precision in PRECISIONS:
            for model in models:
                spec = {"model": model, "precision": precision, "batch": batch, "device": device,
                        "steps": args.steps, "warmup": args.warmup, "threads": args.threads}
                results.append(spawn_case(spec, args.timeout))
                r = results[-1]
                note = r["error"] if "error" in r else f"{r['samples_per_s']:.2f} samples/s"
                load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
                print(f"  done: {model} {precision} batch {batch}: {note} (load {load:.1f})", flush=True)
    print_results(results, device)
    print(f"\nload average after: {load_average()}; wall time {time.perf_counter() - started:.0f} s")
    if device == "cpu":
        print("Memory on cpu: rise of the process's peak RSS over its RSS before the first step "
              "(allocator caching and AdamW state included; not an exact tensor count).")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine_lines(device), "results": results}, indent=1))
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
