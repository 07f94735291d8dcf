"""The `fieldpaint` command: parse, validate, call library functions, print.

Each subcommand is a small function `cmd_<name>(args) -> int`. Bad input raises a
`FieldpaintError`; `main` prints it as one line and returns exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fieldpaint.errors import FieldpaintError



# ----------------------------------------------------------------------------------------------
# data


def _check_output(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FieldpaintError(f"{path} already exists; pass --overwrite to replace it")


def cmd_data_generate(args: argparse.Namespace) -> int:
    from fieldpaint.data.io import write_dataset

    out = Path(args.out) if args.out else Path("data") / f"{args.generator}.nc"
    _check_output(out, args.overwrite)
    if args.n_train < 1 or args.n_test < 0:
        raise FieldpaintError(f"--n-train must be >= 1 and --n-test >= 0 (got {args.n_train}, {args.n_test})")
    if args.generator == "kolmogorov":
        from fieldpaint.data.kolmogorov import generate_kolmogorov

        channels, split, attrs = generate_kolmogorov(
            args.n_train, args.n_test, args.height, args.width, seed=args.seed, progress=not args.quiet)
    else:
        from fieldpaint.data.grf import generate_grf

        channels, split, attrs = generate_grf(
            args.n_train, args.n_test, args.height, args.width, channels=args.channels, nu=args.nu,
            length_scale=args.length_scale, variance=args.variance, seed=args.seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_dataset(out, channels, split, attrs, overwrite=args.overwrite)
    n = len(split)
    print(f"wrote {out}: {n} samples ({int((split == 'train').sum())} train, "
          f"{int((split == 'test').sum())} test) of {args.height}x{args.width}, "
          f"variables {', '.join(channels)}")
    return 0


def cmd_data_info(args: argparse.Namespace) -> int:
    from fieldpaint.data.fields import FieldDataset
    from fieldpaint.data.io import open_dataset

    ds = open_dataset(args.path)
    variables = args.variables.split(",") if args.variables else [
        name for name, var in ds.data_vars.items() if var.ndim >= 2]
    train = FieldDataset(args.path, variables, "train", test_fraction=args.test_fraction)
    test = FieldDataset(args.path, variables, "test", stats=train.stats, test_fraction=args.test_fraction)
    print(f"{args.path}: {train.height}x{train.width}, {len(train)} train + {len(test)} test samples")
    for name, mean, std in zip(train.stats.variables, train.stats.mean, train.stats.std):
        print(f"  {name:<12} mean {mean:+.4g}  std {std:.4g}")
    for key, value in sorted(train.attrs.items()):
        print(f"  @{key} = {value}")
    return 0


def cmd_data_masks(args: argparse.Namespace) -> int:
    import numpy as np
    import xarray as xr

    from fieldpaint.data.masks import make_masks

    out = Path(args.out)
    _check_output(out, args.overwrite)
    masks = make_masks(args.family, args.coverage, args.n, args.height, args.width, seed=args.seed)
    ds = xr.Dataset({"mask": (("sample", "y", "x"), masks[:, 0].astype(np.int8))},
                    attrs={"family": args.family, "coverage": args.coverage, "seed": args.seed,
                           "convention": "1 = observed, 0 = hidden"})
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.to_netcdf(out)
    hidden = 1.0 - masks.mean()
    print(f"wrote {out}: {args.n} {args.family} masks of {args.height}x{args.width}, "
          f"hidden fraction {hidden:.4f}")
    return 0


# ----------------------------------------------------------------------------------------------
# configs


def cmd_configs(args: argparse.Namespace) -> int:
    from fieldpaint.config import dump_yaml, load_config, preset_names

    if args.action == "show":
        if not args.name:
            raise FieldpaintError("configs show needs a preset name or YAML file")
        print(dump_yaml(load_config(args.name, args.set)), end="")
        return 0
    from fieldpaint.models.registry import describe_parameters

    print(f"{'preset':<24}{'params':>10}{'trainable':>11}{'per sample':>12}  description")
    for name in preset_names():
        config = load_config(name)
        p = describe_parameters(config)
        print(f"{name:<24}{p['total'] / 1e6:>9.2f}M{p['trainable'] / 1e6:>10.2f}M"
              f"{p['per_sample']:>12.0f}  {config.description}")
    print("\nparams per sample: trainable parameters / 9,180 training samples (the notes' set).")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from fieldpaint.config import dump_yaml, load_config

    if args.resume and args.init_from:
        raise FieldpaintError("--resume continues a run and --init-from starts a new one: pass only one")
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            raise FieldpaintError(f"{run_dir} is not a run folder (no config.yaml); nothing to resume")
        config = load_config(str(run_dir / "config.yaml"), args.set)
    else:
        if not args.config or not args.run_dir:
            raise FieldpaintError("a new run needs --config NAME and --run-dir DIR (or --resume DIR)")
        run_dir = Path(args.run_dir)
        config = load_config(args.config, args.set)
        if (run_dir / "checkpoints").exists() or (run_dir / "config.yaml").exists():
            raise FieldpaintError(f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                                  "or choose another --run-dir")
    if args.dry_run:
        from fieldpaint.models.registry import describe_parameters

        p = describe_parameters(config)
        print(dump_yaml(config), end="")
        print(f"# {p['trainable'] / 1e6:.2f}M trainable parameters; nothing was trained (--dry-run)")
        return 0
    from fieldpaint.train import train

    row = train(config, run_dir, resume=bool(args.resume), reset_optimizer=args.reset_optimizer,
                init_from=args.init_from, progress=not args.no_progress)
    if row:
        print(f"done: {run_dir} (test loss {row['test_loss']:.4f}, best {row['best_test_loss']:.4f} "
              f"at epoch {row['best_epoch']})")
    return 0


def cmd_inpaint(args: argparse.Namespace) -> int:
    from fieldpaint.inpaint import inpaint_file

    options = {"steps": args.steps, "jump_length": args.jump_length, "jump_n_sample": args.jump_n_sample,
               "eta": args.eta, "sigma_y": args.sigma_y, "batch_size": args.batch_size, "device": args.device,
               "progress": not args.no_progress}
    attrs = inpaint_file(args.checkpoint, args.input, args.out, method=args.method,
                         variables=args.variables.split(",") if args.variables else None,
                         mask_variable=args.mask_variable, valid_variable=args.valid_variable,
                         samples=args.samples, seed=args.seed, overwrite=args.overwrite,
                         **{k: v for k, v in options.items() if v is not None})
    print(f"wrote {args.out}: {args.method}, {args.samples} members, {attrs['nfe']} network evaluations "
          f"per member, {attrs['seconds']:.1f} s")
    return 0


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def cmd_evaluate(args: argparse.Namespace) -> int:
    import datetime

    from fieldpaint.data.masks import MASK_FAMILIES, parse_coverages
    from fieldpaint.evaluate import build_methods, evaluate, load_eval_set
    from fieldpaint.report import write_report

    families = _names(args.masks)
    bad = sorted(set(families) - set(MASK_FAMILIES))
    if bad:
        raise FieldpaintError(f"unknown mask famil{'y' if len(bad) == 1 else 'ies'} {', '.join(bad)}; "
                              f"known: {', '.join(MASK_FAMILIES)}")
    coverages = parse_coverages(args.coverages)
    if args.n < 1 or args.samples < 1:
        raise FieldpaintError("--n and --samples must be at least 1")
    out = Path(args.out)
    if (out / "cases.csv").exists() and not args.resume:
        raise FieldpaintError(f"{out} already holds an evaluation; pass --resume to continue it or choose another --out")
    runs = [Path(r) for r in args.run]
    data = load_eval_set(runs, args.split, args.n)
    sampler_options = {"steps": args.steps, "jump_length": args.jump_length, "jump_n_sample": args.jump_n_sample,
                       "eta": args.eta, "batch_size": args.batch_size, "device": args.device}
    methods = build_methods(_names(args.methods), data, seed=args.seed, gp_options={"nu": args.gp_nu},
                            sampler_options={k: v for k, v in sampler_options.items() if v is not None})
    print(f"evaluating {', '.join(methods)} on {len(data.x)} {args.split} fields x {len(families)} mask families "
          f"x {len(coverages)} coverages")
    evaluate(methods, data, families, coverages, out, samples=args.samples, seed=args.seed, resume=args.resume,
             progress=not args.no_progress)
    header = {"runs": ", ".join(map(str, runs)), "data": data.config.data.path, "split": args.split,
              "fields": len(data.x), "members per diffusion reconstruction": args.samples,
              "mask families": ", ".join(families), "coverages": ", ".join(f"{c:g}" for c in coverages),
              "seed": args.seed, "written": datetime.datetime.now().isoformat(timespec="seconds")}
    report = write_report(out, data.stats, runs, header)
    print(f"report: {report}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from fieldpaint.demo import run_demo

    report = run_demo(Path(args.out), minutes=args.minutes, device_name=args.device, quick=args.quick,
                      progress=not args.no_progress)
    print(f"report: {report}")
    return 0


# ----------------------------------------------------------------------------------------------
# parser


def _coverage(text: str) -> float:
    from fieldpaint.data.masks import check_coverage

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    try:
        check_coverage(value)
    except FieldpaintError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return value


def _add_data_parser(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="generate built-in datasets, inspect files, draw masks")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="{generate,info,masks}")

    gen = data_sub.add_parser("generate", help="write a built-in dataset to NetCDF",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    gen.add_argument("generator", choices=["kolmogorov", "grf"],
                     help="kolmogorov: 2-D turbulence (u, v, vorticity); grf: Matérn Gaussian random field")
    gen.add_argument("--n-train", type=int, default=9180, help="training snapshots")
    gen.add_argument("--n-test", type=int, default=1020, help="test snapshots (disjoint trajectories)")
    gen.add_argument("--height", type=int, default=64, help="grid rows (y)")
    gen.add_argument("--width", type=int, default=128, help="grid columns (x)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--out", default=None, help="output file (.nc or .zarr); default data/GENERATOR.nc")
    gen.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    grf = gen.add_argument_group("grf options")
    grf.add_argument("--nu", type=float, default=1.5, help="Matérn smoothness (0.5, 1.5 or 2.5)")
    grf.add_argument("--length-scale", type=float, default=8.0, help="length scale in pixels")
    grf.add_argument("--variance", type=float, default=1.0, help="marginal variance")
    grf.add_argument("--channels", type=int, default=1, help="independent channels")
    gen.set_defaults(func=cmd_data_generate)

    info = data_sub.add_parser("info", help="describe a NetCDF/Zarr dataset as fieldpaint reads it")
    info.add_argument("path")
    info.add_argument("--variables", default=None, help="comma-separated variables (default: all gridded ones)")
    info.add_argument("--test-fraction", type=float, default=0.1, help="used when the file has no split variable")
    info.set_defaults(func=cmd_data_info)

    masks = data_sub.add_parser("masks", help="draw observation masks to a NetCDF file (1 = observed)",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    masks.add_argument("--family", default="random", choices=["random", "stations", "tracks", "boxes", "mixed"])
    masks.add_argument("--coverage", type=_coverage, default=0.9, help="hidden fraction, in [0, 1)")
    masks.add_argument("--n", type=int, default=16, help="number of masks")
    masks.add_argument("--height", type=int, default=64)
    masks.add_argument("--width", type=int, default=128)
    masks.add_argument("--seed", type=int, default=0)
    masks.add_argument("--out", required=True)
    masks.add_argument("--overwrite", action="store_true")
    masks.set_defaults(func=cmd_data_masks)


def _add_train_parser(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser(
        "train", help="train a diffusion model from a preset or YAML config",
        description="Train a diffusion model. New run: --config NAME --run-dir DIR. Continue one: "
                    "--resume DIR (exact when the optimizer and LR settings are unchanged; otherwise the "
                    "weights load and the optimizer and LR schedule start fresh, with a warning). Several "
                    "GPUs: torchrun --nproc_per_node N -m fieldpaint train ...")
    train.add_argument("--config", help="preset name (see `fieldpaint configs`) or YAML file")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set data.path=data/kolmogorov.nc (repeatable)")
    train.add_argument("--run-dir", help="folder for the config, metrics and checkpoints of a new run")
    train.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    train.add_argument("--reset-optimizer", action="store_true",
                       help="on --resume, load weights only: a fresh optimizer and LR schedule")
    train.add_argument("--init-from", metavar="CKPT", help="start a new run from a checkpoint's weights")
    train.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.set_defaults(func=cmd_train)


def _add_inpaint_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inpaint", help="reconstruct fields from sparse observations in a NetCDF/Zarr file",
        description="Reconstruct every field of --input with a trained model. A pixel is observed where "
                    "every variable is finite (and --mask-variable is 1); all other pixels are "
                    "reconstructed. Writes the mean, the per-pixel std and the members of each variable.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="run folder (its last checkpoint) or checkpoint file")
    p.add_argument("--input", required=True, help="NetCDF/Zarr file with the model's variables")
    p.add_argument("--out", required=True, help="output NetCDF file")
    p.add_argument("--method", required=True, choices=["repaint", "ddnm", "conditional"],
                   help="repaint/ddnm for unconditional models, conditional for concat/FiLM models")
    p.add_argument("--variables", default=None, help="comma-separated input variables, in the model's "
                   "channel order (default: the model's own names)")
    p.add_argument("--mask-variable", default=None, help="variable with 1 = observed, 0 = hidden")
    p.add_argument("--valid-variable", default=None, help="variable with 0 at never-valid pixels (land)")
    p.add_argument("--samples", type=int, default=8, help="ensemble members per field")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the method's)")
    p.add_argument("--jump-length", type=int, default=10, help="RePaint jump length")
    p.add_argument("--jump-n-sample", type=int, default=10, help="RePaint resampling count")
    p.add_argument("--eta", type=float, default=None, help="DDIM/DDNM stochasticity (default: the method's)")
    p.add_argument("--sigma-y", type=float, default=0.0, help="observation noise std, normalised units")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16, help="fields x members per network call")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_inpaint)


def _add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="compare trained models against GP and interpolation baselines",
        description="Score every method on the same cases (field, mask family, coverage, seed) and write "
                    "cases.csv, summary.csv, summary.json and report.md to --out. Ratios and wins are "
                    "against the per-field fitted GP, which always runs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--run", action="append", required=True, help="run folder or checkpoint (repeatable)")
    p.add_argument("--methods", default="gp,linear,repaint,ddnm,conditional",
                   help="comma-separated: gp, gp-dataset, gp-oracle, nearest, linear, laplace, repaint, ddnm, "
                        "conditional (diffusion methods run on every run whose model fits them)")
    p.add_argument("--masks", default="random,tracks,stations,boxes", help="mask families")
    p.add_argument("--coverages", default="0.5,0.8,0.9,0.92,0.95,0.98,0.99", help="hidden fractions, each in [0, 1)")
    p.add_argument("--split", choices=["test", "train"], default="test",
                   help="train reproduces the notes' memorisation check")
    p.add_argument("--n", type=int, default=100, help="fields (the first n of the split)")
    p.add_argument("--samples", type=int, default=8, help="ensemble members per diffusion reconstruction")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: each method's)")
    p.add_argument("--jump-length", type=int, default=10)
    p.add_argument("--jump-n-sample", type=int, default=10)
    p.add_argument("--eta", type=float, default=None)
    p.add_argument("--gp-nu", default="auto", type=lambda s: s if s == "auto" else float(s),
                   help="Matérn smoothness of the fitted GP: auto (chosen per field by likelihood), 0.5, 1.5, 2.5")
    p.add_argument("--seed", type=int, default=0, help="mask and sampler seed")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--resume", action="store_true", help="continue an interrupted evaluation in --out")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_evaluate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fieldpaint",
        description="Train diffusion models on 2-D gridded fields and reconstruct fields from sparse "
                    "observations, measured against Gaussian-process interpolation.")
    from fieldpaint import __version__

    parser.add_argument("--version", action="version", version=f"fieldpaint {__version__}")
    sub = parser.add_subparsers(dest="command", required=True,
                                metavar="{data,configs,train,inpaint,evaluate,demo}")
    _add_data_parser(sub)

    configs = sub.add_parser("configs", help="list presets with parameter counts, or show one as YAML")
    configs.add_argument("action", nargs="?", choices=["list", "show"], default="list")
    configs.add_argument("name", nargs="?", help="preset name or YAML file (for show)")
    configs.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="override a config key, e.g. --set train.lr=3e-4 (repeatable)")
    configs.set_defaults(func=cmd_configs)

    _add_train_parser(sub)
    _add_inpaint_parser(sub)
    _add_evaluate_parser(sub)
    demo = sub.add_parser(
        "demo", help="the main job on built-in data: generate, train, evaluate, report",
        description="Generate Kolmogorov-flow turbulence, train an unconditional and a conditional (Palette) "
                    "model with the notes' recipe within the time budget, evaluate both against the per-field "
                    "GP and linear interpolation, and write DIR/report.md. A rerun skips finished stages. "
                    "On a CUDA machine it trains the full-size 64x128 slim configuration.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    demo.add_argument("--out", default="demo", help="folder for data, runs, tables, figures and report.md")
    demo.add_argument("--minutes", type=float, default=15.0, help="rough total time budget")
    demo.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    demo.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test in about two minutes")
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except FieldpaintError as err:
        print(f"fieldpaint: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fieldpaint: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
