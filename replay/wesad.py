"""WESAD (Schmidt et al., ICMI 2018) in its published layout, read into recordings.

Layout (e4-facts.md section 4): ``WESAD/SX/`` holds ``SX.pkl`` (the synchronised data and the
700 Hz protocol labels), ``SX_E4_Data.zip`` (the wristband's E4 Connect export) and
``SX_quest.csv`` (the protocol's phase times). ``SX.pkl`` is a Python 2 pickle of
``{'signal': {'chest': {...}, 'wrist': {'ACC', 'BVP', 'EDA', 'TEMP'}}, 'label': ..., 'subject': 'SX'}``;
wrist arrays are at 32/64/4/4 Hz and share t = 0 with the labels.

Why a restricted unpickler: a pickle can name any importable callable and have it called while
loading (``os.system`` included). :class:`ArraysOnly` resolves only numpy's array and dtype
reconstruction and refuses every other name before anything runs; what it returns is then checked
to be nothing but dicts, lists, tuples, strings, numbers and numeric arrays.

Labels are the paper's (section 5.3: WESAD's own): protocol codes 1 baseline, 2 stress,
3 amusement, 4 meditation become ``stress``-task intervals; 0 and 5-7 are left unlabelled. Runs
of the 700 Hz array are turned into intervals by time, never resampled.

The pickle carries no clock. With ``SX_E4_Data.zip`` beside it, the pickle's wrist arrays are
found inside the export's (they are cut from it) and the recording is the export itself, with the
labels placed on its clock; without the zip the pickle's wrist arrays are the signals and t = 0 is
:data:`NOMINAL_START_S`. ``SX_quest.csv`` is checked against the labels: each labelled run must
overlap a protocol phase of its condition, so a file of another subject does not pass unnoticed.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import replace
from pathlib import Path

import numpy as np

from common.errors import DataError
from e4 import RATES_HZ
from replay.e4csv import device_name, read_e4_export
from replay.recording import LabelInterval, Recording, Signal

LABEL_HZ = 700.0
PROTOCOL = {1: "baseline", 2: "stress", 3: "amusement", 4: "meditation"}  # 0, 5, 6, 7: not used
WRIST = {name: (m, RATES_HZ[m]) for name, m in (("ACC", "acc"), ("BVP", "bvp"), ("EDA", "eda"), ("TEMP", "temp"))}
#: Where t = 0 of a pickle read without its E4 export is put (2017-05-22 00:00 UTC, the month
#: WESAD's first sessions were recorded): the pickle has no clock of its own.
NOMINAL_START_S = 1_495_411_200.0
#: The largest pickle read (bytes): S2's arrays (chest at 700 Hz included) take about 300 MiB in a
#: binary pickle, more in a text one; loading takes about the arrays' size in memory.
MAX_PKL_BYTES = 2 * 2**30
#: ``SX_quest.csv`` phase names of the labelled conditions.
QUEST_PHASES = {
    "Base": "baseline",
    "TSST": "stress",
    "Fun": "amusement",
    "Medi 1": "meditation",
    "Medi 2": "meditation",
}
_QUEST_BYTES = 1 * 2**20
_TOLERANCE = {"eda": 5e-6, "bvp": 0.006, "acc": 0.0, "temp": 0.006}


class Refused(Exception):
    """The pickle names something other than numpy array reconstruction."""


def _allowed() -> dict[tuple[str, str], object]:
    import codecs

    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar  # type: ignore[no-redef]
    found: dict[tuple[str, str], object] = {}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        found[(module, "_reconstruct")] = _reconstruct
        found[(module, "scalar")] = scalar
    found[("numpy", "ndarray")] = np.ndarray
    found[("numpy", "dtype")] = np.dtype
    found[("_codecs", "encode")] = codecs.encode  # how protocol 2 writes bytes from Python 3
    return found


class ArraysOnly(pickle.Unpickler):
    """An unpickler that resolves only numpy's array/dtype reconstruction (see module docstring)."""

    _ALLOWED: dict[tuple[str, str], object] | None = None

    def find_class(self, module: str, name: str) -> object:
        if ArraysOnly._ALLOWED is None:
            ArraysOnly._ALLOWED = _allowed()
        found = ArraysOnly._ALLOWED.get((module, name))
        if found is None:
            raise Refused(f"{module}.{name}")
        return found

    def persistent_load(self, pid: object) -> object:
        raise Refused("a persistent reference")


