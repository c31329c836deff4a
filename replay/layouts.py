"""Which reader a source string goes to: an E4 Connect export, or a data set in its original layout.

A source is a path, optionally prefixed with its layout: ``e4:PATH``, ``wesad:PATH``,
``kemocon:PATH`` (self annotations; ``kemocon-partner:`` and ``kemocon-external:`` for the other
raters), ``verbio:PATH`` and ``unlabelled:PATH`` (also spelled ``unlabeled:``). Without a prefix
the layout is recognised from what is there, E4 exports first so that every source read before
these readers existed reads exactly as before. A path that exists as written is never taken
for a prefix.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from common.errors import DataError
from replay.recording import Recording


def _e4(path: Path) -> list[Recording]:
    from replay.e4csv import find_exports, read_e4_export

    return [read_e4_export(p) for p in find_exports(path)]


def _wesad(path: Path) -> list[Recording]:
    from replay.wesad import read_wesad

    return read_wesad(path)


def _kemocon(perspective: str) -> Callable[[Path], list[Recording]]:
    def read(path: Path) -> list[Recording]:
        from replay.kemocon import read_kemocon

        return read_kemocon(path, perspective)

    return read


def _verbio(path: Path) -> list[Recording]:
    from replay.verbio import read_verbio

    return read_verbio(path)


def _unlabelled(path: Path) -> list[Recording]:
    from replay.unlabelled import read_unlabelled

    return read_unlabelled(path)


READERS: dict[str, Callable[[Path], list[Recording]]] = {
    "e4": _e4,
    "wesad": _wesad,
    "kemocon": _kemocon("self"),
    "kemocon-self": _kemocon("self"),
    "kemocon-partner": _kemocon("partner"),
    "kemocon-external": _kemocon("external"),
    "verbio": _verbio,
    "unlabelled": _unlabelled,
    "unlabeled": _unlabelled,
}


def split_source(source: str | Path) -> tuple[str | None, Path]:
    """``(layout or None, path)``; ``wesad:/data/WESAD`` -> ``('wesad', Path('/data/WESAD'))``."""
    if isinstance(source, Path):
        return None, source
    prefix, sep, rest = source.partition(":")
    if sep and prefix.lower() in READERS and rest and not Path(source).exists():
        return prefix.lower(), Path(rest)
    return None, Path(source)


def detect(path: Path) -> str:
    """The layout of an unprefixed path (``e4`` when nothing else fits, so errors stay the E4 reader's)."""
    from replay.e4csv import is_e4_export
    from replay.kemocon import is_kemocon
    from replay.verbio import is_verbio
    from replay.wesad import is_wesad

    if not path.exists() or is_e4_export(path):
        return "e4"
    if is_wesad(path):
        return "wesad"
    if is_kemocon(path):
        return "kemocon"
    if is_verbio(path):
        return "verbio"
    return "e4"


def read_layout(source: str | Path) -> list[Recording]:
    """Every recording of ``source``, by its prefix or its detected layout."""
    layout, path = split_source(source)
    if not path.exists():
        raise DataError(path, "no such file or folder")
    return READERS[layout or detect(path)](path)


__all__ = ["READERS", "detect", "read_layout", "split_source"]
