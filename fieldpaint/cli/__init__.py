"""The `fieldpaint` command: parse, validate, call library functions, print.

Each subcommand is a small function `cmd_<name>(args) -> int` in the module of its job (data,
training, reconstruction). Bad input raises a `FieldpaintError`; `main` prints it as one line
and returns exit status 2. So do the operating system's refusals (a folder that is not writable,
a full disk) and a request too large for memory: they are about the input, not bugs.
"""

from __future__ import annotations

import argparse
import sys

from fieldpaint.cli.data import add_data_parser
from fieldpaint.cli.reconstruction import add_demo_parser, add_evaluate_parser, add_inpaint_parser
from fieldpaint.cli.training import add_configs_parser, add_train_parser
from fieldpaint.errors import FieldpaintError, UsageError

SUBCOMMANDS = "{data,configs,train,inpaint,evaluate,demo}"


class Parser(argparse.ArgumentParser):
    """argparse, except that a usage error is one line like every other error (argparse prints the
    usage block and its own prefix); `--help` still prints the usage. Subparsers inherit the class."""

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    from fieldpaint import __version__

    parser = Parser(
        prog="fieldpaint",
        description="Train diffusion models on 2-D gridded fields and reconstruct fields from sparse "
                    "observations, measured against Gaussian-process interpolation.")
    parser.add_argument("--version", action="version", version=f"fieldpaint {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar=SUBCOMMANDS)
    for add in (add_data_parser, add_configs_parser, add_train_parser, add_inpaint_parser, add_evaluate_parser,
                add_demo_parser):
        add(sub)
    return parser


def _os_error(err: OSError) -> str:
    where = f": {err.filename}" if getattr(err, "filename", None) else ""
    return f"{err.strerror or type(err).__name__}{where}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parser.parse_args(argv)
        args.command_line = " ".join(["fieldpaint", *argv])  # for the `history` of what it writes
        return args.func(args)
    except FieldpaintError as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
    except MemoryError:
        message = "not enough memory for this request: use smaller sizes or fewer samples"
    except OSError as err:
        message = _os_error(err)
    except KeyboardInterrupt:
        print("fieldpaint: interrupted", file=sys.stderr)
        return 130
    print(f"fieldpaint: error: {message}", file=sys.stderr)
    return 2


__all__ = ["build_parser", "main"]
