"""E4 Connect CSV exports (a folder or a zip, e.g. WESAD's ``SX_E4_Data.zip``), read and written.

Format (e4-facts.md section 3): no column headers; periodic files start with the start
time (Unix s, UTC) and the rate (Hz), one value per column; ``IBI.csv`` starts with
``<start>, IBI`` and then holds ``offset_s,ibi_s`` rows (rejected beats leave gaps);
``tags.csv`` holds one Unix time per button press and may be empty. Each file keeps
its own start and rate. ``labels.csv`` (``start,end,task,label``) is m3sense's ground
truth companion, the format of the shared WESAD recordings.

Every error names the file and, where one is to blame, the line (1-based). What is read is
also checked for plausibility, so that a damaged file fails here, before anything is published,
rather than hanging the replay clock or failing half-way: start times within 2000–2100, rates
within ``e4.RATE_FACTOR`` of the E4's own, finite values, IBI beats and tags inside the
recording, and no file (or zip member, by its directory entry) over :data:`MAX_FILE_BYTES`.
"""

from __future__ import annotations

import io
import math
import re
import zipfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath

import numpy as np

from common.errors import DataError
from e4 import RATE_FACTOR, rate_is_plausible
from replay.recording import PERIODIC, LabelInterval, Recording, Signal

FILES = {"acc": "ACC.csv", "bvp": "BVP.csv", "eda": "EDA.csv", "temp": "TEMP.csv", "hr": "HR.csv"}
SIGNAL_FILES = ("ACC.csv", "BVP.csv", "EDA.csv", "TEMP.csv")
_COLUMNS = {"acc": 3}
#: decimals the real exports print, so written values read back identical
_DECIMALS = {"bvp": 2, "eda": 6, "temp": 2, "hr": 2}
_STAMP = re.compile(r"_?E4_Data$", re.IGNORECASE)
#: Start times an E4 session can have (Unix s): 2000-01-01 to 2100-01-01. Outside them a replay
#: at real speed would wait for decades; inside, the timestamps are the files' own.
MIN_START_S, MAX_START_S = 946_684_800.0, 4_102_444_800.0
#: The largest file read (bytes). An E4 holds at most about 60 h, whose BVP.csv is about 110 MB;
#: parsing takes several times a file's size in memory, so a 1 GiB file would take gigabytes.
MAX_FILE_BYTES = 192 * 2**20
#: How far (s) beats and tags may lie outside the recording's signals.
_EDGE_S = 60.0


def _numbers(text: str, path: str, first_line: int, columns: int) -> np.ndarray:
    """Rows of ``columns`` comma-separated numbers; fast path, then a slow scan to blame a line."""
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    try:
        values = np.array(",".join(lines).split(","), dtype=np.float64) if lines else np.zeros(0)
        if values.size == len(lines) * columns:
            finite = np.isfinite(values)
            if not finite.all():
                row = int(np.flatnonzero(~finite)[0]) // columns
                raise DataError(path, f"not a finite number: {lines[row].strip()[:60]!r}", first_line + row)
            return values.reshape(len(lines), columns) if columns > 1 else values
    except ValueError:
        pass
    for i, line in enumerate(lines):
        cells = line.split(",")
        if len(cells) != columns:
            raise DataError(
                path, f"expected {columns} comma-separated values, got {line.strip()[:60]!r}", first_line + i
            )
        for cell in cells:
            try:
                float(cell)
            except ValueError:
                raise DataError(path, f"not a number: {cell.strip()[:40]!r}", first_line + i) from None
    raise DataError(path, "unreadable rows")  # pragma: no cover - the scan always finds the culprit


def _header_value(cells: list[str], path: str, line: int, what: str) -> float:
    try:
        values = {float(c) for c in cells}
    except ValueError:
        raise DataError(path, f"{what} must be a number, got {','.join(cells).strip()[:60]!r}", line) from None
    if len(values) != 1 or not all(math.isfinite(v) for v in values):
        raise DataError(path, f"{what} must be one finite value repeated per column, got {sorted(values)}", line)
    return values.pop()


def _start_time(cells: list[str], path: str, line: int) -> float:
    t0 = _header_value(cells, path, line, "start time")
    if not MIN_START_S <= t0 < MAX_START_S:
        raise DataError(path, f"start time {t0:g} is not a Unix time between 2000 and 2100", line)
    return t0


