"""K-EmoCon (Park et al., Sci Data 2020) in its published layout, read into recordings.

Layout (e4-facts.md section 5)::

    ROOT/metadata/subjects.csv                      pid,initTime,startTime,endTime  (Unix ms)
    ROOT/raw/e4_data/<pid>/E4_ACC.csv ... E4_TEMP.csv  (also ROOT/e4_data/, or one level deeper)
    ROOT/raw/emotion_annotations/self_annotations/P<pid>.self.csv
                                 partner_annotations/P<pid>.partner.csv
                                 aggregated_external_annotations/P<pid>.external.csv

E4 files carry one row per sample: ``timestamp,value,device_serial`` (ACC: ``timestamp,x,y,z,
device_serial``), the stamp in Unix milliseconds; rows are put on the E4 grid by
:mod:`replay.timed`. Two participants hold rows of two wristbands; the dataset's authors keep
one serial for each (pid 31: ``A013E1``, but ``A01525`` for IBI; pid 32: ``A01A3A``), and so does
this reader; any other file mixing serials is refused rather than guessed.

Annotations: one row per 5 s of the debate, ``seconds`` being the interval's end counted from
``startTime``. A file longer than the debate is cut from its beginning, as the authors do. The
label is the paper's (section 5.3): ``high`` iff valence > 2 and arousal > 2, else ``low``
(task ``emotion``). Which rater's view the paper used it does not say; ``self`` is the default,
``kemocon-partner:`` and ``kemocon-external:`` pick the others.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from common.errors import DataError
from replay.e4csv import _check_size
from replay.recording import LabelInterval, Recording, Signal
from replay.timed import check_times, grid_signal

PERSPECTIVES = {
    "self": "self_annotations",
    "partner": "partner_annotations",
    "external": "aggregated_external_annotations",
}
#: The wristband kept where a participant's files hold two (the dataset authors' choice).
SERIAL_CHOICE = {31: {"ibi": "A01525", "*": "A013E1"}, 32: {"*": "A01A3A"}}
_FILES = {"acc": "E4_ACC.csv", "bvp": "E4_BVP.csv", "eda": "E4_EDA.csv", "temp": "E4_TEMP.csv", "hr": "E4_HR.csv"}
_SUBJECT_COLUMNS = ("pid", "initTime", "startTime", "endTime")
ANNOTATION_S = 5.0


def is_kemocon(path: Path) -> bool:
    return path.is_dir() and (path / "metadata" / "subjects.csv").is_file()


def _text(path: Path) -> str:
    _check_size(path.stat().st_size, str(path))
    return path.read_text(encoding="utf-8-sig", errors="replace")


def _rows(text: str, path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header cells and ``(line, cells)`` of the non-empty rows."""
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise DataError(path, "empty file: expected a header row", 1)
    header = [c.strip() for c in lines[0].split(",")]
    rows = [(i, [c.strip() for c in line.split(",")]) for i, line in enumerate(lines[1:], start=2) if line.strip()]
    for i, cells in rows:
        if len(cells) != len(header):
            raise DataError(
                path, f"expected {len(header)} comma-separated values ({','.join(header)}), got {len(cells)}", i
            )
    return header, rows


def _number(cell: str, path: Path, line: int, what: str) -> float:
    try:
        value = float(cell)
    except ValueError:
        raise DataError(path, f"{what} is not a number: {cell[:40]!r}", line) from None
    if not np.isfinite(value):
        raise DataError(path, f"{what} is not a finite number: {cell[:40]!r}", line)
    return value


def read_subjects(path: Path) -> dict[int, tuple[float, float, float]]:
    """``pid -> (initTime, startTime, endTime)`` in Unix seconds."""
    header, rows = _rows(_text(path), path)
    missing = [c for c in _SUBJECT_COLUMNS if c not in header]
    if missing:
        raise DataError(path, f"header lacks column(s) {', '.join(missing)} (expected {','.join(_SUBJECT_COLUMNS)})", 1)
    col = {c: header.index(c) for c in _SUBJECT_COLUMNS}
    out: dict[int, tuple[float, float, float]] = {}
    for line, cells in rows:
        pid_text = cells[col["pid"]]
        if not pid_text.isdigit():
            raise DataError(path, f"pid must be a whole number, got {pid_text[:20]!r}", line)
        times = np.array([_number(cells[col[c]], path, line, c) for c in _SUBJECT_COLUMNS[1:]]) / 1000.0
        check_times(times, str(path), line, np.full(3, line))
        if not times[0] <= times[1] < times[2]:
            raise DataError(path, "expected initTime <= startTime < endTime", line)
        if int(pid_text) in out:
            raise DataError(path, f"pid {int(pid_text)} listed twice", line)
        out[int(pid_text)] = (float(times[0]), float(times[1]), float(times[2]))
    return out


