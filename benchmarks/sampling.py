"""Samplers: quality against kriging at their cost, on trained models; or timing alone, at 64x128.

QUALITY (`--unconditional RUN --conditional RUN [--data FILE]`): every sampler on the same cases
(the first --n test fields x random and tracks masks x coverages 0.9, 0.95, 0.99, --samples
members), scored with fieldpaint.evaluate's `run_group` against gp-dataset (kriging with a kernel
fitted on training fields). Per method: the geometric-mean MSE ratio to gp-dataset with its 95 %
paired bootstrap interval per group, network evaluations per member (forward passes), forward-
equivalents (MMPS: nfe·(1 + 2·cg), each CG iteration being one backward pass of ~2 forwards) and
seconds per field (all members). Then the two targets, each with the paired ratio and its interval:

  1. MMPS beats RePaint and DDNM in MSE at every coverage >= 0.9 on random and tracks masks, at <= 1/4
     of RePaint-250/10/10's 2,410 network evaluations (checked by NFE and by forward-equivalents);
  2. DPM-Solver++ at <= 20 NFE matches DDIM-50's MSE within DDIM-50's interval (ratio to gp-dataset).

    methods: repaint-250-10-10 (--repaint S,J,N for a cheaper respaced one), ddnm-100, mmps-50-cg5,
             mmps-50-cg10 (unconditional run); ddim-50, ddim-20, dpm-10, dpm-15, dpm-20 (conditional run)

    python benchmarks/sampling.py --unconditional demo/runs/unconditional --conditional demo/runs/conditional
    python benchmarks/sampling.py --unconditional U --conditional C --families random --repaint 100,10,10 --out bench
    python benchmarks/sampling.py --unconditional U --conditional C --quick      # tiny steps: a smoke test

--out DIR also writes cases.csv, summary.csv and report.md there (with the figure of MSE and CRPS
against NFE).

TIMING (no run given; random weights: the time of a forward pass does not depend on the values):

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

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from fieldpaint.config import Config, load_config  # noqa: E402
from fieldpaint.diffusion.reconstructor import DiffusionReconstructor  # noqa: E402
from fieldpaint.diffusion.samplers import ddim, ddnm, jump_schedule_nfe, repaint  # noqa: E402
from fieldpaint.diffusion.schedule import make_schedule  # noqa: E402
from fieldpaint.diffusion.conditioning import conditioning_input  # noqa: E402
from fieldpaint.models.registry import build_model  # noqa: E402
from fieldpaint.report import forward_equivalents  # noqa: E402
from fieldpaint.summary import paired_ratio, summarize  # noqa: E402

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



# ----------------------------------------------------------------------------------------------
# quality against cost on trained models

REFERENCE = "gp-dataset"
FAMILIES = ("random", "tracks")
COVERAGES = (0.9, 0.95, 0.99)
REPAINT_NFE = jump_schedule_nfe(250, 10, 10)  # 2,410: the budget target 1 divides by 4


def quality_cases(repaint_spec: tuple[int, int, int], quick: bool) -> list[tuple[str, str, str, dict]]:
    """(label, run kind, method, DiffusionReconstructor options); --quick: a few steps each (T >= 10)."""
    if quick:
        repaint_spec = (10, 2, 2)
    s, j, n = repaint_spec

    def steps(full: int, small: int) -> int:
        return small if quick else full

    cases = [(f"repaint-{s}-{j}-{n}", "unconditional", "repaint", {"steps": s, "jump_length": j, "jump_n_sample": n}),
             (f"ddnm-{steps(100, 6)}", "unconditional", "ddnm", {"steps": steps(100, 6)})]
    cases += [(f"mmps-{steps(50, 5)}-cg{cg}", "unconditional", "mmps", {"steps": steps(50, 5), "cg_iterations": cg})
              for cg in (steps(5, 2), steps(10, 3))]
    cases += [(f"ddim-{k}", "conditional", "conditional", {"steps": k}) for k in (steps(50, 6), steps(20, 4))]
    cases += [(f"dpm-{k}", "conditional", "conditional-dpm", {"steps": k}) for k in
              ((10, 15, 20) if not quick else (3, 4, 5))]
    return cases


def family_of(label: str) -> str:
    return label.split("-")[0]


def build_quality_methods(runs: dict, cases: list, baseline, *, batch: int, device: str, wanted: set[str]) -> dict:
    from fieldpaint.reconstruct import build_reconstructor

    methods = {REFERENCE: build_reconstructor(REFERENCE, data=baseline)}
    for label, kind, method, options in cases:
        if family_of(label) in wanted and runs.get(kind) is not None:
            run = runs[kind]
            methods[label] = DiffusionReconstructor(run.model, run.config, method=method, batch_size=batch,
                                                    device=device, **options)
    return methods


def run_quality(runs: dict, data_path: str | None, *, n: int, samples: int, seed: int, families: list[str],
                coverages: list[float], cases: list, batch: int, device: str, wanted: set[str],
                progress: bool = True) -> pd.DataFrame:
    """cases.csv's rows for every method of `cases` and the reference, group by group."""
    from fieldpaint.data.fields import periodic_axes
    from fieldpaint.evaluate import load_fields, run_group
    from fieldpaint.reconstruct import BaselineData

    loaded = [r for r in (runs.get("unconditional"), runs.get("conditional")) if r is not None]
    fields, train, stats, data, attrs = load_fields(loaded, data_path, None, "test", n)
    baseline = BaselineData(stats, attrs, load_train=lambda: train,
                            periodic=periodic_axes(getattr(data, "periodic", "auto"), attrs))
    methods = build_quality_methods(runs, cases, baseline, batch=batch, device=device, wanted=wanted)
    rows = []
    for family in families:
        for coverage in coverages:
            started = time.perf_counter()
            rows += run_group(methods, fields, stats, family, coverage, samples=samples, seed=seed)
            if progress:
                print(f"  {family} {coverage:g}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    frame = pd.DataFrame(rows)
    cg = {label: options.get("cg_iterations") for label, _, _, options in cases}
    frame["cg_iterations"] = frame["method"].map(cg)
    return frame


def _interval(ratio: float, low: float, high: float) -> str:
    return f"{ratio:.3g} [{low:.3g}, {high:.3g}]"


def quality_table(summary: pd.DataFrame, cases: pd.DataFrame, labels: list[str]) -> list[str]:
    """Markdown: per method its cost and its ratio to the reference in every group."""
    groups = sorted({(m, c) for m, c in zip(summary["mask"], summary["coverage"])})
    head = ("| method | NFE | forward-equivalents | s/field | " +
            " | ".join(f"{m} {c:.0%}: ratio to {REFERENCE} [95% CI]" for m, c in groups) + " |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for label in labels:
        g = summary[summary["method"] == label].set_index(["mask", "coverage"])
        if g.empty:
            continue
        nfe = float(g["nfe"].mean())
        cg = cases.loc[cases["method"] == label, "cg_iterations"].dropna()
        equivalent = forward_equivalents(label, nfe, int(cg.iloc[0]) if len(cg) else 0)
        cells = [_interval(g.loc[k, "ratio_gmean"], g.loc[k, "ratio_ci_low"], g.loc[k, "ratio_ci_high"])
                 if k in g.index else "n/a" for k in groups]
        lines.append(f"| {label} | {nfe:.0f} | {equivalent:.0f} | {g['seconds_per_field'].mean():.3g} | "
                     + " | ".join(cells) + " |")
    return lines


def _paired(cases: pd.DataFrame, a: str, b: str, mask: str, coverage: float) -> tuple[float, float, float]:
    """Geometric-mean MSE ratio of a to b on their shared cases of one group, with its interval."""
    here = cases[(cases["mask"] == mask) & np.isclose(cases["coverage"], coverage)]
    x = here[here["method"] == a].set_index(["field", "seed"])["mse"]
    y = here[here["method"] == b].set_index(["field", "seed"])["mse"]
    x, y = x.align(y, join="inner")
    return paired_ratio(x.to_numpy(float), y.to_numpy(float))


def target_lines(summary: pd.DataFrame, cases: pd.DataFrame, labels: list[str]) -> list[str]:
    """The two targets, checked group by group with paired ratios."""
    groups = sorted({(m, c) for m, c in zip(summary["mask"], summary["coverage"])})
    present = set(summary["method"])
    costs = {}
    for label in labels:
        if label in present:
            nfe = float(summary.loc[summary["method"] == label, "nfe"].mean())
            cg = cases.loc[cases["method"] == label, "cg_iterations"].dropna()
            costs[label] = (nfe, forward_equivalents(label, nfe, int(cg.iloc[0]) if len(cg) else 0))
    lines = ["", f"Target 1: MMPS beats RePaint and DDNM in MSE at every coverage >= 0.9 (random, tracks), "
                 f"at <= {REPAINT_NFE} / 4 = {REPAINT_NFE / 4:.1f} network evaluations"]
    rivals = [m for m in labels if family_of(m) in ("repaint", "ddnm") and m in present]
    for mmps in (m for m in labels if family_of(m) == "mmps" and m in present):
        nfe, equivalent = costs[mmps]
        wins, clear = [], []
        for rival in rivals:
            for mask, coverage in groups:
                ratio, low, high = _paired(cases, mmps, rival, mask, coverage)
                wins.append(ratio < 1)
                clear.append(high < 1)
                lines.append(f"  {mmps} / {rival} on {mask} {coverage:.0%}: {_interval(ratio, low, high)}")
        budget = REPAINT_NFE / 4
        beats = bool(wins) and all(wins)
        verdict = ("NOT met" if not beats or nfe > budget else
                   "MET by NFE and by forward-equivalents" if equivalent <= budget else
                   "MET by NFE, not by forward-equivalents")
        lines.append(f"  -> {mmps}: lower MSE in {sum(wins)} of {len(wins)} comparisons (interval below 1 in "
                     f"{sum(clear)}); NFE {nfe:.0f}, forward-equivalents {equivalent:.0f}, budget {budget:.1f}: "
                     f"target {verdict}")
    lines += ["", "Target 2: DPM-Solver++ at <= 20 NFE matches DDIM-50's MSE within DDIM-50's interval"]
    reference = next((m for m in labels if m == "ddim-50" and m in present),
                     next((m for m in labels if family_of(m) == "ddim" and m in present), None))
    if reference is None:
        return lines + ["  (no DDIM run)"]
    for dpm in (m for m in labels if family_of(m) == "dpm" and m in present and costs[m][0] <= 20):
        inside = []
        for mask, coverage in groups:
            row = lambda m: summary[(summary["method"] == m) & (summary["mask"] == mask)  # noqa: E731
                                    & np.isclose(summary["coverage"], coverage)].iloc[0]
            d, r = row(dpm), row(reference)
            ok = bool(r["ratio_ci_low"] <= d["ratio_gmean"] <= r["ratio_ci_high"])
            inside.append(ok)
            paired = _interval(*_paired(cases, dpm, reference, mask, coverage))
            lines.append(f"  {dpm} on {mask} {coverage:.0%}: ratio {d['ratio_gmean']:.3g}, {reference}'s interval "
                         f"[{r['ratio_ci_low']:.3g}, {r['ratio_ci_high']:.3g}] -> {'inside' if ok else 'OUTSIDE'}; "
                         f"paired {dpm} / {reference}: {paired}")
        lines.append(f"  -> {dpm}: inside in {sum(inside)} of {len(inside)} groups: "
                     f"target {'MET' if all(inside) else 'NOT met'}")
    return lines


def quality_main(args: argparse.Namespace) -> int:
    from fieldpaint.runs import load_run

    runs = {"unconditional": load_run(args.unconditional) if args.unconditional else None,
            "conditional": load_run(args.conditional) if args.conditional else None}
    repaint_spec = tuple(int(v) for v in args.repaint.split(","))
    if len(repaint_spec) != 3:
        raise SystemExit("--repaint takes STEPS,JUMP_LENGTH,JUMP_N_SAMPLE")
    cases = quality_cases(repaint_spec, args.quick)
    wanted = set(args.methods.split(","))
    n, samples = (2, 2) if args.quick else (args.n, args.samples)
    families = args.families.split(",")
    coverages = [float(c) for c in args.coverages.split(",")]
    print("\n".join(harness.machine_lines(str(args.device))))
    print(f"runs: unconditional {args.unconditional}, conditional {args.conditional}; {n} test fields x "
          f"{', '.join(families)} masks x coverages {', '.join(f'{c:g}' for c in coverages)}; {samples} members; "
          f"reference {REFERENCE}{'; QUICK (tiny steps)' if args.quick else ''}")
    started = time.perf_counter()
    table = run_quality(runs, args.data, n=n, samples=samples, seed=args.seed, families=families,
                        coverages=coverages, cases=cases, batch=args.batch, device=args.device, wanted=wanted)
    summary = summarize(table, REFERENCE)
    labels = [c[0] for c in cases]
    print("\n".join(quality_table(summary, table, labels)))
    print("\n".join(target_lines(summary, table, labels)))
    print(f"\nNFE = network evaluations (forward passes) per member; forward-equivalents count MMPS's CG "
          f"backward passes as 2 forwards each; s/field = wall time per field for all {samples} members. "
          f"{time.perf_counter() - started:.0f} s in all; load average after: {harness.load_average()}")
    if args.out:
        from fieldpaint.report import write_report

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        table.to_csv(out / "cases.csv", index=False)
        summary.to_csv(out / "summary.csv", index=False)
        stats = (runs["unconditional"] or runs["conditional"]).stats
        print(f"report: {write_report(out, stats, [], {'benchmark': 'benchmarks/sampling.py'})}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unconditional", default=None, help="QUALITY: run folder of an unconditional model")
    parser.add_argument("--conditional", default=None, help="QUALITY: run folder of a conditional model")
    parser.add_argument("--data", default=None, help="QUALITY: data file (default: the runs' own)")
    parser.add_argument("--n", type=int, default=16, help="QUALITY: test fields")
    parser.add_argument("--samples", type=int, default=8, help="QUALITY: members per reconstruction")
    parser.add_argument("--seed", type=int, default=0, help="QUALITY: mask and sampler seed")
    parser.add_argument("--families", default=",".join(FAMILIES), help="QUALITY: mask families")
    parser.add_argument("--coverages", default=",".join(f"{c:g}" for c in COVERAGES), help="QUALITY: coverages")
    parser.add_argument("--methods", default="repaint,ddnm,mmps,ddim,dpm", help="QUALITY: sampler families to run")
    parser.add_argument("--repaint", default="250,10,10", help="QUALITY: RePaint steps,jump_length,jump_n_sample")
    parser.add_argument("--quick", action="store_true", help="QUALITY: 2 fields, 2 members, a few steps per sampler")
    parser.add_argument("--out", default=None, help="QUALITY: also write cases.csv, summary.csv and report.md here")
    parser.add_argument("--full", action="store_true", help="TIMING: also run whole samplers (minutes for RePaint)")
    parser.add_argument("--repeats", type=int, default=3, help="timed network evaluations per model")
    parser.add_argument("--batch", type=int, default=None, help="members per network call (TIMING: default 1; "
                        "QUALITY: 16)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cases", default=",".join(c[0] for c in CASES),
                        help="comma-separated subset of " + ", ".join(c[0] for c in CASES))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.unconditional or args.conditional:
        args.batch = args.batch or 16
        return quality_main(args)
    args.batch = args.batch or 1
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
