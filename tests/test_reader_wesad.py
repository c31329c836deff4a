"""WESAD in its original layout: SX.pkl (Python 2 pickle) + SX_E4_Data.zip + SX_quest.csv."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from common.errors import DataError
from replay.e4csv import read_e4_export, read_source
from replay.wesad import NOMINAL_START_S, load_pickle, read_quest
from tests.conftest import WESAD, needs, run_cli
from tests.dataset_fixtures import (
    WESAD_OFFSET_S,
    WESAD_SECONDS,
    wesad_codes,
    wesad_export_start,
    write_py2_pickle,
    write_wesad_subject,
)


@pytest.fixture(scope="module")
def wesad(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wesad") / "WESAD"
    write_wesad_subject(root, "S5", seed=5)
    write_wesad_subject(root, "S17", seed=17)
    return root


def test_fixture_pickle_is_python2_style(wesad: Path) -> None:
    raw = (wesad / "S5" / "S5.pkl").read_bytes()
    assert raw[:2] == b"\x80\x02" and b"cnumpy.core.multiarray\n_reconstruct\n" in raw
    assert b"X" not in raw[:3] and pickle.SHORT_BINSTRING + bytes([6]) + b"signal" in raw  # py2 str, not unicode


def test_subjects_read_on_the_export_clock_with_the_protocol_labels(wesad: Path) -> None:
    recs = read_source(f"wesad:{wesad}")
    assert [r.device for r in recs] == ["S5", "S17"]  # S5 before S17, as subjects are numbered
    rec = recs[0]
    export = read_e4_export(wesad / "S5" / "S5_E4_Data.zip")
    for m, sig in export.signals.items():  # the recording is the export itself ...
        assert rec.signals[m].t0_s == sig.t0_s and rec.signals[m].fs_hz == sig.fs_hz
        np.testing.assert_array_equal(rec.signals[m].values, sig.values)
    np.testing.assert_array_equal(rec.ibi_t_s, export.ibi_t_s)
    t0 = wesad_export_start(wesad / "S5") + WESAD_OFFSET_S  # ... with the labels on its clock
    got = [(iv.start_s - t0, iv.end_s - t0, iv.task, iv.label) for iv in rec.labels]
    assert got == [
        (10, 40, "stress", "baseline"),
        (45, 75, "stress", "stress"),
        (78, 100, "stress", "amusement"),
        (100, 115, "stress", "meditation"),
    ]  # codes 0 and 6 give no label


def test_labels_follow_the_700_hz_array_to_the_sample(tmp_path: Path) -> None:
    folder = write_wesad_subject(tmp_path, "S9", seed=9)
    data = load_pickle(folder / "S9.pkl")
    assert isinstance(data, dict), "a WESAD subject pickle holds a dict"
    codes = wesad_codes()
    codes[10 * 700 + 3] = 0  # a 1/700 s gap inside the baseline splits it there
    data["label"] = codes
    write_py2_pickle(data, folder / "S9.pkl")
    rec = read_source(str(folder))[0]
    t0 = wesad_export_start(folder) + WESAD_OFFSET_S
    base = [iv for iv in rec.labels if iv.label == "baseline"]
    assert [(round((iv.start_s - t0) * 700), round((iv.end_s - t0) * 700)) for iv in base] == [
        (7000, 7003),
        (7004, 28000),
    ]


def test_a_pickle_alone_starts_at_the_nominal_time(wesad: Path) -> None:
    rec = read_source(f"wesad:{wesad / 'S5' / 'S5.pkl'}")[0]
    export = read_e4_export(wesad / "S5" / "S5_E4_Data.zip")
    for m in ("acc", "bvp", "eda", "temp"):
        sig = rec.signals[m]
        assert sig.t0_s == NOMINAL_START_S and sig.n == WESAD_SECONDS * sig.fs_hz
        k = int(WESAD_OFFSET_S * sig.fs_hz)
        np.testing.assert_array_equal(sig.values, export.signals[m].values[k : k + sig.n])
    assert rec.signals["acc"].values.dtype == np.int16
    assert (rec.labels[0].start_s, rec.labels[0].label) == (NOMINAL_START_S + 10, "baseline")


def test_quest_times_are_minutes_dot_seconds(wesad: Path) -> None:
    phases = read_quest(wesad / "S5" / "S5_quest.csv")
    assert phases[:2] == [("Base", 10.0, 40.0), ("TSST", 45.0, 75.0)]
    assert phases[2] == ("Fun", 78.0, 100.0)  # 1.18 -> 78 s; 1.4 would be 1:40


class Boom:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    folder = write_wesad_subject(tmp_path, "S2", seed=2)
    marker = tmp_path / "ran"
    data = load_pickle(folder / "S2.pkl")
    assert isinstance(data, dict), "a WESAD subject pickle holds a dict"
    data["subject"] = Boom(marker)
    (folder / "S2.pkl").write_bytes(pickle.dumps(data, protocol=2))
    with pytest.raises(DataError, match=r"S2\.pkl.*refused: the pickle asks for posix\.system"):
        read_source(str(folder))
    proc = run_cli("replay", f"wesad:{folder}", "--bus", "tcp://127.0.0.1:1", "--speed", "max", "--wait-s", "0")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "refused" in proc.stderr
    assert not marker.exists()
    # an object built from allowed pieces is still refused: an array of Python objects
    data["subject"] = np.array([1, "x"], dtype=object)
    (folder / "S2.pkl").write_bytes(pickle.dumps(data, protocol=2))
    with pytest.raises(DataError, match="refused"):
        read_source(str(folder))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: d.pop("label"), r"S\d\.pkl: no \['label'\]"),
        (lambda d: d["signal"]["wrist"].__setitem__("EDA", d["signal"]["wrist"]["EDA"][:100]), "lasts 25.0 s"),
        (lambda d: d.__setitem__("label", np.full(WESAD_SECONDS * 700, 9)), r"\['label'\]\[0\] is 9"),
        (lambda d: d["signal"]["wrist"].__setitem__("ACC", d["signal"]["wrist"]["ACC"] / 64), "1/64 g"),
    ],
)
def test_malformed_pickles_are_named(tmp_path: Path, damage, message: str) -> None:
    folder = write_wesad_subject(tmp_path, "S3", seed=3)
    data = load_pickle(folder / "S3.pkl")
    damage(data)
    write_py2_pickle(data, folder / "S3.pkl")
    with pytest.raises(DataError, match=message):
        read_source(f"wesad:{folder}")


def test_truncated_pickle_quest_mismatch_and_foreign_zip(tmp_path: Path) -> None:
    a = write_wesad_subject(tmp_path, "S6", seed=6)
    b = write_wesad_subject(tmp_path, "S7", seed=7)
    raw = (a / "S6.pkl").read_bytes()
    (a / "S6.pkl").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"S6\.pkl: not a readable pickle at byte \d+"):
        read_source(str(a))
    (a / "S6.pkl").write_bytes(raw)
    quest = (a / "S6_quest.csv").read_text().replace("# START;0.10;0.45", "# START;0.10;0.75")
    (a / "S6_quest.csv").write_text(quest)
    with pytest.raises(DataError, match=r"S6_quest\.csv:3: '0\.75' is not a minutes\.seconds time"):
        read_source(str(a))
    (a / "S6_quest.csv").write_text(quest.replace("0.75", "1.35").replace("# END;0.40;1.15", "# END;0.40;1.45"))
    with pytest.raises(DataError, match=r"S6_quest\.csv: no stress phase overlaps"):
        read_source(str(a))
    (a / "S6_quest.csv").unlink()
    (a / "S6_E4_Data.zip").write_bytes((b / "S7_E4_Data.zip").read_bytes())
    with pytest.raises(DataError, match=r"S6\.pkl: its wrist arrays are not found in S6_E4_Data\.zip"):
        read_source(str(a))
    proc = run_cli("replay", str(a), "--bus", "tcp://127.0.0.1:1", "--wait-s", "0")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1


def test_an_oversized_zip_member_is_refused_before_inflating(tmp_path: Path, monkeypatch) -> None:
    folder = write_wesad_subject(tmp_path, "S8", seed=8)
    import replay.e4csv

    monkeypatch.setattr(replay.e4csv, "MAX_FILE_BYTES", 1000)  # the E4 reader's bound applies to the zip
    with zipfile.ZipFile(folder / "S8_E4_Data.zip") as z:
        assert z.getinfo("BVP.csv").file_size > 1000
    with pytest.raises(DataError, match=r"S8_E4_Data\.zip!ACC\.csv: 0 MiB, more than any E4 session"):
        read_source(str(folder))


REAL_S2 = WESAD / "S2"


@needs(REAL_S2.is_dir(), reason=f"WESAD E4 data not found at {REAL_S2}")
def test_real_s2_export_with_a_pickle_cut_from_it(tmp_path: Path) -> None:
    """The E4 side on real data: S2's real export zipped as WESAD ships it, and a pickle whose wrist
    arrays are cut from it (as WESAD's are) with labels.csv's phases as 700 Hz codes. The reader must
    find the cut in real signals (flat stretches, 2-decimal BVP) and put every phase back where
    labels.csv has it. The chest arrays are left out: the reader does not use them."""
    export = read_e4_export(REAL_S2)
    folder = tmp_path / "S2"
    folder.mkdir()
    with zipfile.ZipFile(folder / "S2_E4_Data.zip", "w", zipfile.ZIP_DEFLATED) as z:
        for name in ("ACC.csv", "BVP.csv", "EDA.csv", "TEMP.csv", "HR.csv", "IBI.csv", "info.txt"):
            z.write(REAL_S2 / name, name)
    codes = {"baseline": 1, "stress": 2, "amusement": 3, "meditation": 4}
    # S2's pickle starts 1545 s into the export (physiology.md, from a published pickle-based notebook)
    # and lasts 6079 s (e4-facts.md 4.2): its t = 0 is the chest's start, which SX_quest.csv counts from
    t0 = export.signals["eda"].t0_s + 1545
    seconds = min(6079, int(export.end_s - t0) - 1)
    label = np.zeros(seconds * 700, dtype=np.int8)
    for iv in export.labels:
        label[round((iv.start_s - t0) * 700) : round((iv.end_s - t0) * 700)] = codes[iv.label]
    wrist = {}
    for key, m in (("ACC", "acc"), ("BVP", "bvp"), ("EDA", "eda"), ("TEMP", "temp")):
        sig = export.signals[m]
        k = round((t0 - sig.t0_s) * sig.fs_hz)
        a = sig.values[k : k + seconds * int(sig.fs_hz)].astype(np.float64)
        wrist[key] = a if m == "acc" else a.reshape(-1, 1)
    write_py2_pickle({"signal": {"chest": {}, "wrist": wrist}, "label": label, "subject": "S2"}, folder / "S2.pkl")
    (folder / "S2_quest.csv").write_bytes((REAL_S2 / "S2_quest.csv").read_bytes())
    rec = read_source(f"wesad:{folder}")[0]
    assert rec.device == "S2" and rec.signals["bvp"].n == export.signals["bvp"].n
    expected = [(iv.start_s, iv.end_s, iv.label) for iv in sorted(export.labels, key=lambda iv: iv.start_s)]
    assert [iv.label for iv in rec.labels] == [e[2] for e in expected]
    got = np.array([(iv.start_s, iv.end_s) for iv in rec.labels])
    np.testing.assert_allclose(got, np.array([e[:2] for e in expected]), rtol=0, atol=1e-6)


def _tiny_pickle() -> bytes:
    import io

    from tests.dataset_fixtures import Py2Pickler

    wrist = {"ACC": np.zeros((64, 3)), "BVP": np.zeros((128, 1)), "EDA": np.ones((8, 1)), "TEMP": np.ones((8, 1))}
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(
        {"signal": {"wrist": wrist}, "label": np.ones(1400, dtype=np.int32), "subject": "S4"}
    )
    return buf.getvalue()


TINY = _tiny_pickle()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    edits=st.lists(st.tuples(st.integers(0, len(TINY) - 1), st.integers(0, 255)), min_size=1, max_size=4),
    cut=st.integers(1, len(TINY)),
)
def test_a_damaged_pickle_is_read_or_named_never_a_crash(tmp_path: Path, edits, cut: int) -> None:
    raw = bytearray(TINY)
    for at, byte in edits:
        raw[at] = byte
    path = tmp_path / "S4.pkl"
    path.write_bytes(bytes(raw[:cut]))
    try:
        rec = read_source(f"wesad:{path}")[0]
    except DataError as exc:
        assert str(exc).startswith(f"{path}") and "\n" not in str(exc)
    else:
        assert set(rec.signals) <= {"acc", "bvp", "eda", "temp"}
