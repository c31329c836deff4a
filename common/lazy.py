"""Package surfaces whose names load on first use (PEP 562).

``m3sense --help`` imports every package's ``cli`` module, and with it the package: an
eager ``__init__`` would import torch, scipy and influxdb-client before any command runs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any


def lazy_surface(
    package: str, where: Mapping[str, str]
) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """``__all__, __getattr__, __dir__`` for ``package``, whose public ``name`` lives in
    the submodule ``where[name]``; a loaded name is cached in the package."""
    names = sorted(where)

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return names

    return names, __getattr__, __dir__
