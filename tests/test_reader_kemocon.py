"""K-EmoCon in its original layout: per-participant E4 CSVs with ms stamps, 5 s annotations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.errors import DataError
from replay.e4csv import read_source
from replay.kemocon import emotion_label
from replay.simulate import simulate_recordings
from tests.conftest import run_cli
from tests.dataset_fixtures import KEMOCON_RATINGS, write_kemocon


@pytest.fixture(scope="module")
def kemocon(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, float]]:
    root = tmp_path_factory.mktemp("kemocon")
    return root, write_kemocon(root)


def test_samples_land_on_their_stamps_and_duplicates_are_dropped(kemocon) -> None:
    root, _ = kemocon
    recs = read_source(str(root))  # recognised by metadata/subjects.csv
    assert [r.device for r in recs] == ["kemocon-p01", "kemocon-p31"]
    sims = simulate_recordings(minutes=2, seed=9, subjects=2, labels="none", off_wrist=False, start_s=1_544_000_000.0)
    for rec, sim in zip(recs, sims):
        for m, sig in sim.signals.items():
            got = rec.signals[m]
            assert got.fs_hz == sig.fs_hz and abs(got.t0_s - sig.t0_s) < 1e-3  # ms stamps
            if m == "acc":
                assert got.values.dtype == np.int16
                np.testing.assert_array_equal(got.values, sig.values)  # pid 31: A013E1, not the decoy
            else:
                np.testing.assert_allclose(got.values, sig.values, rtol=1e-5, atol=1e-6)  # %.6g text
        np.testing.assert_allclose(rec.ibi_s, sim.ibi_s, atol=1e-6)  # pid 31: beats of A01525
        np.testing.assert_allclose(rec.ibi_t_s, sim.ibi_t_s, atol=1e-3)


def test_labels_follow_the_papers_rule_on_the_debate_clock(kemocon) -> None:
    root, starts = kemocon
    rec = read_source(f"kemocon:{root}")[0]
    t0 = starts[1]
    expected = [emotion_label(v, a) for a, v in KEMOCON_RATINGS]
    assert expected == ["high"] * 4 + ["low"] * 4 + ["high"] * 4
    assert [(iv.start_s - t0, iv.end_s - t0, iv.task, iv.label) for iv in rec.labels] == [
        (0, 20, "emotion", "high"),
        (20, 40, "emotion", "low"),
        (40, 60, "emotion", "high"),
    ]
    assert emotion_label(3, 2) == "low" and emotion_label(2, 3) == "low" and emotion_label(3, 3) == "high"
    partner = read_source(f"kemocon-partner:{root}")[0]  # ratings shifted by one row in the fixture
    assert [(iv.start_s - t0, iv.label) for iv in partner.labels][:2] == [(0, "high"), (15, "low")]


def test_gaps_are_missing_not_invented_and_longer_annotations_are_cut_from_the_start(tmp_path: Path) -> None:
    starts = write_kemocon(tmp_path, pids=(4,))
    eda = tmp_path / "raw" / "e4_data" / "4" / "E4_EDA.csv"
    lines = eda.read_text().splitlines()
    eda.write_text("\n".join(lines[:41] + lines[61:]) + "\n")  # about 5 s without EDA rows
    notes = tmp_path / "raw" / "emotion_annotations" / "self_annotations" / "P4.self.csv"
    rows = notes.read_text().splitlines()
    extra = [f"{5 * i},1,1,1,1,1,1,1,,,,,,,,,,,,,,," for i in range(1, 3)]  # two early low rows, then 12 more
    renumbered = [f"{5 * (i + 3)},{r.split(',', 1)[1]}" for i, r in enumerate(rows[1:])]
    notes.write_text("\n".join([rows[0], *extra, *renumbered]) + "\n")
    (tmp_path / "raw" / "e4_data" / "4" / "E4_IBI.csv").write_text("timestamp,value,device_serial\n")  # no beat
    rec = read_source(str(tmp_path))[0]
    assert rec.ibi_s.size == 0
    values = rec.signals["eda"].values
    assert np.isnan(values).sum() in (19, 20) and np.isfinite(values[:38]).all()
    assert rec.signals["eda"].n == 480
    t0 = starts[4]
    assert [(iv.start_s - t0, iv.label) for iv in rec.labels] == [(0, "high"), (20, "low"), (40, "high")]


@pytest.mark.parametrize(
    "file, edit, where",
    [
        (
            "raw/e4_data/4/E4_BVP.csv",
            lambda t: t.replace("timestamp,value,device_serial", "time,value,device_serial"),
            "E4_BVP.csv:1: header must be",
        ),
        (
            "raw/e4_data/4/E4_EDA.csv",
            lambda t: t.replace("\n", "\n1544000001000,abc,A0143F\n", 1),
            "E4_EDA.csv:2: value is not a number",
        ),
        (
            "raw/e4_data/4/E4_TEMP.csv",
            lambda t: t.replace("\n", "\n1544000001,33.1,A0143F\n", 1),
            "E4_TEMP.csv:2: time stamp 1544000.001 s is not a Unix time",
        ),
        (
            "raw/e4_data/4/E4_HR.csv",
            lambda t: t + "1544000100000,80,B00000\n",
            "E4_HR.csv:.*rows of wristbands A0143F, B00000",
        ),
        (
            "raw/emotion_annotations/self_annotations/P4.self.csv",
            lambda t: t.replace("\n15,4,3", "\n15,6,3", 1),
            r"P4\.self\.csv:4: arousal and valence must be within 1-5",
        ),
        ("metadata/subjects.csv", lambda t: t.replace("pid,", "id,"), r"subjects\.csv:1: header lacks column"),
    ],
)
def test_malformed_files_are_named_with_their_line(tmp_path: Path, file: str, edit, where: str) -> None:
    write_kemocon(tmp_path, pids=(4,))
    f = tmp_path / file
    f.write_text(edit(f.read_text()))
    with pytest.raises(DataError, match=where):
        read_source(str(tmp_path))


def test_cli_bad_kemocon_is_one_line_exit_2(tmp_path: Path) -> None:
    write_kemocon(tmp_path, pids=(4,))
    f = tmp_path / "raw" / "e4_data" / "4" / "E4_ACC.csv"
    f.write_text(f.read_text().replace("\n", "\n1544000001000,1.5,2,3,A0143F\n", 1))
    proc = run_cli("replay", f"kemocon:{tmp_path}", "--bus", "tcp://127.0.0.1:1", "--wait-s", "0")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "E4_ACC.csv:2: ACC values must be integer counts" in lines[0]
