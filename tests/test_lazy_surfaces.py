"""A package whose names load on first use (common/lazy.py) repeats them in an
``if TYPE_CHECKING:`` block, so the type checker sees what each name is (through the lazy
``__getattr__`` alone it would see ``Any`` and check nothing). The two lists must agree: the same
names, each from the module that the lazy surface loads it from."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAZY = ["inference", "ingest", "preprocess", "replay", "storage"]


def _typed_imports(package: str) -> dict[str, str]:
    """name -> submodule, from the package's ``if TYPE_CHECKING:`` block."""
    tree = ast.parse((ROOT / package / "__init__.py").read_text())
    out: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom) and imp.module is not None
                for alias in imp.names:
                    assert alias.asname == alias.name, f"{package}: import {alias.name} as itself (a re-export)"
                    out[alias.name] = imp.module
    return out


@pytest.mark.parametrize("package", LAZY)
def test_the_typed_imports_are_the_lazy_names_from_their_modules(package: str) -> None:
    pkg = importlib.import_module(package)
    typed = _typed_imports(package)
    assert sorted(typed) == sorted(pkg.__all__), f"{package}: TYPE_CHECKING block and lazy surface differ"
    for name, module in typed.items():
        assert getattr(pkg, name) is getattr(importlib.import_module(module), name), f"{package}.{name}"


def test_every_package_with_a_lazy_surface_is_checked() -> None:
    uses = sorted(p.parent.name for p in ROOT.glob("*/__init__.py") if "lazy_surface(" in p.read_text())
    assert uses == sorted(LAZY)
