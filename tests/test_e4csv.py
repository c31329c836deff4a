"""The E4 Connect reader on small files in the exact export format, and its errors."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from common.errors import DataError
from replay.e4csv import device_name, find_exports, read_e4_export, read_source, write_e4_export
from tests.conftest import run_cli

T0 = 1495437325.0

FILES = {
    "ACC.csv": f"{T0:.6f}, {T0:.6f}, {T0:.6f}\n32.000000, 32.000000, 32.000000\n29,-6,55\n30,-5,54\n-128,127,0\n",
    "BVP.csv": f"{T0:.6f}\n64.000000\n-0.00\n12.57\n-31.40\n7.01\n",
    "EDA.csv": f"{T0:.6f}\n4.000000\n0.000000\n0.213543\n0.217389\n",
    "TEMP.csv": f"{T0 + 0.5:.6f}\n4.000000\n32.11\n32.13\n",
    "HR.csv": f"{T0 + 10:.6f}\n1.000000\n101.00\n99.50\n",
    "IBI.csv": f"{T0:.6f}, IBI\n14.313155,0.765660\n15.203821,0.890666\n17.500000,0.812500\n",
    "tags.csv": "",
    "labels.csv": "start,end,task,label\n1495437330.000,1495437400.000,stress,baseline\n",
}


def write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def test_reads_every_file_with_its_own_start_and_rate(tmp_path: Path) -> None:
    rec = read_e4_export(write(tmp_path / "S7", FILES))
    assert rec.device == "S7"
    acc = rec.signals["acc"]
    assert (acc.t0_s, acc.fs_hz, acc.values.dtype) == (T0, 32.0, np.int16)
    np.testing.assert_array_equal(acc.values, [[29, -6, 55], [30, -5, 54], [-128, 127, 0]])
    np.testing.assert_array_equal(rec.signals["bvp"].values, [-0.0, 12.57, -31.4, 7.01])
    assert rec.signals["temp"].t0_s == T0 + 0.5 and rec.signals["hr"].t0_s == T0 + 10
    np.testing.assert_allclose(rec.ibi_t_s, T0 + np.array([14.313155, 15.203821, 17.5]))
    np.testing.assert_array_equal(rec.ibi_s, [0.76566, 0.890666, 0.8125])
    # a rejected beat leaves a gap: 17.5 - 15.2 > 0.81
    assert rec.ibi_t_s[2] - rec.ibi_t_s[1] > rec.ibi_s[2]
    assert rec.tags_s.size == 0
    assert [(iv.task, iv.label) for iv in rec.labels] == [("stress", "baseline")]


def test_zip_export_like_wesad_reads_the_same_as_the_folder(tmp_path: Path) -> None:
    folder = write(tmp_path / "x", {**FILES, "tags.csv": f"{T0 + 3:.6f}\n{T0 + 9:.6f}\n"})
    z = tmp_path / "S2_E4_Data.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for f in folder.iterdir():
            zf.write(f, f.name)
    a, b = read_e4_export(folder), read_e4_export(z)
    assert b.device == "S2"
    for m in a.signals:
        np.testing.assert_array_equal(a.signals[m].values, b.signals[m].values)
    np.testing.assert_array_equal(b.tags_s, [T0 + 3, T0 + 9])
    assert device_name(Path("1495437325_A01F11.zip")) == "1495437325_A01F11"


def test_writer_round_trips_and_a_folder_of_exports_is_one_source(tmp_path: Path) -> None:
    rec = read_e4_export(write(tmp_path / "in" / "A", FILES))
    write_e4_export(rec, tmp_path / "out" / "A")
    write_e4_export(rec, tmp_path / "out" / "B")
    recs = read_source(tmp_path / "out")
    assert [r.device for r in recs] == ["A", "B"]
    for m, sig in rec.signals.items():
        np.testing.assert_array_equal(recs[1].signals[m].values, sig.values)
        assert recs[1].signals[m].t0_s == sig.t0_s
    np.testing.assert_allclose(recs[0].ibi_t_s, rec.ibi_t_s, atol=1e-6)
    assert recs[0].labels == rec.labels


@pytest.mark.parametrize(
    ("name", "text", "where", "what"),
    [
        ("BVP.csv", "start\n64.0\n1.0\n", "BVP.csv:1", "start time"),
        ("EDA.csv", f"{T0}\n4.0\n0.1\nabc\n0.2\n", "EDA.csv:4", "not a number"),
        ("ACC.csv", f"{T0},{T0},{T0}\n32,32,32\n1,2,3\n4,5\n", "ACC.csv:4", "expected 3"),
        ("TEMP.csv", "", "TEMP.csv", "empty file"),
        ("BVP.csv", f"{T0}\n-64.0\n1.0\n", "BVP.csv:2", "positive"),
        ("IBI.csv", f"{T0}, HR\n1.0,0.8\n", "IBI.csv:1", "IBI"),
        ("labels.csv", "start,end,task,label\n10,5,stress,baseline\n", "labels.csv:2", "start < end"),
        # files that once hung the replay clock or failed after publishing had begun (issue 12)
        ("BVP.csv", f"{T0}\n0.001\n1.0\n", "BVP.csv:2", "no E4 BVP rate"),
        ("EDA.csv", f"{T0}\n1e-300\n0.1\n", "EDA.csv:2", "no E4 EDA rate"),
        ("TEMP.csv", "0\n4.0\n32.1\n", "TEMP.csv:1", "between 2000 and 2100"),
        ("BVP.csv", "-1e12\n64.0\n1.0\n", "BVP.csv:1", "between 2000 and 2100"),
        ("ACC.csv", "1e300,1e300,1e300\n32,32,32\n1,2,3\n", "ACC.csv:1", "between 2000 and 2100"),
        ("IBI.csv", f"{T0}, IBI\n14.3,0.76\n1e15,0.8\n", "IBI.csv:3", "outside the recording"),
        ("IBI.csv", f"{T0}, IBI\n14.3,0.76\nnan,nan\n", "IBI.csv:3", "not a finite number"),
        ("tags.csv", f"{T0 + 1}\nnan\n", "tags.csv:2", "not a finite number"),
        ("tags.csv", f"{T0 + 1}\n{T0 + 86400}\n", "tags.csv:2", "outside the recording"),
        ("EDA.csv", f"{T0}\n4.0\n0.1\ninf\n", "EDA.csv:4", "not a finite number"),
    ],
)
def test_bad_files_are_named_with_their_line(tmp_path: Path, name: str, text: str, where: str, what: str) -> None:
    folder = write(tmp_path / "bad", {**FILES, name: text})
    with pytest.raises(DataError) as err:
        read_e4_export(folder)
    assert where in str(err.value) and what in str(err.value)


def test_files_larger_than_any_e4_session_are_refused_before_reading(tmp_path: Path) -> None:
    """A 1 GiB CSV (sparse: nothing is written) and a zip member inflating to 1 GiB are refused
    from their size in the folder and in the zip directory, without being read."""
    folder = write(tmp_path / "big", FILES)
    with open(folder / "BVP.csv", "r+b") as f:
        f.truncate(2**30)
    with pytest.raises(DataError, match=r"BVP\.csv: 1024 MiB, more than any E4 session writes"):
        read_e4_export(folder)
    z = tmp_path / "S9_E4_Data.zip"
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, text in FILES.items():
            if name != "EDA.csv":
                zf.writestr(name, text)
        with zf.open("EDA.csv", "w", force_zip64=True) as member:
            member.write(f"{T0}\n4.0\n".encode())
            zeros = b"0\n" * 2**19
            for _ in range(2**10):
                member.write(zeros)
    assert z.stat().st_size < 16 * 2**20
    with pytest.raises(DataError, match=r"!EDA\.csv: 1024 MiB, more than any E4 session writes"):
        read_e4_export(z)


def test_a_folder_or_zip_without_e4_files_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="no E4 export"):
        find_exports(tmp_path / "empty")
    z = tmp_path / "other.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("readme.txt", "nothing")
    with pytest.raises(DataError, match="no E4 export"):
        read_e4_export(z)


def test_cli_reports_bad_input_in_one_line_with_exit_code_2(tmp_path: Path) -> None:
    folder = write(tmp_path / "bad", {**FILES, "EDA.csv": f"{T0}\n4.0\n0.1\nn/a\n"})
    proc = run_cli("replay", str(folder), "--bus", "tcp://127.0.0.1:1", "--speed", "max", "--wait-s", "0")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "EDA.csv:4" in lines[0]
    for args in (
        ["replay", str(tmp_path / "missing")],
        ["replay", str(folder), "--speed", "fast"],
        ["replay", str(folder), "--bus", "udp://x"],
    ):
        proc = run_cli(*args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", ["replay", "run"])
def test_cli_refuses_a_file_that_would_hang_the_replay_clock(tmp_path: Path, command: str) -> None:
    """A start time of 0 once made the replay wait about 1.7e9 s; now: one line, exit 2, at once."""
    folder = write(tmp_path / "epoch", {**FILES, "TEMP.csv": "0\n4.0\n32.1\n"})
    proc = run_cli(command, str(folder), "--speed", "1", "--bus", "tcp://127.0.0.1:1", timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "TEMP.csv:1" in lines[0] and "between 2000 and 2100" in lines[0]