def parse_periodic(text: str, path: str, modality: str) -> Signal:
    columns = _COLUMNS.get(modality, 1)
    head = text.split("\n", 2)
    if len(head) < 2 or not head[0].strip():
        raise DataError(path, "empty file: an E4 export starts with the start time and the sample rate")
    start_cells, rate_cells = head[0].split(","), head[1].split(",")
    if len(start_cells) != columns or len(rate_cells) != columns:
        raise DataError(path, f"header rows must have {columns} column(s)", 1 if len(start_cells) != columns else 2)
    t0 = _start_time(start_cells, path, 1)
    fs = _header_value(rate_cells, path, 2, "sample rate")
    if fs <= 0:
        raise DataError(path, f"sample rate must be positive, got {fs}", 2)
    if not rate_is_plausible(modality, fs):
        raise DataError(
            path,
            f"sample rate {fs} Hz is no E4 {modality.upper()} rate (its own is "
            f"{PERIODIC[modality][0]:g} Hz; accepted within a factor {RATE_FACTOR:g})",
            2,
        )
    values = _numbers(head[2] if len(head) > 2 else "", path, 3, columns)
    dtype = PERIODIC[modality][1]
    if dtype is np.int16 and values.size and (np.any(values != np.round(values)) or np.abs(values).max() > 32767):
        raise DataError(path, "ACC values must be integer counts (1/64 g)")
    return Signal(modality=modality, t0_s=t0, fs_hz=fs, values=values.astype(dtype))


def parse_ibi(text: str, path: str) -> tuple[float, np.ndarray, np.ndarray]:
    """``(start_s, beat_times_s, ibi_s)``; beat times are absolute."""
    head = text.split("\n", 1)
    cells = head[0].split(",")
    if not head[0].strip() or len(cells) != 2 or cells[1].strip().upper() != "IBI":
        raise DataError(path, f"first row must be '<start>, IBI', got {head[0].strip()[:60]!r}", 1)
    t0 = _start_time(cells[:1], path, 1)
    rows = _numbers(head[1] if len(head) > 1 else "", path, 2, 2).reshape(-1, 2)
    bad = np.flatnonzero((rows[:, 0] < 0) | (rows[:, 1] <= 0))
    if bad.size:
        raise DataError(path, f"offset and interval must be >= 0 and > 0, got {rows[bad[0]].tolist()}", 2 + int(bad[0]))
    return t0, t0 + rows[:, 0], rows[:, 1]


def parse_tags(text: str, path: str) -> np.ndarray:
    return _numbers(text, path, 1, 1)


def parse_labels(text: str, path: str, span: tuple[float, float] | None = None) -> tuple[LabelInterval, ...]:
    """The intervals; with ``span`` (the recording's start and end), each must start within it
    (give or take :data:`_EDGE_S`): replay publishes a label at its start, so one far outside
    would hold the replay clock, and one outside the bus's time range would be dropped there."""
    lines = text.splitlines()
    if not lines or [c.strip() for c in lines[0].split(",")] != ["start", "end", "task", "label"]:
        raise DataError(path, "first row must be 'start,end,task,label'", 1)
    out = []
    for i, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != 4:
            raise DataError(path, f"expected start,end,task,label, got {line.strip()[:60]!r}", i)
        try:
            start, end = float(cells[0]), float(cells[1])
        except ValueError:
            raise DataError(path, f"start and end must be Unix seconds, got {cells[0]!r}, {cells[1]!r}", i) from None
        if not (math.isfinite(start) and math.isfinite(end) and end > start):
            raise DataError(path, f"interval must have finite start < end, got {start}, {end}", i)
        if not cells[2] or not cells[3]:
            raise DataError(path, "task and label must not be empty", i)
        if span is not None and not span[0] - _EDGE_S <= start <= span[1] + _EDGE_S:
            raise DataError(
                path,
                f"interval starting at {start:.3f} s is outside the recording ({span[0]:.3f} to {span[1]:.3f} s)",
                i,
            )
        out.append(LabelInterval(start_s=start, end_s=end, task=cells[2], label=cells[3]))
    return tuple(out)


def device_name(path: Path) -> str:
    """``S2_E4_Data.zip`` → ``S2``; a folder keeps its name; unsafe characters become ``_``."""
    stem = path.stem if path.suffix.lower() == ".zip" else path.name
    stem = _STAMP.sub("", stem) or stem
    return re.sub(r"[^A-Za-z0-9_.:\-]", "_", stem)[:64] or "e4"


