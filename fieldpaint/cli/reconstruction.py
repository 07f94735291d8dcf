"""`fieldpaint inpaint`, `fieldpaint evaluate` and `fieldpaint demo`."""

from __future__ import annotations

import argparse
from pathlib import Path

from fieldpaint.cli.options import check_in, names, positive_float, positive_int
from fieldpaint.errors import FieldpaintError
from fieldpaint.reconstruct import FRAMES, METHOD_NAMES, METHODS


def _sampler_options(args: argparse.Namespace) -> dict:
    options = {"steps": args.steps, "jump_length": args.jump_length, "jump_n_sample": args.jump_n_sample,
               "eta": args.eta, "cg_iterations": args.cg_iterations, "batch_size": args.batch_size,
               "precision": args.precision, "device": args.device}
    return {k: v for k, v in options.items() if v is not None}


def mean_step_choice(text: str, words: tuple[str, ...] = ("auto", "members")) -> str | int:
    """argparse type of evaluate's --mean-step: auto, members or a sampling step (>= 1)."""
    if text in words:
        return text
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r}: give {', '.join(words)} or a sampling step (1, 2, ...)") from None


def frame_axes_choice(text: str) -> str | tuple[str, ...]:
    """argparse type of evaluate's --frame-candidates: auto (every periodic axis), fixed (no rolled
    frame) or comma-separated axes among x and y."""
    from fieldpaint.mean_step import FRAME_AXES

    if text == "auto":
        return text
    if text == "fixed":
        return ()
    axes = names(text)
    unknown = [a for a in axes if a not in FRAME_AXES]
    if unknown or not axes:
        raise argparse.ArgumentTypeError(f"{text!r}: give auto, fixed or axes among {', '.join(FRAME_AXES)} "
                                         "(x,y for both)")
    return tuple(axes)


def inpaint_mean_step(text: str) -> str | int:
    """argparse type of inpaint's --mean-step: members or a sampling step (no validation cases: no auto)."""
    return mean_step_choice(text, ("members",))


def sigma_y_value(text: str):
    """argparse type of --sigma-y: `0.3` or `sst=0.3,...` in the data's units (parse_sigma_y)."""
    from fieldpaint.diffusion.sigma_y import parse_sigma_y
    from fieldpaint.errors import FieldpaintError

    try:
        return parse_sigma_y(text)
    except FieldpaintError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def normalised_sigma_y(args: argparse.Namespace):
    """--sigma-y / --sigma-y-variable (the data's units) converted with the run's statistics: a float,
    a per-channel tuple or a per-pixel tensor in normalised units; None when neither is given."""
    from fieldpaint.errors import FieldpaintError

    if args.sigma_y is None and args.sigma_y_variable is None:
        return None
    if args.sigma_y is not None and args.sigma_y_variable is not None:
        raise FieldpaintError("give --sigma-y or --sigma-y-variable, not both")
    if args.checkpoint is None:
        raise FieldpaintError("--sigma-y is converted with a run's statistics: give --checkpoint")
    from fieldpaint.data.io import open_dataset
    from fieldpaint.diffusion.sigma_y import sigma_y_field_from_dataset, sigma_y_in_normalised_units
    from fieldpaint.runs import load_run

    stats = load_run(args.checkpoint).stats
    variables = names(args.variables) if args.variables else list(stats.variables)
    if args.sigma_y is not None:
        return sigma_y_in_normalised_units(args.sigma_y, variables, stats)
    with open_dataset(args.input) as ds:
        return sigma_y_field_from_dataset(ds, args.sigma_y_variable, variables, stats)


