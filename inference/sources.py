"""Data sources for training and evaluation, named by one string each.

``PATH`` is anything ``replay`` can read (an E4 Connect folder or zip with ``labels.csv``, or
a folder of them, such as the WESAD subjects, or a data set in its original layout, optionally
prefixed: ``wesad:PATH``, ``kemocon:PATH``, ``verbio:PATH``, ``unlabelled:PATH``; see
``replay.layouts``). ``synthetic`` is the simulator.
Options follow a ``?`` as in a URL query:

- ``synthetic?minutes=30&subjects=6&seed=1``: simulator arguments (bare ``synthetic`` means
  ``minutes=30&subjects=4&seed=1``);
- ``tasks=anxiety,emotion``: keep only these tasks' labels (the rest become "no label");
- the ``--unlabeled`` flag of ``m3sense train`` drops all labels of a source.

Windows are made by the preprocess code path (``preprocess.recording_windows``), the same
one the live pipeline runs, then cached as ``.npz`` under the temp folder, keyed by the
source, the window hop and the preprocess code, so repeated runs skip the filtering.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import numpy as np

from common.errors import UserError
from inference.calibration import CalibrationConfig
from inference.dataset import WindowSet, windows_from_messages, with_references
from inference.model import MODALITY_CHANNELS

SYNTHETIC = "synthetic"
#: What a bare ``synthetic`` means (and what its provenance name then spells out).
# where source_windows keeps the windows it derived, unless told otherwise (a cache: safe to delete)
DEFAULT_CACHE_DIR = Path(tempfile.gettempdir()) / "m3sense-windows"
SYNTHETIC_DEFAULTS = {"minutes": "30", "subjects": "4", "seed": "1"}


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceSpec:
    """A parsed source string. ``name`` is what provenance (``trained_on``) records."""

    spec: str
    location: str  # "synthetic" or a filesystem path
    params: Mapping[str, str]
    tasks: tuple[str, ...] | None

    @property
    def synthetic(self) -> bool:
        return self.location == SYNTHETIC

    @property
    def name(self) -> str:
        if self.synthetic:
            args = ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))
            return f"synthetic({args})" if args else "synthetic"
        return self.location


def parse_source(spec: str) -> SourceSpec:
    location, _, query = spec.partition("?")
    if not location:
        raise UserError(f"empty data source {spec!r}")
    params = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=False))
    tasks = params.pop("tasks", None)
    if location == SYNTHETIC:
        params = SYNTHETIC_DEFAULTS | params
    if location != SYNTHETIC and not _source_path(location).exists():
        raise UserError(f"data source {location!r}: no such file or folder (or say 'synthetic')")
    if location != SYNTHETIC and params:
        raise UserError(f"data source {spec!r}: only 'tasks=' applies to a path")
    return SourceSpec(
        spec=spec,
        location=location,
        params=params,
        tasks=tuple(t for t in tasks.split(",") if t) if tasks is not None else None,
    )


def _source_path(location: str) -> Path:
    """The path of a source, without a layout prefix such as ``wesad:`` (see ``replay.layouts``)."""
    from replay.layouts import split_source

    return split_source(location)[1]


def _value(text: str) -> int | float | bool | str:
    """A query value as the simulator wants it: a number, a boolean or the string itself."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_recordings(src: SourceSpec) -> list:
    """The source's ``replay.Recording`` objects."""
    if src.synthetic:
        from replay.simulate import simulate_recordings

        # typed by the text the user gave: simulate_recordings checks each (TypeError, ValueError)
        params: dict[str, Any] = {k: _value(v) for k, v in src.params.items()}
        try:
            return list(simulate_recordings(**params))
        except (TypeError, ValueError) as exc:
            raise UserError(f"data source {src.spec!r}: {exc}") from exc
    from replay.e4csv import read_source

    return read_source(src.location)


