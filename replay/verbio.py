"""VerBIO (public-speaking anxiety, TAMU HUBBS lab) in its session-folder layout, read into recordings.

Layout (e4-facts.md section 6; the lab's own loader)::

    ROOT/P001/PRE/E4_EDA_PPT.xlsx, E4_BVP_PPT.xlsx, E4_TEMP_PPT.xlsx, E4_ACC_PPT.xlsx,
                  E4_HR_PPT.xlsx, E4_IBI_PPT.xlsx        (and _RELAX, _PREP stages; TEST01.. are VR)
    ROOT/PRE/Self_Reports/PRE_afterPPT.xlsx            PID, ..., STAI State Score
    ROOT/POST/...                                      the same for the POST session

Each E4 workbook's first sheet has a ``Time (s)`` column (seconds from the stage's start) and the
signal's column(s); rows are put on the E4 grid by :mod:`replay.timed`. Only the real-audience
sessions (PRE, POST) and their presentation stage (PPT) are read: that is what the paper used and
what the STAI score after the presentation describes.

The files carry no wall-clock time, so every session starts at :data:`NOMINAL_START_S`; devices are
``verbio-P001-PRE`` and so on. Label (paper section 5.3): the session's STAI state score, 20-37
``low`` (no or low anxiety), above 37 ``high``, over the whole presentation (task ``anxiety``).
"""

from __future__ import annotations

import re
import zipfile
import zlib
from pathlib import Path
from xml.etree import ElementTree

import numpy as np

from common.errors import DataError
from replay.e4csv import MAX_FILE_BYTES, _check_size
from replay.recording import LabelInterval, Recording, Signal
from replay.timed import grid_signal

SESSIONS = ("PRE", "POST")
STAGE = "PPT"
#: 2020-01-01 00:00 UTC: where each session's ``Time (s)`` = 0 is put (the files have no clock).
NOMINAL_START_S = 1_577_836_800.0
#: STAI state scores up to this are "no or low anxiety" (paper 5.3, after Spielberger's bands).
STAI_LOW_MAX = 37
STAI_RANGE = (20, 80)
TIME_COLUMN = "Time (s)"
STAI_COLUMN = "STAI State Score"
_STREAMS = {"acc": "ACC", "bvp": "BVP", "eda": "EDA", "temp": "TEMP", "hr": "HR"}
_PID = re.compile(r"^P\d{3}$")


#: What a damaged workbook raises from zipfile, zlib or the XML parser (the last two found by fuzzing).
_BOOK_ERRORS = (zipfile.BadZipFile, OSError, KeyError, ValueError, EOFError, zlib.error, ElementTree.ParseError)


def _sheet_rows(path: Path) -> list[tuple[int, tuple]]:
    """``(row number, values)`` of the first sheet's non-empty rows, after checking the workbook's
    members are within the E4 reader's size bound (an .xlsx is a zip; nothing is inflated first)."""
    import openpyxl

    _check_size(path.stat().st_size, str(path))
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if info.file_size > MAX_FILE_BYTES:
                    _check_size(info.file_size, f"{path}!{info.filename}")
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except _BOOK_ERRORS as exc:
        raise DataError(path, f"not a readable .xlsx workbook ({type(exc).__name__}: {str(exc)[:60]})") from None
    try:
        if not book.worksheets:
            raise DataError(path, "the workbook has no sheet")
        return [
            (i, row)
            for i, row in enumerate(book.worksheets[0].iter_rows(values_only=True), start=1)
            if any(v is not None and v != "" for v in row)
        ]
    except _BOOK_ERRORS as exc:  # read_only parses the sheet as it goes: damage shows up here too
        raise DataError(path, f"not a readable .xlsx workbook ({type(exc).__name__}: {str(exc)[:60]})") from None
    finally:
        book.close()


