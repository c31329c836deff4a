"""Checks on values read from JSON (bus metadata, stored records) that also tell the type checker
what passed: one definition of "a finite number" instead of one per reader."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypeGuard


def is_finite_number(v: object) -> TypeGuard[float]:
    """An int or float that is finite; bool is an int to Python but never a number on the bus."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def mapping_or_empty(v: object) -> Mapping[Any, Any]:
    """``v`` where it is an object (a mapping), else an empty one: for optional nested metadata."""
    return v if isinstance(v, Mapping) else {}
