"""`fieldpaint data generate | info | masks`."""

from __future__ import annotations

import argparse
from pathlib import Path

from fieldpaint.atomic import check_writable
from fieldpaint.cli.options import check_memory, coverage, fraction, grid_size, nonnegative_int, positive_int
from fieldpaint.data.masks import MASK_FAMILIES

# Bytes per output value held while a dataset is made and written: the float32 value, a copy the
# writer makes, a float64 work batch (a rough bound: it exists to refuse the absurd, early).
GENERATE_BYTES_PER_VALUE = 12
KOLMOGOROV_BATCH = 32  # trajectories simulated together (generate_kolmogorov's batch_size)
SOLVER_ARRAYS = 16  # complex128 solver-grid arrays per trajectory (state, RK stages, work)


def generation_bytes(args: argparse.Namespace) -> float:
    """A rough upper bound on the memory `data generate` needs, computed before anything is made."""
    n = args.n_train + args.n_test
    if args.generator == "grf":
        return GENERATE_BYTES_PER_VALUE * n * args.channels * args.height * args.width
    from fieldpaint.data.kolmogorov import DEFAULT_SNAPSHOTS_PER_TRAJECTORY, KolmogorovPhysics

    plan = KolmogorovPhysics().plan(args.height, args.width, DEFAULT_SNAPSHOTS_PER_TRAJECTORY)
    solver = min(KOLMOGOROV_BATCH, n) * SOLVER_ARRAYS * 16 * plan.oversample**2 * args.height * args.width
    return GENERATE_BYTES_PER_VALUE * n * 3 * args.height * args.width + solver


def cmd_data_generate(args: argparse.Namespace) -> int:
    from fieldpaint.data.io import write_dataset

    out = Path(args.out) if args.out else Path("data") / f"{args.generator}.nc"
    check_writable(out, args.overwrite)  # before any work: a refusal after an hour's simulation is no use
    check_memory(generation_bytes(args), f"{args.n_train + args.n_test} samples of {args.height}x{args.width}")
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
    from fieldpaint.data.layout import gridded_variables

    with open_dataset(args.path) as ds:
        defaults = gridded_variables(ds)  # what data.variables means when it is not set
        variables = args.variables.split(",") if args.variables else [
            name for name, var in ds.data_vars.items() if var.ndim >= 2]
    train = FieldDataset(args.path, variables, "train", test_fraction=args.test_fraction)
    test = FieldDataset(args.path, variables, "test", stats=train.stats, test_fraction=args.test_fraction)
    print(f"{args.path}: {train.height}x{train.width}, {len(train)} train + {len(test)} test samples; "
          f"default channels (data.variables unset): {', '.join(defaults) or 'none'}")
    for name, mean, std in zip(train.stats.variables, train.stats.mean, train.stats.std):
        print(f"  {name:<12} mean {mean:+.4g}  std {std:.4g}")
    for key, value in sorted(train.attrs.items()):
        print(f"  @{key} = {value}")
    return 0


def cmd_data_masks(args: argparse.Namespace) -> int:
    import numpy as np
    import xarray as xr

    from fieldpaint.data.io import write_netcdf_atomic
    from fieldpaint.data.masks import make_masks

    out = Path(args.out)
    check_writable(out, args.overwrite)
    # float32 masks, their int8 copy and the families' float64/int64 work arrays
    check_memory(32 * args.n * args.height * args.width, f"{args.n} masks of {args.height}x{args.width}")
    masks = make_masks(args.family, args.coverage, args.n, args.height, args.width, seed=args.seed)
    ds = xr.Dataset({"mask": (("sample", "y", "x"), masks[:, 0].astype(np.int8))},
                    attrs={"family": args.family, "coverage": args.coverage, "seed": args.seed,
                           "convention": "1 = observed, 0 = hidden"})
    out.parent.mkdir(parents=True, exist_ok=True)
    write_netcdf_atomic(ds, out, overwrite=args.overwrite)
    hidden = 1.0 - masks.mean()
    print(f"wrote {out}: {args.n} {args.family} masks of {args.height}x{args.width}, "
          f"hidden fraction {hidden:.4f}")
    return 0


def add_data_parser(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="generate built-in datasets, inspect files, draw masks")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="{generate,info,masks}")

    gen = data_sub.add_parser("generate", help="write a built-in dataset to NetCDF",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    gen.add_argument("generator", choices=["kolmogorov", "grf"],
                     help="kolmogorov: 2-D turbulence (u, v, vorticity); grf: Matérn Gaussian random field")
    gen.add_argument("--n-train", type=positive_int, default=9180, help="training snapshots")
    gen.add_argument("--n-test", type=nonnegative_int, default=1020, help="test snapshots (disjoint trajectories)")
    gen.add_argument("--height", type=grid_size, default=64, help="grid rows (y)")
    gen.add_argument("--width", type=grid_size, default=128, help="grid columns (x)")
    gen.add_argument("--seed", type=nonnegative_int, default=0)
    gen.add_argument("--out", default=None, help="output file (.nc or .zarr); default data/GENERATOR.nc")
    gen.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    grf = gen.add_argument_group("grf options")
    grf.add_argument("--nu", type=float, default=1.5, help="Matérn smoothness (0.5, 1.5 or 2.5)")
    grf.add_argument("--length-scale", type=float, default=8.0, help="length scale in pixels")
    grf.add_argument("--variance", type=float, default=1.0, help="marginal variance")
    grf.add_argument("--channels", type=positive_int, default=1, help="independent channels")
    gen.set_defaults(func=cmd_data_generate)

    info = data_sub.add_parser("info", help="describe a NetCDF/Zarr dataset as fieldpaint reads it")
    info.add_argument("path")
    info.add_argument("--variables", default=None, help="comma-separated variables (default: all gridded ones)")
    info.add_argument("--test-fraction", type=fraction, default=0.1, help="used when the file has no split variable")
    info.set_defaults(func=cmd_data_info)

    masks = data_sub.add_parser("masks", help="draw observation masks to a NetCDF file (1 = observed)",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    masks.add_argument("--family", default="random", choices=MASK_FAMILIES)
    masks.add_argument("--coverage", type=coverage, default=0.9, help="hidden fraction, in [0, 1)")
    masks.add_argument("--n", type=positive_int, default=16, help="number of masks")
    masks.add_argument("--height", type=grid_size, default=64)
    masks.add_argument("--width", type=grid_size, default=128)
    masks.add_argument("--seed", type=nonnegative_int, default=0)
    masks.add_argument("--out", required=True)
    masks.add_argument("--overwrite", action="store_true")
    masks.set_defaults(func=cmd_data_masks)
