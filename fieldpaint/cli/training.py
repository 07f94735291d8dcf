"""`fieldpaint configs` and `fieldpaint train`."""

from __future__ import annotations

import argparse

from fieldpaint.errors import FieldpaintError



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
    from fieldpaint.config import dump_yaml
    from fieldpaint.runfolder import prepare_run

    plan = prepare_run(config=args.config, run_dir=args.run_dir, resume=args.resume, init_from=args.init_from,
                       overrides=args.set)
    if args.dry_run:
        from fieldpaint.models.registry import describe_parameters

        p = describe_parameters(plan.config)
        print(dump_yaml(plan.config), end="")
        print(f"# {p['trainable'] / 1e6:.2f}M trainable parameters; nothing was trained (--dry-run)")
        return 0
    from fieldpaint.train import train

    row = train(plan.config, plan.run_dir, resume=plan.resume, reset_optimizer=args.reset_optimizer,
                init_from=plan.init_from, progress=not args.no_progress)
    if row:
        print(f"done: {plan.run_dir} (test loss {row['test_loss']:.4f}, best {row['best_test_loss']:.4f} "
              f"at epoch {row['best_epoch']})")
    return 0


def add_train_parser(sub: argparse._SubParsersAction) -> None:
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


def add_configs_parser(sub: argparse._SubParsersAction) -> None:
    configs = sub.add_parser("configs", help="list presets with parameter counts, or show one as YAML")
    configs.add_argument("action", nargs="?", choices=["list", "show"], default="list")
    configs.add_argument("name", nargs="?", help="preset name or YAML file (for show)")
    configs.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="override a config key, e.g. --set train.lr=3e-4 (repeatable)")
    configs.set_defaults(func=cmd_configs)
