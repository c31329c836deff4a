"""A folder of E4 exports, nested per person, read as unlabelled data (the paper's MAYA role)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from common.errors import DataError
from replay.e4csv import read_e4_export, read_source, write_e4_export
from replay.simulate import simulate_recordings


def test_every_export_below_is_read_without_its_labels(tmp_path: Path) -> None:
    recs = simulate_recordings(minutes=1, seed=21, subjects=3, labels="all")
    write_e4_export(recs[0], tmp_path / "anna" / "session1")
    write_e4_export(recs[1], tmp_path / "anna" / "session2")
    write_e4_export(recs[2], tmp_path / "ben" / "raw" / "B_E4_Data")
    shutil.make_archive(str(tmp_path / "ben" / "B_E4_Data"), "zip", tmp_path / "ben" / "raw" / "B_E4_Data")
    shutil.rmtree(tmp_path / "ben" / "raw")
    assert (tmp_path / "anna" / "session1" / "labels.csv").is_file()
    got = read_source(f"unlabelled:{tmp_path}")
    assert [r.device for r in got] == ["anna-session1", "anna-session2", "ben-B"]
    assert all(r.labels == () for r in got)
    for rec, folder in zip(
        got, [tmp_path / "anna" / "session1", tmp_path / "anna" / "session2", tmp_path / "ben" / "B_E4_Data.zip"]
    ):
        e4 = read_e4_export(folder)
        assert e4.labels  # the files had labels; the alignment domain does not take them
        for m, sig in e4.signals.items():
            np.testing.assert_array_equal(rec.signals[m].values, sig.values)
            assert rec.signals[m].t0_s == sig.t0_s
    assert read_source(f"unlabeled:{tmp_path / 'anna'}")[0].device == "session1"


def test_nothing_there_and_bad_files_are_named(tmp_path: Path) -> None:
    (tmp_path / "empty" / "a" / "b").mkdir(parents=True)
    with pytest.raises(DataError, match="no E4 export here or up to 3 folders below"):
        read_source(f"unlabelled:{tmp_path / 'empty'}")
    rec = simulate_recordings(minutes=1, seed=22, subjects=1)[0]
    folder = write_e4_export(rec, tmp_path / "p" / "s1")
    eda = folder / "EDA.csv"
    lines = eda.read_text().splitlines()
    lines[2] = "x"
    eda.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"s1/EDA\.csv:3: "):
        read_source(f"unlabelled:{tmp_path / 'p'}")