def _plain(obj: object, where: str = "") -> str | None:
    """Where ``obj`` holds something other than plain containers and numeric arrays (None if nowhere)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, bytes, int)):
                return f"{where}[{type(k).__name__} key]"
            if (bad := _plain(v, f"{where}[{k!r}]")) is not None:
                return bad
        return None
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            if (bad := _plain(v, f"{where}[{i}]")) is not None:
                return bad
        return None
    if isinstance(obj, np.ndarray):
        return None if obj.dtype.kind in "biuf" else f"{where} (an array of {obj.dtype})"
    if obj is None or isinstance(obj, (str, bytes, bool, int, float, np.generic)):
        return None if not isinstance(obj, np.generic) or obj.dtype.kind in "biuf" else f"{where}"
    return f"{where} (a {type(obj).__name__})"


def load_pickle(path: Path) -> object:
    """The pickle's content, if it is only arrays and plain containers; refused otherwise."""
    size = path.stat().st_size
    if size > MAX_PKL_BYTES:
        raise DataError(
            path,
            f"{size / 2**20:.0f} MiB, more than a WESAD SX.pkl holds "
            f"(at most {MAX_PKL_BYTES / 2**20:.0f} MiB are read)",
        )
    with path.open("rb") as fh:
        try:
            obj = ArraysOnly(fh, encoding="latin1").load()
        except Refused as exc:
            raise DataError(
                path,
                f"refused: the pickle asks for {exc} at byte {fh.tell()}; only numpy arrays "
                "and plain containers are read (nothing in it was run)",
            ) from None
        except (
            pickle.UnpicklingError,
            EOFError,
            ValueError,
            TypeError,
            AttributeError,
            IndexError,
            KeyError,
            MemoryError,
            OverflowError,
            UnicodeDecodeError,
        ) as exc:
            raise DataError(
                path, f"not a readable pickle at byte {fh.tell()} ({type(exc).__name__}: {str(exc)[:80]})"
            ) from None
    if (bad := _plain(obj)) is not None:
        raise DataError(path, f"refused: {bad or 'the top level'} is neither a plain container nor a numeric array")
    return obj


def _get(d: object, key: str, path: Path, where: str) -> object:
    if not isinstance(d, dict) or key not in d:
        raise DataError(path, f"no {where}[{key!r}] (expected WESAD's {{'signal': {{'wrist': ...}}, 'label': ...}})")
    return d[key]


def _wrist(data: dict, path: Path) -> dict[str, np.ndarray]:
    wrist = _get(_get(data, "signal", path, ""), "wrist", path, "['signal']")
    out = {}
    for key, (modality, _) in WRIST.items():
        a = _get(wrist, key, path, "['signal']['wrist']")
        if not isinstance(a, np.ndarray):
            raise DataError(path, f"['signal']['wrist'][{key!r}] is not an array")
        width = 3 if modality == "acc" else 1
        if a.ndim == 2 and a.shape[1] == width:
            a = a if width == 3 else a[:, 0]
        elif not (a.ndim == 1 and width == 1):
            raise DataError(path, f"['signal']['wrist'][{key!r}] has shape {a.shape}, expected (n, {width})")
        a = a.astype(np.float64)
        if a.size and not np.isfinite(a).all():
            raise DataError(path, f"['signal']['wrist'][{key!r}] holds a value that is not finite")
        out[modality] = a
    acc = out["acc"]
    if acc.size and (np.any(acc != np.round(acc)) or np.abs(acc).max() > 32767):
        raise DataError(path, "['signal']['wrist']['ACC'] must hold E4 counts (1/64 g, whole numbers)")
    return out


def _labels(data: dict, path: Path, wrist: dict[str, np.ndarray]) -> np.ndarray:
    label = _get(data, "label", path, "")
    if not isinstance(label, np.ndarray) or label.ndim != 1 or label.dtype.kind not in "iuf":
        raise DataError(path, "['label'] must be a 1-D array of protocol codes at 700 Hz")
    codes = label.astype(np.float64)
    bad = np.flatnonzero(~np.isin(codes, np.arange(8)))
    if bad.size:
        raise DataError(path, f"['label'][{int(bad[0])}] is {label[bad[0]].item()!r}, not a protocol code 0-7")
    duration = codes.size / LABEL_HZ
    for key, (modality, fs) in WRIST.items():
        if abs(len(wrist[modality]) / fs - duration) > 1.0:
            raise DataError(
                path,
                f"['signal']['wrist'][{key!r}] lasts {len(wrist[modality]) / fs:.1f} s but "
                f"['label'] {duration:.1f} s: they should share t = 0 and the end",
            )
    return codes.astype(np.int8)


