"""argparse value types shared by the commands (errors become argparse's one-line usage errors)."""

from __future__ import annotations

import argparse
import math


def positive_number(text: str, what: str = "a positive number") -> float:
    """A finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_seconds(text: str) -> float:
    return positive_number(text, "a positive number of seconds")


def speed(text: str) -> float:
    """``max`` (as fast as possible: ``math.inf``) or a positive factor of real time."""
    return math.inf if text.lower() == "max" else positive_number(text, "a positive number or 'max'")