#: What opening or inflating a damaged, encrypted or oddly compressed zip member raises.
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, OSError)


def _check_size(size: int, where: str) -> None:
    if size > MAX_FILE_BYTES:
        raise DataError(
            where,
            f"{size / 2**20:.0f} MiB, more than any E4 session writes "
            f"(at most {MAX_FILE_BYTES / 2**20:.0f} MiB per file are read)",
        )


def _reader(path: Path) -> tuple[Callable[[str], str | None], str]:
    """A function mapping an E4 file name to its text (None if absent), and how to name files in errors."""
    if path.is_dir():

        def read_dir(name: str) -> str | None:
            f = path / name
            if not f.is_file():
                return None
            _check_size(f.stat().st_size, str(f))
            return f.read_text(encoding="utf-8-sig", errors="replace")

        return read_dir, str(path)
    try:
        archive = zipfile.ZipFile(path)
    except _ZIP_ERRORS as exc:
        raise DataError(path, f"not a readable zip ({exc})") from None
    members = {PurePosixPath(n).name: n for n in archive.namelist() if not n.endswith("/")}

    def read_zip(name: str) -> str | None:
        member = members.get(name)
        if member is None:
            return None
        _check_size(archive.getinfo(member).file_size, f"{path}!{name}")  # the directory's word: nothing inflated yet
        try:
            with archive.open(member) as fh:  # and reading stops at that size, whatever the data holds
                return io.TextIOWrapper(fh, encoding="utf-8-sig", errors="replace").read()
        except _ZIP_ERRORS as exc:  # found by fuzzing: a damaged member raised from zipfile or zlib
            raise DataError(f"{path}!{name}", f"damaged zip member ({exc})") from None

    return read_zip, f"{path}!"


def is_e4_export(path: Path) -> bool:
    if path.is_dir():
        return any((path / f).is_file() for f in SIGNAL_FILES)
    if path.suffix.lower() == ".zip" and zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                names = {PurePosixPath(n).name for n in z.namelist()}
        except _ZIP_ERRORS:
            return True  # a damaged zip: reading it says so, naming it
        return any(f in names for f in SIGNAL_FILES)
    return False


def read_e4_export(path: str | Path, device: str | None = None) -> Recording:
    """Read one export (folder or zip) with its ``labels.csv`` if present.

    Raises :class:`DataError` naming the file and line for anything malformed, and for
    a folder or zip that holds none of ACC/BVP/EDA/TEMP.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(path, "no such file or folder")
    read, where = _reader(path)
    name = (lambda f: str(path / f)) if path.is_dir() else (lambda f: f"{where}{f}")
    signals: dict[str, Signal] = {}
    for modality, fname in FILES.items():
        text = read(fname)
        if text is not None:
            signals[modality] = parse_periodic(text, name(fname), modality)
    if not any(m in signals for m in ("acc", "bvp", "eda", "temp")):
        raise DataError(path, f"no E4 export here: none of {', '.join(SIGNAL_FILES)} found")
    ibi_t = ibi = np.zeros(0)
    if (text := read("IBI.csv")) is not None and text.strip():
        _, ibi_t, ibi = parse_ibi(text, name("IBI.csv"))
    tags = parse_tags(text, name("tags.csv")) if (text := read("tags.csv")) is not None else np.zeros(0)
    start = min(sig.t0_s for sig in signals.values())
    end = max(sig.t0_s + len(sig.values) / sig.fs_hz for sig in signals.values())
    labels = parse_labels(text, name("labels.csv"), (start, end)) if (text := read("labels.csv")) is not None else ()
    _inside(ibi_t, start, end, name("IBI.csv"), 2, "beat")
    _inside(tags, start, end, name("tags.csv"), 1, "button press")
    return Recording(
        device=device or device_name(path),
        source=str(path),
        signals=signals,
        ibi_t_s=ibi_t,
        ibi_s=ibi,
        tags_s=tags,
        labels=labels,
    )


def _inside(times: np.ndarray, start: float, end: float, path: str, first_line: int, what: str) -> None:
    """Events must fall within the recording (give or take :data:`_EDGE_S`): one far outside
    would hold the replay clock for as long."""
    out = np.flatnonzero((times < start - _EDGE_S) | (times > end + _EDGE_S))
    if out.size:
        raise DataError(
            path,
            f"{what} at {times[out[0]]:.3f} s is outside the recording ({start:.3f} to {end:.3f} s)",
            first_line + int(out[0]),
        )


def find_exports(path: str | Path) -> list[Path]:
    """The exports under ``path``: itself if it is one, else its sub-folders and zips that are."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "no such file or folder")
    if is_e4_export(path):
        return [path]
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if is_e4_export(p))
        if found:
            return found
    raise DataError(path, f"no E4 export here: none of {', '.join(SIGNAL_FILES)} in it or in its sub-folders or zips")


