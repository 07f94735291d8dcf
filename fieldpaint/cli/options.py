"""Argument types and checks shared by the subcommands."""

from __future__ import annotations

import argparse
import math

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


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def check_in(what: str, given: list[str], known: tuple[str, ...]) -> list[str]:
    bad = [g for g in given if g not in known]
    if bad:
        raise FieldpaintError(f"unknown {what} {', '.join(bad)}; known: {', '.join(known)}")
    return given