def label_intervals(codes: np.ndarray, t0_s: float) -> tuple[LabelInterval, ...]:
    """Runs of protocol codes 1-4 as ``stress``-task intervals; 0 and 5-7 give none."""
    if codes.size == 0:
        return ()
    edges = np.flatnonzero(np.diff(codes)) + 1
    starts = np.concatenate([[0], edges])
    ends = np.concatenate([edges, [codes.size]])
    return tuple(
        LabelInterval(
            start_s=t0_s + s / LABEL_HZ, end_s=t0_s + e / LABEL_HZ, task="stress", label=PROTOCOL[int(codes[s])]
        )
        for s, e in zip(starts.tolist(), ends.tolist())
        if int(codes[s]) in PROTOCOL
    )


def _minutes_seconds(cell: str, path: Path, line: int) -> float:
    """``7.08`` is 7 min 08 s and ``50.3`` is 50 min 30 s (WESAD's minutes.seconds)."""
    m = re.fullmatch(r"(\d+)(?:\.(\d{1,2}))?", cell.strip())
    if not m or int((m.group(2) or "0").ljust(2, "0")) >= 60:
        raise DataError(path, f"{cell.strip()[:20]!r} is not a minutes.seconds time", line)
    return int(m.group(1)) * 60.0 + int((m.group(2) or "0").ljust(2, "0"))


def read_quest(path: Path) -> list[tuple[str, float, float]]:
    """``(phase, start_s, end_s)`` from the ``# ORDER`` / ``# START`` / ``# END`` rows, seconds from
    the chest device's start (the pickle's t = 0)."""
    size = path.stat().st_size
    if size > _QUEST_BYTES:
        raise DataError(path, f"{size} bytes, far more than a questionnaire file holds")
    rows: dict[str, tuple[int, list[str]]] = {}
    for i, line in enumerate(path.read_text(encoding="utf-8-sig", errors="replace").splitlines(), start=1):
        cells = line.split(";")
        key = cells[0].strip().lstrip("#").strip().upper()
        if key in ("ORDER", "START", "END") and key not in rows:
            rows[key] = (i, cells[1:])
    for key in ("ORDER", "START", "END"):
        if key not in rows:
            raise DataError(path, f"no '# {key};...' row (WESAD's protocol rows are # ORDER, # START, # END)")
    names = rows["ORDER"][1]
    names = [n.strip() for n in names]
    while names and not names[-1]:
        names.pop()
    phases = []
    for j, name in enumerate(names):
        times: list[float] = []
        for key in ("START", "END"):
            line_no, values = rows[key]
            if j >= len(values) or not values[j].strip():
                raise DataError(path, f"phase {name!r} has no {key} time", line_no)
            times.append(_minutes_seconds(values[j], path, line_no))
        if times[1] <= times[0]:
            raise DataError(
                path, f"phase {name!r} ends ({times[1]:g} s) before it starts ({times[0]:g} s)", rows["END"][0]
            )
        phases.append((name, times[0], times[1]))
    return phases


def _check_quest(quest: Path, codes: np.ndarray) -> None:
    phases = read_quest(quest)
    for iv in label_intervals(codes, 0.0):
        if not any(QUEST_PHASES.get(n) == iv.label and s < iv.end_s and iv.start_s < e for n, s, e in phases):
            raise DataError(
                quest,
                f"no {iv.label} phase overlaps the pickle's {iv.label} labels at "
                f"{iv.start_s:.0f}-{iv.end_s:.0f} s: is this the same subject's file?",
            )


def _find(part: np.ndarray, whole: np.ndarray, tol: float) -> list[int]:
    """Offsets at which ``part`` lies inside ``whole`` (element-wise within ``tol``)."""
    m = len(part)
    if m == 0 or m > len(whole):
        return []
    head = min(m, 64)
    hits = np.flatnonzero(np.abs(whole[: len(whole) - m + 1] - part[0]) <= tol)
    found = []
    for j in hits.tolist():
        if np.all(np.abs(whole[j : j + head] - part[:head]) <= tol) and np.all(np.abs(whole[j : j + m] - part) <= tol):
            found.append(j)
            if len(found) > 1:
                break
    return found


