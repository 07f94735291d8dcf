"""Cost of the attention variants (Option D) and transformer backbones (Option E) at 64x128.

Two tables:
  models     for standard_attn_slim and every preset of Options D and E at 64x128: parameters,
             forward + backward time per sample (MSE against a random target, no optimizer) and
             peak memory per sample.
  attention  one attention block alone (GroupNorm, projections, attention, residual), forward +
             backward, for each kind at 16x32, 32x64 and 64x128 with a 64-wide input and 4 heads.

Memory is the process's peak resident set size (harness.PeakMemory: VmHWM) over
the warm-up and timed steps minus the RSS before them, divided by the batch: an RSS figure that
includes the allocator's caching. Each case runs in a fresh process so that one case's peak does
not hide another's. CPU only; run single-threaded by default (--threads).

Quadratic cases: 'mhsa' and 'neighborhood' (a masked SDPA over all positions) may hold an (N x N)
score matrix per head; a case whose batch * heads * N^2 * 4 bytes * 3 (scores, probabilities and
their gradient) exceeds --max-quadratic-gib is skipped and the table says so.

    python benchmarks/variants.py              # batch 8 for models, 4 for attention; 1 warm-up + 3 timed
    python benchmarks/variants.py --quick      # batch 2 / 1, 1 warm-up + 2 timed steps (smoke test)
    python benchmarks/variants.py --threads 0  # torch's thread count: faster on an idle machine only
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import harness  # noqa: E402
from harness import load_average, machine_lines, mib  # noqa: E402

PRESETS = ["standard_attn_slim", "slim_linear_attn", "slim_neighborhood_attn", "slim_channel_attn",
           "uvit_small", "dit_small"]
KINDS = ["mhsa", "linear", "neighborhood", "channel"]
RESOLUTIONS = [(16, 32), (32, 64), (64, 128)]
WIDTH, HEADS, WINDOW = 64, 4, 7


# ----------------------------------------------------------------------------------------------
# one case, in its own process


def build_case(spec: dict):
    """(module, call) for a case: call() runs one forward and returns a scalar loss."""
    import torch
    import torch.nn.functional as F

    from fieldpaint.config import load_config
    from fieldpaint.models.attention import make_attention
    from fieldpaint.models.registry import build_model

    b, (h, w) = spec["batch"], spec["size"]
    if spec["table"] == "models":
        config = load_config(spec["name"], [f"data.height={h}", f"data.width={w}"])
        model = build_model(config)
        c = len(config.data.variables)
        x, t = torch.randn(b, c, h, w), torch.randint(0, 1000, (b,))
        target = torch.randn_like(x)
        return model, lambda: F.mse_loss(model(x, t), target)
    model = make_attention(spec["name"], WIDTH, HEADS, 32, WINDOW)
    x = torch.randn(b, WIDTH, h, w)
    return model, lambda: model(x).square().mean()


def run_case(spec: dict) -> dict:
    import torch

    torch.manual_seed(0)
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    model, loss_fn = build_case(spec)
    params = sum(p.numel() for p in model.parameters())

    def step() -> float:
        start = time.perf_counter()
        loss_fn().backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    meter = harness.PeakMemory("cpu")
    meter.start()
    for _ in range(spec["warmup"]):
        step()
    times = [step() for _ in range(spec["steps"])]
    peak = meter.rise()
    b = spec["batch"]
    return {**spec, "params": params, "s_per_sample": statistics.median(times) / b, "peak_per_sample": peak / b}


def quadratic_gib(kind: str, batch: int, size: tuple[int, int]) -> float:
    """Worst-case memory of an (N x N) score matrix per head, with its softmax and gradient."""
    if kind not in ("mhsa", "neighborhood"):
        return 0.0
    n = size[0] * size[1]
    return batch * HEADS * n * n * 4 * 3 / 2**30


# ----------------------------------------------------------------------------------------------
# tables


def result_row(r: dict) -> str:
    if "error" in r or "skipped" in r:
        return r.get("error") or r["skipped"]
    return (f"{r['params'] / 1e6:8.3f} M  {1e3 * r['s_per_sample']:10.1f} ms  "
            f"{mib(r['peak_per_sample']):>8} MiB")


def print_tables(results: list[dict]) -> None:
    print(f"\n{'model @ 64x128':<24} {'params':>10}  {'fwd+bwd/sample':>13}  {'peak/sample':>12}")
    for r in (r for r in results if r["table"] == "models"):
        print(f"{r['name']:<24} {result_row(r)}   (batch {r['batch']})")
    print(f"\n{'attention block':<14} {'size':>7} {'params':>10}  {'fwd+bwd/sample':>13}  {'peak/sample':>12}"
          f"   ({WIDTH} channels, {HEADS} heads, window {WINDOW})")
    for r in (r for r in results if r["table"] == "attention"):
        size = "x".join(map(str, r["size"]))
        print(f"{r['name']:<14} {size:>7} {result_row(r)}   (batch {r['batch']})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch 2 / 1, 1 warm-up + 2 timed steps")
    parser.add_argument("--model-batch", type=int, default=8)
    parser.add_argument("--attention-batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per case; the median is reported")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (0 = torch's choice); 1 is far steadier on a shared machine")
    parser.add_argument("--max-quadratic-gib", type=float, default=4.0,
                        help="skip mhsa/neighborhood cases whose N x N estimate exceeds this (GiB)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds allowed per case")
    if harness.worker_main(sys.argv[1:] if argv is None else argv, run_case):
        return 0
    args = parser.parse_args(argv)
    if args.quick:
        args.model_batch, args.attention_batch, args.steps, args.warmup = 2, 1, 2, 1

    print("\n".join(machine_lines("cpu")))
    print(f"load average before: {load_average()}; torch threads per case: {args.threads or 'default'}")
    common = {"steps": args.steps, "warmup": args.warmup, "threads": args.threads}
    specs = [{**common, "table": "models", "name": n, "size": (64, 128), "batch": args.model_batch} for n in PRESETS]
    specs += [{**common, "table": "attention", "name": k, "size": s, "batch": args.attention_batch}
              for k in KINDS for s in RESOLUTIONS]
    results = []
    for spec in specs:
        gib = quadratic_gib(spec["name"], spec["batch"], spec["size"]) if spec["table"] == "attention" else 0.0
        if gib > args.max_quadratic_gib:
            results.append({**spec, "skipped": f"skipped: N x N estimate {gib:.1f} GiB > --max-quadratic-gib"})
        else:
            results.append(harness.spawn_case(__file__, spec, args.timeout))
        print(f"  done: {spec['table']} {spec['name']} {spec['size']}", file=sys.stderr, flush=True)
    print_tables(results)
    print(f"\nload average after: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
