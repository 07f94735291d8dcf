"""Network evaluations (NFE) and wall time per reconstructed field, for each sampler, at 64x128.

Cases (random weights: the time of a forward pass does not depend on the values):

    repaint      standard_attn_slim (unconditional), 250 steps, jumps 10 x 10   2,410 NFE
    ddnm         standard_attn_slim (unconditional), 100 steps                   100 NFE
    ddim-50      palette_slim (concat, v), 50 steps                               50 NFE
    ddim-25      palette_slim (concat, v), 25 steps                               25 NFE

Default (reduced) run, every figure labelled as measured or projected:
  measured   seconds per network evaluation (mean of --repeats timed calls after one warm-up, at
             --batch members per call), and the sampler's own overhead per field: the whole sampler
             run with a free denoiser (x̂0 = 0), i.e. noise draws, merges and steps only;
  projected  seconds per field = NFE x (seconds per evaluation / batch) + overhead per field.
`--full` also runs each whole sampler through DiffusionReconstructor on --batch members of one
field and reports the measured wall time per field (RePaint takes minutes on a CPU).

    python benchmarks/sampling.py                  # reduced: 3 timed evaluations per model
    python benchmarks/sampling.py --full           # whole samplers as well
    python benchmarks/sampling.py --full --cases ddnm,ddim-50,ddim-25 --threads 1
    python benchmarks/sampling.py --batch 8 --threads 1 --device cuda
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402  (also puts the repository on sys.path)

import torch  # noqa: E402

from fieldpaint.config import Config, load_config  # noqa: E402
from fieldpaint.diffusion.reconstructor import DiffusionReconstructor  # noqa: E402
from fieldpaint.diffusion.samplers import ddim, ddnm, jump_schedule_nfe, repaint  # noqa: E402
from fieldpaint.diffusion.schedule import make_schedule  # noqa: E402
from fieldpaint.diffusion.conditioning import conditioning_input  # noqa: E402
from fieldpaint.models.registry import build_model  # noqa: E402

HEIGHT, WIDTH = 64, 128
CASES = [  # name, preset, method, options
    ("repaint", "standard_attn_slim", "repaint", {"steps": 250, "jump_length": 10, "jump_n_sample": 10}),
    ("ddnm", "standard_attn_slim", "ddnm", {"steps": 100}),
    ("ddim-50", "palette_slim", "conditional", {"steps": 50}),
    ("ddim-25", "palette_slim", "conditional", {"steps": 25}),
]


def nfe_of(method: str, options: dict) -> int:
    if method == "repaint":
        return jump_schedule_nfe(options["steps"], options["jump_length"], options["jump_n_sample"])
    return options["steps"]


def inputs(config: Config, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """obs (batch, C, H, W) and a mask hiding ~95 % of the pixels, (batch, 1, H, W)."""
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(batch, len(config.data.variables), HEIGHT, WIDTH, generator=g)
    mask = (torch.rand(batch, 1, HEIGHT, WIDTH, generator=g) < 0.05).float()
    return obs.to(device), mask.to(device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def seconds_per_evaluation(model: torch.nn.Module, config: Config, batch: int, repeats: int,
                           device: torch.device) -> float:
    """Measured: mean wall time of one forward pass at `batch` members (after one warm-up call)."""
    obs, mask = inputs(config, batch, device)
    cond = conditioning_input(obs, mask) if config.model.conditioning != "none" else None
    t = torch.full((batch,), config.diffusion.timesteps // 2, device=device)
    model(obs, t, cond)
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        model(obs, t, cond)
    synchronize(device)
    return (time.perf_counter() - started) / repeats


def overhead_per_field(method: str, options: dict, config: Config, batch: int, device: torch.device) -> float:
    """Measured: the whole sampler with a free denoiser (x̂0 = 0), seconds per field."""
    obs, mask = inputs(config, batch, device)
    schedule = make_schedule(config.diffusion.schedule, config.diffusion.timesteps)
    generators = [torch.Generator().manual_seed(k) for k in range(batch)]

    def free(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)

    started = time.perf_counter()
    if method == "repaint":
        repaint(free, obs, mask, schedule, generator=generators, **options)
    elif method == "ddnm":
        ddnm(free, obs, mask, schedule, generator=generators, **options)
    else:
        ddim(free, obs.shape, schedule, generator=generators, obs=obs, mask=mask, **options)
    synchronize(device)
    return (time.perf_counter() - started) / batch


def full_run(model: torch.nn.Module, config: Config, method: str, options: dict, batch: int,
             device: torch.device) -> tuple[float, int]:
    """Measured: DiffusionReconstructor on `batch` members of one field; (seconds per field, NFE)."""
    obs, mask = inputs(config, 1, device)
    rec = DiffusionReconstructor(model, config, method=method, batch_size=batch, device=device, **options)
    out = rec.reconstruct(obs.cpu(), mask.cpu(), torch.ones_like(mask.cpu()), samples=batch, seed=0)
    return out.seconds / batch, out.nfe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also run whole samplers (minutes for RePaint)")
    parser.add_argument("--repeats", type=int, default=3, help="timed network evaluations per model")
    parser.add_argument("--batch", type=int, default=1, help="members per network call")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cases", default=",".join(c[0] for c in CASES),
                        help="comma-separated subset of " + ", ".join(c[0] for c in CASES))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print("\n".join(harness.machine_lines(str(device))))
    print(f"grid {HEIGHT}x{WIDTH}, fp32, random weights, {args.batch} member(s) per network call, "
          f"{args.repeats} timed evaluations after 1 warm-up")
    header = (f"{'case':9s} {'preset':19s} {'NFE':>5s} {'s/eval':>8s} {'overhead':>9s} {'projected':>10s}"
              + (f" {'full run':>9s}" if args.full else ""))
    print(header + "\n" + " " * 36 + "measured  measured   s/field" + ("   s/field" if args.full else ""))
    models: dict[str, tuple[torch.nn.Module, Config, float]] = {}
    chosen = args.cases.split(",")
    unknown = sorted(set(chosen) - {c[0] for c in CASES})
    if unknown:
        parser.error(f"unknown case {unknown[0]!r}")
    for name, preset, method, options in (c for c in CASES if c[0] in chosen):
        if preset not in models:
            config = load_config(preset, [f"data.height={HEIGHT}", f"data.width={WIDTH}"])
            model = build_model(config).to(device).eval()
            models[preset] = (model, config, seconds_per_evaluation(model, config, args.batch, args.repeats, device))
        model, config, per_eval = models[preset]
        nfe = nfe_of(method, options)
        overhead = overhead_per_field(method, options, config, args.batch, device)
        projected = nfe * per_eval / args.batch + overhead
        line = f"{name:9s} {preset:19s} {nfe:5d} {per_eval:8.3f} {overhead:9.3f} {projected:10.1f}"
        if args.full:
            seconds, measured_nfe = full_run(model, config, method, options, args.batch, device)
            assert measured_nfe == nfe
            line += f" {seconds:9.1f}"
        print(line, flush=True)
    print(f"load average after: {harness.load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
