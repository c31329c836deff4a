"""Small files in the data sets' original layouts (WESAD, K-EmoCon, VerBIO), written from code.

The data sets cannot be downloaded here, so these follow their published formats byte for byte
where the format is known (e4-facts.md sections 4-6): WESAD's Python 2 pickle (str opcodes,
``numpy.core.multiarray`` globals) and its ``;``-separated quest file, K-EmoCon's millisecond CSVs
with a device-serial column, VerBIO's ``Time (s)`` workbooks and STAI self-reports. Signals come
from the simulator so that windows made of them look like a wrist's.
"""

from __future__ import annotations

import io
import pickle
import shutil
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from replay.e4csv import read_e4_export, write_e4_export
from replay.simulate import simulate_recordings

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]


class Py2Pickler(pickle._Pickler):
    """Writes what Python 2's cPickle (protocol 2) writes for WESAD's dict: text and array bytes as
    ``str`` opcodes (read back with ``encoding='latin1'``), numpy globals under ``numpy.core``."""

    dispatch = pickle._Pickler.dispatch.copy()
    _GLOBALS: ClassVar[dict] = {
        _reconstruct: ("numpy.core.multiarray", "_reconstruct"),
        np.ndarray: ("numpy", "ndarray"),
        np.dtype: ("numpy", "dtype"),
    }

    if TYPE_CHECKING:  # the pure-Python pickler's undocumented internals used here (typeshed lists none)

        def write(self, data: bytes) -> None: ...
        def memoize(self, obj: object) -> None: ...

    def _py2_str(self, data: bytes) -> None:
        n = len(data)
        self.write(
            (pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + n.to_bytes(4, "little")) + data
        )

    def save_str(self, obj: str) -> None:
        self._py2_str(obj.encode("latin-1"))
        self.memoize(obj)

    def save_bytes(self, obj: bytes) -> None:
        self._py2_str(obj)
        self.memoize(obj)

    # typeshed types this table's callables as taking an Unpickler; the pure-Python pickler passes itself
    dispatch[str] = save_str  # type: ignore[assignment]
    dispatch[bytes] = save_bytes  # type: ignore[assignment]

    def save_global(self, obj: object, name: str | None = None) -> None:
        where = self._GLOBALS.get(obj)
        if where is None:
            return super().save_global(obj, name)  # type: ignore[misc]  # undocumented, so not in typeshed
        self.write(pickle.GLOBAL + f"{where[0]}\n{where[1]}\n".encode())
        self.memoize(obj)


def write_py2_pickle(obj: object, path: Path) -> Path:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    path.write_bytes(buf.getvalue())
    return path


# ---------------------------------------------------------------- WESAD

#: The protocol of the fixture subject: (start s, end s, code) from the pickle's t = 0.
WESAD_PROTOCOL = (
    (0, 10, 0),
    (10, 40, 1),
    (40, 45, 0),
    (45, 75, 2),
    (75, 78, 6),
    (78, 100, 3),
    (100, 115, 4),
    (115, 120, 0),
)
#: Where the pickle's t = 0 lies in the fixture's E4 export (s after the export's start).
WESAD_OFFSET_S = 60
WESAD_SECONDS = 120


def _quest(subject: str) -> str:
    """``SX_quest.csv`` as WESAD writes it: 26 ``;`` per row, minutes.seconds, then questionnaires."""

    def pad(cells: list[str]) -> str:
        return ";".join(cells + [""] * (27 - len(cells)))

    rows = [
        pad(["# Subj", subject]),
        pad(["# ORDER", "Base", "TSST", "Fun", "Medi 1", "sRead"]),
        pad(["# START", "0.10", "0.45", "1.18", "1.40", "1.56"]),  # 0:10, 0:45, 1:18, 1:40, 1:56
        pad(["# END", "0.40", "1.15", "1.40", "1.55", "1.59"]),
        pad([]),
        pad(["# PANAS", *"1132131112222143442221"]),
        pad([]),
        pad(["# STAI", *"321423"]),
        pad([]),
        pad(["# DIM", "7", "2"]),
        pad([]),
        pad(["# SSSQ", *"554435"]),
    ]
    return "\n".join(rows) + "\n"


def wesad_codes() -> np.ndarray:
    codes = np.zeros(WESAD_SECONDS * 700, dtype=np.int32)
    for start, end, code in WESAD_PROTOCOL:
        codes[start * 700 : end * 700] = code
    return codes