def _code_digest() -> str:
    """Hash of the code that makes windows (readers, simulator, preprocessing), so a changed
    filter or simulator invalidates the cache."""
    root = Path(__file__).resolve().parents[1]  # replay/, preprocess/ and inference/ are siblings
    h = hashlib.sha1()
    for f in [
        *sorted((root / "replay").glob("*.py")),
        *sorted((root / "preprocess").glob("*.py")),
        root / "inference" / "dataset.py",
        root / "inference" / "features.py",
    ]:
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def recording_window_set(
    recordings: Sequence, *, modalities, shapes, tasks, classes, source: str, hop_s: float
) -> WindowSet:
    """Windows of recordings, one every ``hop_s``, by the live preprocess code."""
    import preprocess

    try:
        config = preprocess.WindowConfig(hop_s=hop_s)
    except ValueError as exc:
        raise UserError(f"--hop-s: {exc}") from exc
    sets = [
        windows_from_messages(
            (w.to_message() for w in preprocess.recording_windows(rec, config)),
            modalities=modalities,
            shapes=shapes,
            tasks=tasks,
            classes=classes,
            source=source,
        )
        for rec in recordings
    ]
    return WindowSet.concat(sets)


def source_windows(
    src: SourceSpec,
    *,
    modalities: Sequence[str],
    tasks: Sequence[str],
    classes: Mapping[str, Sequence[str]],
    hop_s: float,
    cache_dir: Path | None = DEFAULT_CACHE_DIR,
    unlabeled: bool = False,
    calibration: CalibrationConfig | None = None,
) -> WindowSet:
    """All windows of one source for these modalities and tasks, labels kept only for
    ``src.tasks`` (or dropped if ``unlabeled``), each with the wearer reference it would have
    had live under ``calibration`` (default settings if None). Windows are made (and cached)
    once per source and hop with every modality and task, whatever a model uses."""
    import preprocess

    for t in tasks:
        if t not in preprocess.LABEL_CLASSES or tuple(classes[t]) != tuple(preprocess.LABEL_CLASSES[t]):
            raise UserError(
                f"task {t!r} with classes {list(classes.get(t, ()))}: the data has "
                f"{ {k: list(v) for k, v in preprocess.LABEL_CLASSES.items()} }"
            )
    all_tasks = tuple(preprocess.LABEL_CLASSES)
    all_modalities = tuple(preprocess.MODALITIES)
    path = None
    if cache_dir is not None:
        key = "|".join([src.name, src.spec, f"{hop_s:g}", _code_digest()])
        path = cache_dir / (hashlib.sha1(key.encode()).hexdigest()[:16] + ".npz")
    if path is not None and path.is_file():
        ws = WindowSet.load_npz(path)
    else:
        shapes = {m: (preprocess.SIZES[m], MODALITY_CHANNELS[m]) for m in all_modalities}
        ws = recording_window_set(
            read_recordings(src),
            modalities=all_modalities,
            shapes=shapes,
            tasks=all_tasks,
            classes=preprocess.LABEL_CLASSES,
            source=src.name,
            hop_s=hop_s,
        )
        if src.synthetic:  # simulated devices are sim01, sim02, ... in every synthetic source
            ws = replace(
                ws, groups=np.char.add(f"{src.name}/", ws.groups), tag_groups=np.char.add(f"{src.name}/", ws.tag_groups)
            )
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
            ws.save_npz(tmp)
            tmp.replace(path)
    ws = with_references(ws, calibration or CalibrationConfig()).select(modalities, tasks)
    if unlabeled:
        return ws.without_labels()
    if src.tasks is not None:
        unknown = [t for t in src.tasks if t not in tasks]
        if unknown:
            raise UserError(f"data source {src.spec!r}: unknown task(s) {unknown}; the model has {list(tasks)}")
        keep = np.array([t in src.tasks for t in tasks])
        ws = replace(ws, labels=np.where(keep[None, :], ws.labels, -1))
    return ws
