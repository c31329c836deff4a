"""The one JSON object a command prints at exit with ``--json``: the facts of its text summary
under the same three leading fields everywhere (``command``, ``exit_code``, ``reason``), so a
script reads any command's outcome the same way. The README's "Command line conventions"
lists each command's fields."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

#: the fields every summary starts with
COMMON_FIELDS = ("command", "exit_code", "reason")


def add_json_option(parser: argparse.ArgumentParser, fields: str) -> None:
    """``--json``, its help naming the fields the command adds to the common ones."""
    parser.add_argument(
        "--json",
        action="store_true",
        help=f"at exit print one JSON object on stdout: {', '.join(COMMON_FIELDS)}, {fields}",
    )


def summary(command: str, code: int, facts: Mapping[str, Any], problems: Sequence[str] = ()) -> dict[str, Any]:
    """``facts`` under the common fields; ``reason`` is ``done``, ``interrupted (Ctrl-C)``, or
    the ``problems`` (what was lost, refused or died) that make the exit code what it is."""
    if code == 130:
        reason = "interrupted (Ctrl-C)"
    elif problems:
        reason = "; ".join(problems)
    else:
        reason = "done" if code == 0 else f"exit code {code}"
    return jsonable({"command": command, "exit_code": code, "reason": reason, **facts})


def print_summary(command: str, code: int, facts: Mapping[str, Any], problems: Sequence[str] = ()) -> None:
    print(json.dumps(summary(command, code, facts, problems), allow_nan=False), flush=True)


def jsonable(value: Any) -> Any:
    """``value`` with NaN and infinities as null (JSON has neither) and numpy scalars as numbers."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if hasattr(value, "item"):  # a numpy scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
