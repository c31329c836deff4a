"""VerBIO in its session-folder layout: E4 workbooks per session, STAI self-reports per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import openpyxl
import pytest

from common.errors import DataError
from replay.e4csv import read_source
from replay.simulate import simulate_recordings
from replay.verbio import NOMINAL_START_S, anxiety_label
from tests.dataset_fixtures import write_verbio

SCORES = {"PRE": {"P001": 37, "P004": 38}, "POST": {"P001": 52}}


@pytest.fixture(scope="module")
def verbio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("verbio")
    write_verbio(root, SCORES, seconds=30, seed=3)
    return root


def test_sessions_carry_the_stai_label_with_the_papers_cut_off(verbio: Path) -> None:
    recs = {r.device: r for r in read_source(str(verbio))}  # recognised by its P###/PRE folders
    assert sorted(recs) == ["verbio-P001-POST", "verbio-P001-PRE", "verbio-P004-POST", "verbio-P004-PRE"]
    got = {d: [(iv.start_s, iv.end_s, iv.task, iv.label) for iv in r.labels] for d, r in recs.items()}
    whole = (NOMINAL_START_S, NOMINAL_START_S + 30)
    assert got == {
        "verbio-P001-PRE": [(*whole, "anxiety", "low")],  # 37: still "no or low"
        "verbio-P004-PRE": [(*whole, "anxiety", "high")],  # 38
        "verbio-P001-POST": [(*whole, "anxiety", "high")],
        "verbio-P004-POST": [],
    }  # no self-report: no label
    assert anxiety_label(20) == "low" and anxiety_label(37.5) == "high"


def test_samples_are_at_their_time_column(verbio: Path) -> None:
    rec = read_source(f"verbio:{verbio / 'P001'}")[0]  # one participant's folder, by prefix
    assert rec.device == "verbio-P001-PRE"
    # the fixture simulated P001-POST, P001-PRE, P004-POST, P004-PRE in that order
    sim = simulate_recordings(minutes=30 / 60, seed=3, subjects=4, labels="none", off_wrist=False)[1]
    for m, sig in sim.signals.items():
        got = rec.signals[m]
        assert got.fs_hz == sig.fs_hz and got.t0_s == pytest.approx(NOMINAL_START_S + sig.t0_s - sim.start_s, abs=1e-6)
        np.testing.assert_allclose(got.values, sig.values, atol=1e-6)
    np.testing.assert_allclose(rec.ibi_t_s - NOMINAL_START_S, sim.ibi_t_s - sim.start_s, atol=1e-6)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("verbio-small")
    write_verbio(root, {"PRE": {"P001": 30, "P002": 50}}, seconds=30, seed=4)
    return root


def _set_cell(path: Path, cell: str, value) -> None:
    book = openpyxl.load_workbook(path)
    sheet = book.active
    assert sheet is not None, "the fixture's workbooks have one sheet"
    sheet[cell] = value
    book.save(path)


@pytest.mark.parametrize(
    "file, cell, value, where",
    [
        ("P001/PRE/E4_EDA_PPT.xlsx", "B5", "n/a", r"E4_EDA_PPT\.xlsx:5: EDA is not a number: 'n/a'"),
        ("P001/PRE/E4_BVP_PPT.xlsx", "A1", "Time", r"E4_BVP_PPT\.xlsx:1: header must be 'Time \(s\)'"),
        ("P001/PRE/E4_TEMP_PPT.xlsx", "A7", -3, r"E4_TEMP_PPT\.xlsx:7: Time \(s\) must be >= 0"),
        ("PRE/Self_Reports/PRE_afterPPT.xlsx", "C2", 15, r"PRE_afterPPT\.xlsx:2: STAI state score 15 is outside 20-80"),
        ("PRE/Self_Reports/PRE_afterPPT.xlsx", "A3", "someone", r"PRE_afterPPT\.xlsx:3: PID must be like P001"),
    ],
)
def test_malformed_workbooks_are_named_with_their_row(
    small: Path, tmp_path: Path, file: str, cell: str, value, where: str
) -> None:
    shutil.copytree(small, tmp_path, dirs_exist_ok=True)
    _set_cell(tmp_path / file, cell, value)
    with pytest.raises(DataError, match=where):
        read_source(f"verbio:{tmp_path}")


def test_a_file_that_is_no_workbook_is_named(small: Path, tmp_path: Path) -> None:
    shutil.copytree(small, tmp_path, dirs_exist_ok=True)
    (tmp_path / "P001" / "PRE" / "E4_HR_PPT.xlsx").write_text("Time (s),HR\n0,80\n")
    with pytest.raises(DataError, match=r"E4_HR_PPT\.xlsx: not a readable \.xlsx workbook"):
        read_source(str(tmp_path))
