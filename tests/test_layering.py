"""The layout's arrows, read from every module's imports (ast, nothing imported): the shell
(``m3sense``) stands on the stages, the stages stand on the ground floor (``common``, ``e4``), and no two
packages import each other, directly or round a loop.

Every import counts, also one inside a function: a deferred import is still a dependency.
"""

from __future__ import annotations

import ast
import itertools
import tomllib
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import REPO

SHELL = "m3sense"
GROUND = ("common", "e4")


def _packages() -> tuple[str, ...]:
    """The project's packages, as ``pyproject.toml`` ships them (a new stage is covered at once)."""
    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    names = tuple(sorted(p.rstrip("*") for p in find["include"]))
    assert all((REPO / n / "__init__.py").is_file() for n in names), names
    return names


PACKAGES = _packages()
STAGES = tuple(p for p in PACKAGES if p != SHELL and p not in GROUND)


def _imported_packages(path: Path, package: str) -> Iterator[tuple[str, int]]:
    """(top-level project package, line) for each import in the module at ``path``."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [package] if node.level else [node.module or ""]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top in PACKAGES:
                yield top, node.lineno


def _edges() -> dict[tuple[str, str], list[str]]:
    """(importer, imported) between different packages -> where ("path:line")."""
    edges: dict[tuple[str, str], list[str]] = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            for top, line in _imported_packages(path, package):
                if top != package:
                    edges.setdefault((package, top), []).append(f"{path.relative_to(REPO)}:{line}")
    return edges


EDGES = _edges()


def _where(pairs: list[tuple[str, str]]) -> str:
    return "; ".join(f"{a} -> {b} ({', '.join(EDGES[(a, b)][:3])})" for a, b in pairs)


def test_the_reader_sees_imports_it_must_see() -> None:
    """The checks below are only as good as this reading: known arrows must show up."""
    assert ("m3sense", "storage") in EDGES and ("storage", "bus") in EDGES and ("ingest", "e4") in EDGES
    assert {"bus", "e4", "ingest", "preprocess", "inference", "storage", "replay"} <= set(PACKAGES)


def test_the_ground_floor_imports_no_project_package() -> None:
    bad = [(a, b) for a, b in EDGES if a in GROUND]
    assert not bad, _where(bad)


def test_no_stage_imports_the_shell() -> None:
    bad = sorted((a, b) for a, b in EDGES if b == SHELL and a in STAGES)
    assert not bad, _where(bad)


def _cycle(edges: set[tuple[str, str]]) -> list[str] | None:
    """One loop in the package graph, or None (depth-first search)."""
    graph: dict[str, list[str]] = {}
    for a, b in sorted(edges):
        graph.setdefault(a, []).append(b)
    state: dict[str, int] = {}  # 1 on the path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_cycle_finder_finds_a_loop() -> None:
    assert _cycle({("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")}) == ["a", "b", "c", "a"]
    assert _cycle({("a", "b"), ("b", "c"), ("a", "c")}) is None


def test_no_cycle_between_packages() -> None:
    loop = _cycle(set(EDGES))
    assert loop is None, "import cycle " + " -> ".join(loop) + ": " + _where(list(itertools.pairwise(loop)))