def read_source(path: str | Path) -> list[Recording]:
    """Every recording of a source (one export, or a folder of them, or a data set in its original
    layout: see :mod:`replay.layouts`); all read before any is used, so a bad file anywhere fails
    the whole source before anything is published."""
    from replay.layouts import read_layout

    recordings = read_layout(path)
    seen: set[str] = set()
    for rec in recordings:
        if rec.device in seen:
            raise DataError(path, f"two recordings map to device id {rec.device!r}")
        seen.add(rec.device)
    return recordings


INFO_TXT = """.csv files in this archive are in the following format:
The first row is the initial time of the session expressed as unix timestamp in UTC.
The second row is the sample rate expressed in Hz.

TEMP.csv
Data from temperature sensor expressed degrees on the Celsius (°C) scale.

EDA.csv
Data from the electrodermal activity sensor expressed as microsiemens (μS).

BVP.csv
Data from photoplethysmograph.

ACC.csv
Data from 3-axis accelerometer sensor. The accelerometer is configured to measure acceleration in the range [-2g, 2g]. Therefore the unit in this file is 1/64g.
Data from x, y, and z axis are respectively in first, second, and third column.

IBI.csv
Time between individuals heart beats extracted from the BVP signal.
No sample rate is needed for this file.
The first column is the time (respect to the initial time) of the detected inter-beat interval expressed in seconds (s).
The second column is the duration in seconds (s) of the detected inter-beat interval (i.e., the distance in seconds from the previous beat).

HR.csv
Average heart rate extracted from the BVP signal.The first row is the initial time of the session expressed as unix timestamp in UTC.
The second row is the sample rate expressed in Hz.


tags.csv
Event mark times.
Each row corresponds to a physical button press on the device; the same time as the status LED is first illuminated.
The time is expressed as a unix timestamp in UTC and it is synchronized with initial time of the session indicated in the related data files from the corresponding session.
"""  # noqa: E501 -- Empatica's info.txt, verbatim


def _rows(values: np.ndarray, decimals: int | None) -> Iterable[str]:
    if decimals is None:
        return (",".join(str(int(v)) for v in row) for row in values.reshape(len(values), -1))
    return (f"{v:.{decimals}f}" for v in values)


def write_e4_export(rec: Recording, folder: str | Path) -> Path:
    """Write ``rec`` as an E4 Connect folder (+ ``labels.csv`` if it has labels).

    Values are printed with the decimals of real exports; what :func:`read_e4_export`
    returns from the folder is what the files say, which tests compare against.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for modality, fname in FILES.items():
        sig = rec.signals.get(modality)
        if sig is None:
            continue
        cols = _COLUMNS.get(modality, 1)
        head = [", ".join([f"{sig.t0_s:.6f}"] * cols), ", ".join([f"{sig.fs_hz:.6f}"] * cols)]
        decimals = None if modality == "acc" else _DECIMALS[modality]
        (folder / fname).write_text("\n".join([*head, *_rows(sig.values, decimals)]) + "\n")
    start = rec.start_s
    ibi_lines = [f"{start:.6f}, IBI"] + [f"{t - start:.6f},{v:.6f}" for t, v in zip(rec.ibi_t_s, rec.ibi_s)]
    (folder / "IBI.csv").write_text("\n".join(ibi_lines) + "\n")
    (folder / "tags.csv").write_text("".join(f"{t:.6f}\n" for t in rec.tags_s))
    (folder / "info.txt").write_text(INFO_TXT)
    if rec.labels:
        rows = ["start,end,task,label"] + [f"{iv.start_s:.3f},{iv.end_s:.3f},{iv.task},{iv.label}" for iv in rec.labels]
        (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder


__all__ = ["FILES", "device_name", "find_exports", "read_e4_export", "read_source", "write_e4_export"]