def write_wesad_subject(root: Path, subject: str = "S5", *, seed: int = 5, with_zip: bool = True) -> Path:
    """``root/SX/`` with ``SX.pkl``, ``SX_quest.csv`` and (``with_zip``) ``SX_E4_Data.zip``; the
    pickle's wrist arrays are the export's from :data:`WESAD_OFFSET_S` for :data:`WESAD_SECONDS`."""
    folder = root / subject
    folder.mkdir(parents=True)
    rec = simulate_recordings(
        minutes=(WESAD_OFFSET_S + WESAD_SECONDS + 60) / 60,
        seed=seed,
        labels="none",
        off_wrist=False,
        start_s=1_495_437_325.0,
    )[0]
    export_dir = root / f"_{subject}_export"
    write_e4_export(rec, export_dir)
    (export_dir / "labels.csv").unlink(missing_ok=True)
    export = read_e4_export(export_dir)  # what the files say, to the printed decimals
    with zipfile.ZipFile(folder / f"{subject}_E4_Data.zip", "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(export_dir.iterdir()):
            z.write(f, f.name)
    shutil.rmtree(export_dir)
    if not with_zip:
        (folder / f"{subject}_E4_Data.zip").unlink()
    wrist = {}
    for key, m in (("ACC", "acc"), ("BVP", "bvp"), ("EDA", "eda"), ("TEMP", "temp")):
        sig = export.signals[m]
        a = sig.values[int(WESAD_OFFSET_S * sig.fs_hz) : int((WESAD_OFFSET_S + WESAD_SECONDS) * sig.fs_hz)]
        wrist[key] = a.astype(np.float64) if m == "acc" else a.astype(np.float64).reshape(-1, 1)
    n = WESAD_SECONDS * 700
    rng = np.random.default_rng(seed)
    chest = {
        "ACC": rng.normal(0, 0.1, (n, 3)),
        "ECG": rng.normal(0, 1, (n, 1)),
        "EMG": rng.normal(0, 1, (n, 1)),
        "EDA": rng.normal(5, 1, (n, 1)),
        "Temp": rng.normal(33, 0.1, (n, 1)),
        "Resp": rng.normal(0, 1, (n, 1)),
    }
    write_py2_pickle(
        {"signal": {"chest": chest, "wrist": wrist}, "label": wesad_codes(), "subject": subject},
        folder / f"{subject}.pkl",
    )
    (folder / f"{subject}_quest.csv").write_text(_quest(subject))
    (folder / f"{subject}_readme.txt").write_text("### Personal information ###\nAge: 27\n")
    return folder


def wesad_export_start(folder: Path) -> float:
    """The E4 start time of the fixture's export (every file shares it)."""
    subject = folder.name
    with zipfile.ZipFile(folder / f"{subject}_E4_Data.zip") as z:
        return float(z.read("EDA.csv").decode().split("\n", 1)[0])


# ---------------------------------------------------------------- K-EmoCon

KEMOCON_ANNOTATION_HEADER = (
    "seconds,arousal,valence,cheerful,happy,angry,nervous,sad,boredom,confusion,delight,"
    "concentration,frustration,surprise,none_1,confrustion,contempt,dejection,disgust,"
    "eureka,pride,sorrow,none_2"
)
#: (arousal, valence) per 5 s of the fixture's debate.
KEMOCON_RATINGS = ((3, 3), (3, 4), (4, 3), (3, 3), (2, 4), (2, 2), (1, 5), (3, 2), (5, 5), (4, 4), (3, 3), (4, 4))


def _kemocon_e4(
    folder: Path,
    rec,
    serial: str,
    decoy: str | None = None,
    ibi_serial: str | None = None,
    ibi_decoy: str | None = None,
    duplicate_every: int = 50,
) -> None:
    """``E4_*.csv`` with one row per sample: ``timestamp`` in Unix ms, the value(s), ``device_serial``
    (K-EmoCon repeats a stamp now and then: every ``duplicate_every``-th row is written twice). A
    ``decoy`` wristband's rows (other values) come first, as in the participants with two."""
    folder.mkdir(parents=True, exist_ok=True)
    for m, name in (
        ("acc", "E4_ACC.csv"),
        ("bvp", "E4_BVP.csv"),
        ("eda", "E4_EDA.csv"),
        ("temp", "E4_TEMP.csv"),
        ("hr", "E4_HR.csv"),
    ):
        sig = rec.signals[m]
        stamps = np.round((sig.t0_s + np.arange(sig.n) / sig.fs_hz) * 1000).astype(np.int64)
        head = "timestamp,x,y,z,device_serial" if m == "acc" else "timestamp,value,device_serial"
        lines = [head]
        for who, shift in ((decoy, 7), (serial, 0)):
            if who is None:
                continue
            for k in range(sig.n):
                v = sig.values[k]
                cells = ",".join(str(int(x) + shift) for x in v) if m == "acc" else f"{v + shift:.6g}"
                lines.append(f"{stamps[k]},{cells},{who}")
                if k % duplicate_every == 7:
                    lines.append(f"{stamps[k]},{cells},{who}")
        (folder / name).write_text("\n".join(lines) + "\n")
    ibi = ["timestamp,value,device_serial"]
    for who, factor in ((ibi_decoy, 0.5), (ibi_serial or serial, 1.0)):
        if who is not None:
            ibi += [f"{round(t * 1000)},{v * factor:.6f},{who}" for t, v in zip(rec.ibi_t_s, rec.ibi_s)]
    (folder / "E4_IBI.csv").write_text("\n".join(ibi) + "\n")


def write_kemocon(root: Path, *, pids: tuple[int, ...] = (1, 31), seed: int = 9) -> dict[int, float]:
    """A K-EmoCon root; returns each participant's debate start (Unix s). Participant 31 has the
    real data set's two wristbands in every file."""
    recs = simulate_recordings(
        minutes=2, seed=seed, subjects=len(pids), labels="none", off_wrist=False, start_s=1_544_000_000.0
    )
    subjects = ["pid,initTime,startTime,endTime"]
    starts = {}
    for pid, rec in zip(pids, recs):
        init_ms = round(rec.start_s * 1000)
        start_ms = init_ms + 30_000
        end_ms = start_ms + 60_000  # a one-minute debate: 12 ratings of 5 s
        subjects.append(f"{pid},{init_ms},{start_ms},{end_ms}")
        starts[pid] = start_ms / 1000
        if pid == 31:  # the data set's two-wristband participant: signals of A013E1, beats of A01525
            _kemocon_e4(
                root / "raw" / "e4_data" / str(pid),
                rec,
                "A013E1",
                decoy="A01525",
                ibi_serial="A01525",
                ibi_decoy="A013E1",
            )
        else:
            _kemocon_e4(root / "raw" / "e4_data" / str(pid), rec, "A0143F")
        for kind, folder, shift in (
            ("self", "self_annotations", 0),
            ("partner", "partner_annotations", 1),
            ("external", "aggregated_external_annotations", 2),
        ):
            rows = [KEMOCON_ANNOTATION_HEADER]
            for i in range(len(KEMOCON_RATINGS)):
                a, v = KEMOCON_RATINGS[(i + shift) % len(KEMOCON_RATINGS)]
                rows.append(f"{5 * (i + 1)},{a},{v},1,2,1,1,1,,x,,,,,,,,,,,,,x")
            path = root / "raw" / "emotion_annotations" / folder / f"P{pid}.{kind}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(rows) + "\n")
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    (root / "metadata" / "subjects.csv").write_text("\n".join(subjects) + "\n")
    return starts


# ---------------------------------------------------------------- VerBIO


def _workbook(path: Path, header: list[str], rows) -> None:
    import openpyxl

    book = openpyxl.Workbook(write_only=True)  # streams rows: the fixture's many rows write quickly
    sheet = book.create_sheet("Sheet1")
    sheet.append(header)
    for row in rows:
        sheet.append(list(row))
    path.parent.mkdir(parents=True, exist_ok=True)
    book.save(path)


def write_verbio(root: Path, scores: Mapping[str, Mapping[str, float]], *, seconds: float = 60, seed: int = 3) -> None:
    """``root/P###/<SESSION>/E4_<TYPE>_PPT.xlsx`` for each participant and session in ``scores``,
    and ``root/<SESSION>/Self_Reports/<SESSION>_afterPPT.xlsx`` with their STAI state scores."""
    people = sorted({p for by in scores.values() for p in by})
    sessions = sorted(scores)
    recs = iter(
        simulate_recordings(
            minutes=seconds / 60, seed=seed, subjects=len(people) * len(sessions), labels="none", off_wrist=False
        )
    )
    for pid in people:
        for session in sessions:
            rec = next(recs)
            folder = root / pid / session
            for m, kind, cols in (
                ("eda", "EDA", ["EDA"]),
                ("bvp", "BVP", ["BVP"]),
                ("temp", "TEMP", ["TEMP"]),
                ("hr", "HR", ["HR"]),
                ("acc", "ACC", ["ACC_X", "ACC_Y", "ACC_Z"]),
            ):
                sig = rec.signals[m]
                t = np.arange(sig.n) / sig.fs_hz + (sig.t0_s - rec.start_s)
                values = sig.values.reshape(sig.n, -1)
                _workbook(
                    folder / f"E4_{kind}_PPT.xlsx",
                    ["Time (s)", *cols],
                    (
                        [round(float(ti), 6), *(int(x) if m == "acc" else round(float(x), 6) for x in row)]
                        for ti, row in zip(t, values)
                    ),
                )
            _workbook(
                folder / "E4_IBI_PPT.xlsx",
                ["Time (s)", "IBI"],
                ([round(float(ti - rec.start_s), 6), round(float(v), 6)] for ti, v in zip(rec.ibi_t_s, rec.ibi_s)),
            )
    for session, by in scores.items():
        _workbook(
            root / session / "Self_Reports" / f"{session}_afterPPT.xlsx",
            ["PID", "STAI Trait Score", "STAI State Score"],
            ([pid, 40, score] for pid, score in by.items()),
        )
