"""Argument types and checks shared by the subcommands."""

from __future__ import annotations

import argparse
import math
import os

from fieldpaint.errors import FieldpaintError


def names(text: str) -> list[str]:
    """'a, b,c' -> ['a', 'b', 'c']."""
    return [t.strip() for t in text.split(",") if t.strip()]


def coverage(text: str) -> float:
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


def whole_number(text: str, low: int = 0, high: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"must be at least {low}" + (f" and at most {high:,}" if high else "") +
                                         f", got {value}")
    return value


def positive_int(text: str) -> int:
    return whole_number(text, 1)


def nonnegative_int(text: str) -> int:
    return whole_number(text, 0)


def grid_size(text: str) -> int:
    """A grid's rows or columns: a guard against typos, as for the config's data.height/width."""
    from fieldpaint.config.schema import MAX_GRID

    return whole_number(text, 1, MAX_GRID)


def physical_memory() -> int | None:
    """This machine's memory in bytes, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(need: float, what: str) -> None:
    """Refuse, before allocating anything, a request that cannot fit in this machine's memory."""
    total = physical_memory()
    if total and need > total:
        raise FieldpaintError(f"{what} would need about {need / 2**30:,.3g} GiB, more than this machine's "
                              f"{total / 2**30:,.3g} GiB of memory: use smaller sizes or fewer samples")


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def fraction(text: str) -> float:
    """A number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be strictly between 0 and 1, got {text}")
    return value


def check_in(what: str, given: list[str], known: tuple[str, ...]) -> list[str]:
    bad = [g for g in given if g not in known]
    if bad:
        raise FieldpaintError(f"unknown {what} {', '.join(bad)}; known: {', '.join(known)}")
    return given