def _serial_rows(
    header: list[str], rows: list[tuple[int, list[str]]], path: Path, pid: int, stream: str
) -> list[tuple[int, list[str]]]:
    """Rows of the one wristband to keep (all rows when the file has no serial column)."""
    if header[-1] != "device_serial":
        return rows
    serials = {cells[-1] for _, cells in rows}
    if len(serials) <= 1:
        return rows
    choice = SERIAL_CHOICE.get(pid, {})
    keep = choice.get(stream, choice.get("*"))
    if keep is None or keep not in serials:
        first = rows[0][1][-1]
        other = next(i for i, cells in rows if cells[-1] != first)
        raise DataError(
            path,
            f"rows of wristbands {', '.join(sorted(serials))}: which one to keep is known "
            f"only for the participants the dataset's authors named ({', '.join(map(str, SERIAL_CHOICE))})",
            other,
        )
    return [(i, cells) for i, cells in rows if cells[-1] == keep]


def _stamped(
    path: Path, pid: int, stream: str, columns: tuple[str, ...], may_be_empty: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(times_s, values, lines)`` of one E4 file; ``columns`` are the value columns (an IBI file
    may hold no beat at all)."""
    header, rows = _rows(_text(path), path)
    expected = ("timestamp", *columns)
    if (
        tuple(header[: len(expected)]) != expected
        or len(header) not in (len(expected), len(expected) + 1)
        or (len(header) > len(expected) and header[-1] != "device_serial")
    ):
        raise DataError(
            path,
            f"header must be '{','.join(expected)}' or '{','.join(expected)},device_serial', "
            f"got {','.join(header)[:80]!r}",
            1,
        )
    rows = _serial_rows(header, rows, path, pid, stream)
    if not rows:
        if may_be_empty:
            return np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64)
        raise DataError(path, "no samples")
    lines = np.array([i for i, _ in rows], dtype=np.int64)
    try:
        table = np.array([cells[: len(expected)] for _, cells in rows], dtype=np.float64)
    except ValueError:
        for i, cells in rows:
            for name, cell in zip(expected, cells):
                _number(cell, path, i, name)
        raise  # pragma: no cover - the scan always finds the culprit
    finite = np.isfinite(table).all(axis=1)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        raise DataError(path, "not a finite number", int(lines[i]))
    times = table[:, 0] / 1000.0
    check_times(times, str(path), 2, lines)
    values = table[:, 1:] if len(columns) > 1 else table[:, 1]
    return times, values, lines


def read_participant(folder: Path, pid: int, debate: tuple[float, float] | None, annotations: Path | None) -> Recording:
    signals: dict[str, Signal] = {}
    for modality, name in _FILES.items():
        f = folder / name
        if f.is_file():
            columns = ("x", "y", "z") if modality == "acc" else ("value",)
            times, values, lines = _stamped(f, pid, modality, columns)
            signals[modality] = grid_signal(modality, times, values, str(f), lines)
    if not any(m in signals for m in ("acc", "bvp", "eda", "temp")):
        raise DataError(folder, f"no K-EmoCon E4 file here: none of {', '.join(_FILES.values())}")
    ibi_t = ibi = np.zeros(0)
    if (f := folder / "E4_IBI.csv").is_file():
        ibi_t, ibi, lines = _stamped(f, pid, "ibi", ("value",), may_be_empty=True)
        bad = np.flatnonzero(ibi <= 0)
        if bad.size:
            raise DataError(f, f"an interval must be > 0 s, got {ibi[bad[0]]}", int(lines[bad[0]]))
        order = np.argsort(ibi_t, kind="stable")
        ibi_t, ibi = ibi_t[order], ibi[order]
    labels: tuple[LabelInterval, ...] = ()
    if annotations is not None and annotations.is_file():
        if debate is None:
            raise DataError(annotations, f"participant {pid} has annotations but no row in metadata/subjects.csv")
        labels = read_annotations(annotations, *debate)
    return Recording(
        device=f"kemocon-p{pid:02d}", source=str(folder), signals=signals, ibi_t_s=ibi_t, ibi_s=ibi, labels=labels
    )


def emotion_label(valence: float, arousal: float) -> str:
    """The paper's rule (section 5.3): high valence and high arousal, each above 2 on 1-5."""
    return "high" if valence > 2 and arousal > 2 else "low"


def read_annotations(path: Path, start_s: float, end_s: float) -> tuple[LabelInterval, ...]:
    """5 s ratings as label intervals on the debate's clock; runs of one label become one interval."""
    header, rows = _rows(_text(path), path)
    for c in ("seconds", "arousal", "valence"):
        if c not in header:
            raise DataError(path, f"header lacks column {c!r} (expected seconds,arousal,valence,...)", 1)
    cs, ca, cv = header.index("seconds"), header.index("arousal"), header.index("valence")
    rated: list[tuple[float, str]] = []
    for line, cells in rows:
        seconds = _number(cells[cs], path, line, "seconds")
        if seconds <= 0 or seconds % ANNOTATION_S:
            raise DataError(path, f"seconds must be a positive multiple of 5, got {cells[cs]!r}", line)
        if rated and seconds != rated[-1][0] + ANNOTATION_S:
            raise DataError(path, f"seconds must go up by 5, got {cells[cs]!r} after {rated[-1][0]:g}", line)
        arousal, valence = (_number(cells[c], path, line, n) for c, n in ((ca, "arousal"), (cv, "valence")))
        if not (1 <= arousal <= 5 and 1 <= valence <= 5):
            raise DataError(path, f"arousal and valence must be within 1-5, got {arousal:g}, {valence:g}", line)
        rated.append((seconds, emotion_label(valence, arousal)))
    fits = int((end_s - start_s) // ANNOTATION_S)
    if rated and rated[-1][0] > fits * ANNOTATION_S:  # longer than the debate: the authors cut from the
        rated = [
            ((i + 1) * ANNOTATION_S, label)  # beginning and count the rest from the debate's start
            for i, (_, label) in enumerate(rated[max(0, len(rated) - fits) :])
        ]
    out: list[LabelInterval] = []
    for seconds, label in rated:
        a, b = start_s + seconds - ANNOTATION_S, start_s + seconds
        if out and out[-1].label == label and out[-1].end_s == a:
            out[-1] = LabelInterval(start_s=out[-1].start_s, end_s=b, task="emotion", label=label)
        else:
            out.append(LabelInterval(start_s=a, end_s=b, task="emotion", label=label))
    return tuple(out)


def _e4_root(root: Path) -> Path:
    for sub in ("raw/e4_data/e4_data", "raw/e4_data", "e4_data/e4_data", "e4_data"):
        if (root / sub).is_dir():
            return root / sub
    raise DataError(root, "no raw/e4_data folder (K-EmoCon's per-participant E4 files)")


def _annotations_root(root: Path) -> Path:
    for sub in ("raw/emotion_annotations", "emotion_annotations"):
        if (root / sub).is_dir():
            return root / sub
    return root / "raw" / "emotion_annotations"


_PID = re.compile(r"^\d{1,3}$")


def read_kemocon(root: str | Path, perspective: str = "self") -> list[Recording]:
    """Every participant with E4 files, labelled from ``perspective``'s annotations where present."""
    root = Path(root)
    if perspective not in PERSPECTIVES:
        raise DataError(root, f"unknown annotation perspective {perspective!r} (one of {', '.join(PERSPECTIVES)})")
    if not is_kemocon(root):
        raise DataError(root, "not a K-EmoCon folder: no metadata/subjects.csv")
    subjects = read_subjects(root / "metadata" / "subjects.csv")
    e4 = _e4_root(root)
    notes = _annotations_root(root) / PERSPECTIVES[perspective]
    folders = sorted((p for p in e4.iterdir() if p.is_dir() and _PID.match(p.name)), key=lambda p: int(p.name))
    if not folders:
        raise DataError(e4, "no participant folders (named by pid: 1, 4, 5, ...)")
    out = []
    for folder in folders:
        pid = int(folder.name)
        times = subjects.get(pid)
        out.append(read_participant(folder, pid, times[1:] if times else None, notes / f"P{pid}.{perspective}.csv"))
    return out


__all__ = ["PERSPECTIVES", "emotion_label", "is_kemocon", "read_annotations", "read_kemocon", "read_subjects"]