def _float(value: object, path: Path, line: int, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise DataError(path, f"{what} is not a number: {value!r}"[:100], line)
    try:
        out = float(value)
    except ValueError:
        raise DataError(path, f"{what} is not a number: {str(value)[:40]!r}", line) from None
    if not np.isfinite(out):
        raise DataError(path, f"{what} is not a finite number: {value!r}", line)
    return out


def _stage_table(path: Path, columns: int, may_be_empty: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(times_s, values, rows)`` of one E4 workbook with ``columns`` value columns (the IBI
    workbook may hold no beat at all, as an E4's IBI.csv may)."""
    rows = _sheet_rows(path)
    if not rows:
        raise DataError(path, "empty sheet: expected a 'Time (s)' header row", 1)
    head_line, header = rows[0]
    header = tuple(str(c).strip() if c is not None else "" for c in header)
    while header and not header[-1]:
        header = header[:-1]
    if not header or header[0] != TIME_COLUMN or len(header) != 1 + columns:
        raise DataError(
            path, f"header must be '{TIME_COLUMN}' and {columns} signal column(s), got {list(header)[:6]}", head_line
        )
    body = rows[1:]
    if not body and not may_be_empty:
        raise DataError(path, "no samples", head_line)
    table = np.empty((len(body), 1 + columns))
    lines = np.empty(len(body), dtype=np.int64)
    for k, (line, row) in enumerate(body):
        cells = tuple(row[: 1 + columns])
        if (
            len(cells) < 1 + columns
            or any(c is None for c in cells)
            or any(c not in (None, "") for c in row[1 + columns :])
        ):
            raise DataError(path, f"expected {1 + columns} values ({', '.join(header)})", line)
        table[k] = [_float(c, path, line, name) for c, name in zip(cells, header)]
        lines[k] = line
    bad = np.flatnonzero(table[:, 0] < 0)
    if bad.size:
        raise DataError(path, f"{TIME_COLUMN} must be >= 0, got {table[bad[0], 0]:g}", int(lines[bad[0]]))
    return NOMINAL_START_S + table[:, 0], (table[:, 1:] if columns > 1 else table[:, 1]), lines


def anxiety_label(score: float) -> str:
    """The paper's cut-off (section 5.3): 20-37 no or low anxiety, above 37 high."""
    return "low" if score <= STAI_LOW_MAX else "high"


def read_stai(path: Path) -> dict[str, float]:
    """``'P001' -> STAI state score`` from a ``<SESSION>_afterPPT.xlsx`` self-report workbook."""
    rows = _sheet_rows(path)
    if not rows:
        raise DataError(path, "empty sheet: expected a header row with PID and STAI State Score", 1)
    head_line, header = rows[0]
    names = [str(c).strip() if c is not None else "" for c in header]
    for col in ("PID", STAI_COLUMN):
        if col not in names:
            raise DataError(path, f"header lacks column {col!r}", head_line)
    cp, cs = names.index("PID"), names.index(STAI_COLUMN)
    out: dict[str, float] = {}
    for line, row in rows[1:]:
        pid = row[cp] if cp < len(row) else None
        if isinstance(pid, (int, float)) and not isinstance(pid, bool) and float(pid).is_integer():
            pid = f"P{int(pid):03d}"
        if not isinstance(pid, str) or not _PID.match(pid.strip()):
            raise DataError(path, f"PID must be like P001 (or 1), got {pid!r}"[:100], line)
        score = _float(row[cs] if cs < len(row) else None, path, line, STAI_COLUMN)
        if not STAI_RANGE[0] <= score <= STAI_RANGE[1]:
            raise DataError(path, f"STAI state score {score:g} is outside {STAI_RANGE[0]}-{STAI_RANGE[1]}", line)
        if pid.strip() in out:
            raise DataError(path, f"{pid.strip()} listed twice", line)
        out[pid.strip()] = score
    return out


def read_session(folder: Path, pid: str, session: str, score: float | None) -> Recording:
    signals: dict[str, Signal] = {}
    for modality, kind in _STREAMS.items():
        f = folder / f"E4_{kind}_{STAGE}.xlsx"
        if f.is_file():
            times, values, lines = _stage_table(f, 3 if modality == "acc" else 1)
            signals[modality] = grid_signal(modality, times, values, str(f), lines)
    if not any(m in signals for m in ("acc", "bvp", "eda", "temp")):
        raise DataError(folder, f"no VerBIO E4 workbook here: none of E4_EDA_{STAGE}.xlsx, E4_BVP_{STAGE}.xlsx, ...")
    ibi_t = ibi = np.zeros(0)
    if (f := folder / f"E4_IBI_{STAGE}.xlsx").is_file():
        ibi_t, ibi, lines = _stage_table(f, 1, may_be_empty=True)
        bad = np.flatnonzero(ibi <= 0)
        if bad.size:
            raise DataError(f, f"an interval must be > 0 s, got {ibi[bad[0]]:g}", int(lines[bad[0]]))
        order = np.argsort(ibi_t, kind="stable")
        ibi_t, ibi = ibi_t[order], ibi[order]
    rec = Recording(device=f"verbio-{pid}-{session}", source=str(folder), signals=signals, ibi_t_s=ibi_t, ibi_s=ibi)
    if score is None:
        return rec
    label = LabelInterval(start_s=rec.start_s, end_s=rec.end_s, task="anxiety", label=anxiety_label(score))
    return Recording(device=rec.device, source=rec.source, signals=signals, ibi_t_s=ibi_t, ibi_s=ibi, labels=(label,))


def _participants(root: Path) -> list[Path]:
    return sorted(
        p for p in root.iterdir() if p.is_dir() and _PID.match(p.name) and any((p / s).is_dir() for s in SESSIONS)
    )


def is_verbio(path: Path) -> bool:
    """The VerBIO root (``P###/PRE|POST`` folders) or one participant's folder."""
    if not path.is_dir():
        return False
    if _PID.match(path.name) and any((path / s).is_dir() for s in SESSIONS):
        return True
    return bool(_participants(path))


def read_verbio(path: str | Path) -> list[Recording]:
    """The PRE and POST presentations of every participant under ``path`` (the root or one ``P###``)."""
    path = Path(path)
    if not is_verbio(path):
        raise DataError(path, "not a VerBIO folder: no P###/PRE or P###/POST session folders")
    people, root = ([path], path.parent) if _PID.match(path.name) else (_participants(path), path)
    scores: dict[str, dict[str, float]] = {}
    for session in SESSIONS:
        f = root / session / "Self_Reports" / f"{session}_afterPPT.xlsx"
        scores[session] = read_stai(f) if f.is_file() else {}
    out = []
    for person in people:
        for session in SESSIONS:
            folder = person / session
            if folder.is_dir() and any(folder.glob(f"E4_*_{STAGE}.xlsx")):
                out.append(read_session(folder, person.name, session, scores[session].get(person.name)))
    if not out:
        raise DataError(path, f"no session holds E4 workbooks of the presentation (E4_*_{STAGE}.xlsx)")
    return out


__all__ = ["NOMINAL_START_S", "STAI_LOW_MAX", "anxiety_label", "is_verbio", "read_stai", "read_verbio"]
