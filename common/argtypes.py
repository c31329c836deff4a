"""argparse value types shared by the commands, one per kind of value, and the two argparse
pieces every command uses: a parser whose errors are one line, and deprecated flag spellings.

A bad value becomes ``m3sense CMD: error: argument --flag: expected ..., got '...'`` and exit
code 2, before anything runs. ``tests/test_cli_consistency.py`` fails for a numeric flag whose
type is not one of these, so a new unchecked flag cannot slip in.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (the usage itself is one ``--help`` away),
    like every other bad-input error of the commands; the exit code stays argparse's 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def _integer(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def positive_number(text: str, what: str = "a positive number") -> float:
    """A finite number > 0."""
    value = _number(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def non_negative_number(text: str, what: str = "a number >= 0") -> float:
    """A finite number >= 0 (a weight that 0 switches off)."""
    value = _number(text)
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def finite_number(text: str) -> float:
    """Any finite number (an offset, which may be negative)."""
    value = _number(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def fraction(text: str) -> float:
    """A share in [0, 1]."""
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction from 0 to 1, got {text!r}")
    return value


def positive_seconds(text: str) -> float:
    """A duration that 0 would make meaningless (a period, a time-out)."""
    return positive_number(text, "a positive number of seconds")


def non_negative_seconds(text: str) -> float:
    """A duration where 0 means "not at all" (don't wait, don't batch)."""
    return non_negative_number(text, "a number of seconds >= 0")


def wait_seconds(text: str) -> float | None:
    """How long to wait: seconds >= 0, or ``inf`` for as long as it takes (None)."""
    value = _number(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0 or 'inf', got {text!r}")
    return None if math.isinf(value) else value


def positive_minutes(text: str) -> float:
    return positive_number(text, "a positive number of minutes")


def positive_int(text: str) -> int:
    """A count of which at least one is needed (a batch size, epochs, devices)."""
    value = _integer(text)
    if value is None or value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """A count where 0 means none (restarts, virtual wristbands), or a seed."""
    value = _integer(text)
    if value is None or value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def port(text: str) -> int:
    """A TCP port, 0 meaning any free one."""
    value = _integer(text)
    if value is None or not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port from 0 to 65535, got {text!r}")
    return value


def speed(text: str) -> float:
    """``max`` (as fast as possible: ``math.inf``) or a positive factor of real time."""
    return math.inf if text.lower() == "max" else positive_number(text, "a positive number or 'max'")


class DeprecatedFlag(argparse.Action):
    """An old spelling kept for one release: it warns on stderr in one line, then sets the new
    flag's value (times ``scale``: 0.001 turns an old millisecond value into seconds)."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, new_flag: str, scale: float = 1.0, **kw: Any):
        super().__init__(option_strings, dest, **kw)
        self.new_flag, self.scale = new_flag, scale

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        old = option_string or self.option_strings[0]
        how = f" (its value times {self.scale:g})" if self.scale != 1 else ""
        print(
            f"{parser.prog}: warning: {old} is deprecated and goes in the next release; use {self.new_flag}{how}",
            file=sys.stderr,
        )
        if self.scale != 1 and values is not None:
            values = values * self.scale
        setattr(namespace, self.dest, values)


def deprecated_alias(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    old: str,
    new: argparse.Action,
    *,
    scale: float = 1.0,
    old_type: Callable[[str], Any] | None = None,
) -> argparse.Action:
    """Keep ``old`` working beside the flag ``new`` (what ``add_argument`` returned for it):
    same destination and checks (or ``old_type`` when the old unit differs), hidden from ``--help``."""
    kind = old_type or new.type
    return parser.add_argument(
        old,
        dest=new.dest,
        type=kind if kind is not None else str,  # no type is the same as str
        metavar=new.metavar,
        action=DeprecatedFlag,
        new_flag=new.option_strings[-1],
        scale=scale,
        help=argparse.SUPPRESS,
    )