def cmd_inpaint(args: argparse.Namespace) -> int:
    from fieldpaint.inpaint import inpaint_file
    from fieldpaint.reconstruct import METHODS

    if args.method is None:  # the run's own kind of sampler
        if args.checkpoint is None:
            raise FieldpaintError("name a --method (a baseline such as gp needs no run) or a --checkpoint")
        from fieldpaint.api import default_method
        from fieldpaint.runs import load_run

        args.method = default_method(load_run(args.checkpoint))
    diffusion = METHODS[args.method].needs != "data"
    options = {**_sampler_options(args), "progress": not args.no_progress} if diffusion else {}
    sigma_y = normalised_sigma_y(args) if diffusion else None
    if sigma_y is not None:
        options["sigma_y"] = sigma_y
    if args.mean_step is not None:
        if not diffusion:
            raise FieldpaintError(f"--mean-step applies to conditional diffusion methods, not {args.method}")
        options["mean_step"] = None if args.mean_step == "members" else args.mean_step
    if args.frames != "fixed":
        if not diffusion:
            raise FieldpaintError(f"--frames applies to diffusion methods, not {args.method}")
        options["frames"] = args.frames
    if args.spread_scale is not None:
        if not diffusion:
            raise FieldpaintError(f"--spread-scale applies to diffusion methods, not {args.method}")
        options["spread_scale"] = args.spread_scale
    if args.symmetric_frames:
        options["symmetric_frames"] = True
    attrs = inpaint_file(args.checkpoint, args.input, args.out, method=args.method,
                         variables=names(args.variables) if args.variables else None,
                         mask_variable=args.mask_variable, valid_variable=args.valid_variable,
                         samples=args.samples, seed=args.seed, overwrite=args.overwrite,
                         train_data=args.train_data, command=args.command_line, **options)
    members = f"{args.samples} members, {attrs['nfe']} network evaluations per member" if attrs["samples"] \
        else "mean and std"
    print(f"wrote {args.out}: {args.method}, {members}, {attrs['seconds']:.1f} s")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import datetime

    from fieldpaint.data.masks import MASK_FAMILIES, parse_coverages
    from fieldpaint.evaluate import check_output_folder, evaluate_and_report
    from fieldpaint.reconstruct import METHOD_NAMES
    from fieldpaint.runs import load_run

    families = check_in("mask family", names(args.masks), tuple(MASK_FAMILIES))
    methods = check_in("method", names(args.methods), METHOD_NAMES)
    coverages = parse_coverages(args.coverages)
    out = Path(args.out)
    check_output_folder(out, args.resume)
    runs = [load_run(r) for r in args.run or []]
    header = {"runs": ", ".join(str(r) for r in args.run or []) or "none (baselines on a data file)",
              "data": args.data or (runs[0].config.data.path if runs else ""), "split": args.split,
              "fields": args.n, "members per diffusion reconstruction": args.samples,
              "mask families": ", ".join(families), "coverages": ", ".join(f"{c:g}" for c in coverages),
              "seed": args.seed, "written": datetime.datetime.now().isoformat(timespec="seconds")}
    if "mmps" in methods:  # the report costs MMPS's backward passes from this line
        from fieldpaint.diffusion.reconstructor import DEFAULT_CG_ITERATIONS
        from fieldpaint.report import CG_HEADER

        header[CG_HEADER] = args.cg_iterations or DEFAULT_CG_ITERATIONS
    report = evaluate_and_report(out, runs=runs, methods=methods, families=families, coverages=coverages,
                                 data_path=args.data, variables=names(args.variables) if args.variables else None,
                                 split=args.split, n=args.n, samples=args.samples, seed=args.seed,
                                 sampler=_sampler_options(args), gp={"nu": args.gp_nu}, reference=args.reference,
                                 validation_fields=args.validation_fields, mean_step=args.mean_step,
                                 frame_axes=args.frame_candidates, resume=args.resume,
                                 progress=not args.no_progress, header=header)
    print(f"report: {report}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from fieldpaint.demo import run_demo

    report = run_demo(Path(args.out), minutes=args.minutes, device_name=args.device, quick=args.quick,
                      progress=not args.no_progress)
    print(f"report: {report}")
    return 0


def add_sampler_options(p: argparse.ArgumentParser) -> None:
    """The diffusion samplers' options, the same for inpaint and evaluate (see _sampler_options)."""
    p.add_argument("--steps", type=positive_int, default=None, help="sampling steps (default: each method's)")
    p.add_argument("--jump-length", type=positive_int, default=10, help="RePaint jump length")
    p.add_argument("--jump-n-sample", type=positive_int, default=10, help="RePaint resampling count")
    p.add_argument("--eta", type=float, default=None, help="DDIM/DDNM/MMPS stochasticity (default: each method's)")
    p.add_argument("--cg-iterations", type=positive_int, default=None,
                   help="MMPS conjugate-gradient iterations per step (default 5)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="fields x members per network call")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="the network's arithmetic while sampling: auto is bf16 autocast + channels_last for the "
                        "conditional methods of v-predicting models where the device computes bf16 natively "
                        "(AVX512-BF16 or AMX CPUs, Ampere+ GPUs), fp32 elsewhere")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")


def add_inpaint_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inpaint", help="reconstruct fields from sparse observations in a NetCDF/Zarr file",
        description="Reconstruct every field of --input with a trained model. A pixel is observed where "
                    "every variable is finite (and --mask-variable is 1); all other pixels are "
                    "reconstructed. Writes the mean, the per-pixel std and the members of each variable.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="run folder (its last checkpoint) or checkpoint file; "
                   "needed by diffusion methods, optional for baselines (its statistics and training data)")
    p.add_argument("--input", required=True, help="NetCDF/Zarr file with the model's variables")
    p.add_argument("--out", required=True, help="output NetCDF file")
    p.add_argument("--method", default=None, choices=METHOD_NAMES,
                   help="default: conditional for a conditional run, ddnm for an unconditional one. "
                   + "; ".join(f"{n}: {s.summary}" for n, s in METHODS.items()))
    p.add_argument("--train-data", default=None, help="dataset file whose train split gp-dataset fits its "
                   "kernel on (default: the run's data)")
    p.add_argument("--variables", default=None, help="comma-separated input variables, in the model's "
                   "channel order (default: the model's own names)")
    p.add_argument("--mask-variable", default=None, help="variable with 1 = observed, 0 = hidden")
    p.add_argument("--valid-variable", default=None, help="variable with 0 at never-valid pixels (land)")
    p.add_argument("--samples", type=positive_int, default=8, help="ensemble members per field (diffusion methods)")
    add_sampler_options(p)
    p.add_argument("--sigma-y", type=sigma_y_value, default=None,
                   help="observation noise std in the data's units: one number for every variable (0.3) or per "
                        "variable (sst=0.3 or u=0.1,v=0.2; a variable not named is exact), divided by the run's "
                        "per-channel std. Calibrated with mmps, a heuristic (about 4x over-confident) with repaint "
                        "and ddnm, refused by conditional models (default: exact observations)")
    p.add_argument("--sigma-y-variable", default=None,
                   help="per-pixel observation noise std from the input file, in the data's units: a variable for "
                        "every channel (err) or per channel (u=u_err,v=v_err)")
    p.add_argument("--mean-step", type=inpaint_mean_step, default=None,
                   help="conditional methods: take the mean from the members' average of the denoised fields at "
                        "this sampling step (1 = the noisiest; see `fieldpaint evaluate --mean-step auto` for the "
                        "step validated per mask and coverage), or members (their own average). Default: 1 for a "
                        "model trained with diffusion.terminal_fraction > 0 (its trained regression), else members")
    p.add_argument("--spread-scale", type=positive_float, default=None,
                   help="diffusion methods: scale each member's deviation from the members' average (and the "
                        "std) by this factor, e.g. the one `fieldpaint evaluate` chose on training fields for "
                        "the mask family and coverage nearest yours (its report's 'spread scale'). Default 1")
    p.add_argument("--frames", choices=FRAMES, default="fixed",
                   help="diffusion methods: draw member k of K in a frame rolled by k/K of the field along these "
                        "axes and rolled back; only for a field that wraps around there with the same statistics "
                        "everywhere along it (`fieldpaint evaluate` chooses it on training fields for periodic "
                        "data and reports its choice)")
    p.add_argument("--symmetric-frames", action="store_true",
                   help="diffusion methods: also draw member k in the frame of symmetry k mod n of those the "
                        "input file declares (its `symmetries` attribute; the Kolmogorov generator records its "
                        "box's) and map it back; on the model's grid only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_inpaint)


def add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="compare trained models against GP and interpolation baselines",
        description="Score every method on the same cases (field, mask family, coverage, seed) and write "
                    "cases.csv, summary.csv, summary.json, reference.json and report.md to --out. Every ratio is "
                    "against the strongest kriging: per mask family and coverage, the kriging variant (per-field "
                    "fit, or a kernel fitted on training fields around the training-mean field) with the lowest "
                    "error on validation cases from the train split. A method is called better or worse only "
                    "when the 95 %% interval of its geometric-mean MSE ratio excludes 1.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--run", action="append", default=None, help="run folder or checkpoint (repeatable)")
    p.add_argument("--data", default=None, help="a dataset file: evaluate the baselines on it without a run, or "
                   "score the runs on another file with the same variables")
    p.add_argument("--variables", default=None, help="with --data and no run: comma-separated variables "
                   "(default: every gridded variable)")
    p.add_argument("--methods", default="gp,gp-dataset,linear,repaint,ddnm,conditional",
                   help="comma-separated, of: " + ", ".join(METHOD_NAMES) + " (diffusion methods run on every "
                        "run whose model fits them; with --reference auto, gp and gp-dataset always run)")
    p.add_argument("--reference", default="auto", help="auto: per mask family and coverage, the kriging variant "
                   "with the lowest error on validation cases from the train split; or a method name")
    p.add_argument("--validation-fields", type=positive_int, default=16,
                   help="training fields held out to choose the reference and the mean step (auto)")
    p.add_argument("--mean-step", type=mean_step_choice, default="auto",
                   help="conditional methods' mean: auto (per mask family and coverage, the sampling step whose "
                        "denoised fields, averaged over the members, have the lowest error on the validation cases; "
                        "the last step is the members' average), members, or one sampling step")
    p.add_argument("--frame-candidates", type=frame_axes_choice, default="auto",
                   help="with --mean-step auto on periodic data, the axes the conditional members' frames may be "
                        "rolled along (chosen with the step; the fixed frame is always a candidate): auto (every "
                        "periodic axis), fixed (none), x, y or x,y. Name only axes along which the field's "
                        "statistics are the same everywhere: each candidate costs a validation pass")
    p.add_argument("--masks", default="random,tracks,stations,boxes", help="mask families")
    p.add_argument("--coverages", default="0.5,0.8,0.9,0.92,0.95,0.98,0.99", help="hidden fractions, each in [0, 1)")
    p.add_argument("--split", choices=["test", "train"], default="test",
                   help="train reproduces the notes' memorisation check")
    p.add_argument("--n", type=positive_int, default=100, help="fields (the first n of the split)")
    p.add_argument("--samples", type=positive_int, default=8, help="ensemble members per diffusion reconstruction")
    add_sampler_options(p)
    p.add_argument("--gp-nu", default="auto", type=lambda s: s if s == "auto" else float(s),
                   help="Matérn smoothness of the fitted GP: auto (chosen per field by likelihood), 0.5, 1.5, 2.5")
    p.add_argument("--seed", type=int, default=0, help="mask and sampler seed")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--resume", action="store_true", help="continue an interrupted evaluation in --out")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_evaluate)


def add_demo_parser(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser(
        "demo", help="the main job on built-in data: generate, train, evaluate, report",
        description="Generate Kolmogorov-flow turbulence, train an unconditional and a conditional (Palette) "
                    "model with the notes' recipe within the time budget, evaluate both against the strongest "
                    "kriging (chosen on training fields) and linear interpolation, and write DIR/report.md. "
                    "A rerun skips finished stages. On a CUDA machine it trains the full-size 64x128 slim "
                    "configuration.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    demo.add_argument("--out", default="demo", help="folder for data, runs, tables, figures and report.md")
    demo.add_argument("--minutes", type=positive_float, default=15.0, help="rough total time budget")
    demo.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    demo.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test in about two minutes")
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(func=cmd_demo)