def _on_export_clock(wrist: dict[str, np.ndarray], export: Recording, pkl: Path, zip_path: Path) -> float:
    """The export time of the pickle's t = 0: where its wrist arrays sit inside the export's."""
    eda = export.signals.get("eda")
    if eda is None:
        raise DataError(zip_path, "no EDA.csv, so the pickle's wrist data cannot be placed on its clock")
    candidates = _find(wrist["eda"], eda.values.astype(np.float64), _TOLERANCE["eda"])
    for j in candidates:
        t0 = eda.t0_s + j / eda.fs_hz
        if all(_matches(wrist[m], export.signals.get(m), t0) for m in ("bvp", "acc")):
            return t0
    raise DataError(
        pkl,
        f"its wrist arrays are not found in {zip_path.name} (another subject's export, or an "
        f"edited file?); read the pickle alone with wesad:{pkl}",
    )


def _matches(part: np.ndarray, sig: Signal | None, t0: float) -> bool:
    if sig is None:
        return True
    k = (t0 - sig.t0_s) * sig.fs_hz
    j = round(k)
    if abs(k - j) > 1e-6 or j < 0 or j + len(part) > sig.n:
        return False
    return bool(np.all(np.abs(sig.values[j : j + len(part)].astype(np.float64) - part) <= _TOLERANCE[sig.modality]))


def read_subject(path: str | Path) -> Recording:
    """One subject: a folder ``SX/`` (``SX.pkl`` with, when there, ``SX_E4_Data.zip`` and
    ``SX_quest.csv``) or an ``SX.pkl`` on its own."""
    path = Path(path)
    if path.is_dir():
        pkl = path / f"{path.name}.pkl"
        folder, alone = path, False
    else:
        pkl, folder, alone = path, path.parent, True
    if not pkl.is_file():
        raise DataError(pkl, "no such file (a WESAD subject folder SX/ holds SX.pkl)")
    data = load_pickle(pkl)
    if not isinstance(data, dict):
        raise DataError(pkl, f"holds a {type(data).__name__}, not WESAD's dict of 'signal', 'label', 'subject'")
    wrist = _wrist(data, pkl)
    codes = _labels(data, pkl, wrist)
    subject = data.get("subject")
    subject = subject.decode("latin-1") if isinstance(subject, bytes) else subject
    device = device_name(Path(subject)) if isinstance(subject, str) and subject else device_name(Path(pkl.stem))
    quest = folder / f"{pkl.stem}_quest.csv"
    if quest.is_file():
        _check_quest(quest, codes)
    zip_path = folder / f"{pkl.stem}_E4_Data.zip"
    if not alone and zip_path.is_file():
        export = read_e4_export(zip_path, device=device)
        t0 = _on_export_clock(wrist, export, pkl, zip_path)
        return replace(export, source=str(folder), labels=label_intervals(codes, t0))
    signals = {
        m: Signal(
            modality=m,
            t0_s=NOMINAL_START_S,
            fs_hz=WRIST[k][1],
            values=wrist[m].astype(np.int16) if m == "acc" else wrist[m],
        )
        for k, (m, _) in WRIST.items()
        if len(wrist[m])
    }
    if not signals:
        raise DataError(pkl, "its wrist arrays are empty")
    return Recording(device=device, source=str(pkl), signals=signals, labels=label_intervals(codes, NOMINAL_START_S))


def _subject_dirs(path: Path) -> list[Path]:
    return sorted(
        (p for p in path.iterdir() if p.is_dir() and (p / f"{p.name}.pkl").is_file()),
        key=lambda p: (len(p.name), p.name),
    )


def is_wesad(path: Path) -> bool:
    """An ``SX.pkl``, a subject folder holding one, or the ``WESAD/`` folder of subject folders."""
    if path.is_file():
        return path.suffix.lower() == ".pkl"
    return path.is_dir() and ((path / f"{path.name}.pkl").is_file() or bool(_subject_dirs(path)))


def read_wesad(path: str | Path) -> list[Recording]:
    path = Path(path)
    if not path.exists():
        raise DataError(path, "no such file or folder")
    if path.is_file() or (path / f"{path.name}.pkl").is_file():
        return [read_subject(path)]
    subjects = _subject_dirs(path)
    if not subjects:
        raise DataError(path, "no WESAD subject here: neither SX.pkl nor SX/SX.pkl folders")
    return [read_subject(p) for p in subjects]


__all__ = [
    "NOMINAL_START_S",
    "PROTOCOL",
    "ArraysOnly",
    "is_wesad",
    "label_intervals",
    "load_pickle",
    "read_quest",
    "read_subject",
    "read_wesad",
]
