"""``m3sense experiment``: every experiment end to end on tiny simulated recordings (a few rows,
one epoch), the files it writes, its folds, its exit codes; the fig7 claim is in
``test_experiment_fig7.py``."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from inference.experiments import Row, Setup, feature_columns, parts, rows_for, run, summarise
from inference.features import FEATURES
from inference.model import ModelConfig
from inference.sources import parse_source, source_windows
from inference.train import TrainConfig
from tests.conftest import run_cli
from tests.model_helpers import one_torch_thread  # noqa: F401  (autouse fixture)

#: Four simulated wearers who mark their rest, so every labelled window has a wearer reference.
DATA = "synthetic?minutes=8&subjects=4&seed=4&mark_rest=true"
FAST = ("--epochs", "1", "--threads", "1", "--folds", "2")


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def windows():
    base = ModelConfig()
    ws = source_windows(
        parse_source(DATA), modalities=base.modalities, tasks=base.tasks, classes=base.classes, hop_s=10.0
    )
    return ws.subset(np.flatnonzero(ws.labelled & ws.calibrated & ws.present.all(axis=1)))


def test_table2_writes_the_table_csv_and_plot_with_the_papers_figures(tmp_path):
    out = tmp_path / "t2"
    proc = run_cli(
        "experiment",
        "table2",
        "--data",
        DATA,
        *FAST,
        "--seeds",
        "1,2",
        "--tasks",
        "stress",
        "--rows",
        "rf,single-sum,m3sense-cam",
        "--out",
        str(out),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    md = (out / "table2.md").read_text()
    assert md.strip() in proc.stdout  # printed too
    # the paper's stress figures stand beside ours
    assert "| RF | features |" in md and "| 69.6 |" in md and "| 85.7 |" in md
    rows = read_csv(out / "table2.csv")
    assert [(r["row"], r["task"], r["seeds"]) for r in rows] == [
        ("rf", "stress", "2"),
        ("single-sum", "stress", "2"),
        ("m3sense-cam", "stress", "2"),
    ]
    assert len({r["windows"] for r in rows}) == 1  # the same windows for every row
    for r in rows:
        assert 0 <= float(r["accuracy_mean"]) <= 1 and float(r["accuracy_sd"]) >= 0
        assert r["stress_vs_rest_mean"] != ""
    seeds = read_csv(out / "table2-seeds.csv")
    assert sorted({s["seed"] for s in seeds}) == ["1", "2"] and len(seeds) == 6
    mean = np.mean([float(s["accuracy"]) for s in seeds if s["row"] == "m3sense-cam"])
    assert float(rows[2]["accuracy_mean"]) == pytest.approx(mean)
    assert (out / "table2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = json.loads((out / "table2.json").read_text())["meta"]
    assert meta["split"] == "subjects" and meta["folds"] == 2 and meta["seeds"] == [1, 2]
    # a progress line per row and fold, and the summary line
    assert "table2 [3/6] seed 1, m3sense-cam: fold 2/2" in proc.stderr
    assert "3 of 3 row/task cells scored" in proc.stderr


def test_table4_under_the_paper_split(tmp_path):
    proc = run_cli(
        "experiment",
        "table4",
        "--data",
        DATA,
        *FAST,
        "--seeds",
        "1",
        "--tasks",
        "stress,anxiety",
        "--split",
        "paper",
        "--out",
        str(tmp_path),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    rows = read_csv(tmp_path / "table4.csv")
    assert [(r["row"], r["task"]) for r in rows] == [("stress+anxiety", "stress"), ("stress+anxiety", "anxiety")]
    assert rows[0]["paper_accuracy"] == "85.8" and rows[1]["paper_accuracy"] == "70.3"
    assert "paper's stratified window split" in (tmp_path / "table4.md").read_text()


def test_table5_needs_unlabelled_data_and_uses_it(tmp_path):
    proc = run_cli("experiment", "table5", "--data", DATA, *FAST, "--tasks", "emotion")
    assert proc.returncode == 2 and "--unlabeled" in proc.stderr
    proc = run_cli(
        "experiment",
        "table5",
        "--data",
        DATA,
        "--unlabeled",
        "synthetic?minutes=6&subjects=2&seed=8",
        *FAST,
        "--seeds",
        "1",
        "--tasks",
        "emotion",
        "--rows",
        "cam-without,cam-with",
        "--out",
        str(tmp_path),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((tmp_path / "table5.json").read_text())["meta"]
    assert meta["unlabeled_windows"] > 0
    assert [r["row"] for r in read_csv(tmp_path / "table5.csv")] == ["cam-without", "cam-with"]


def test_fig8_modality_combinations(tmp_path):
    proc = run_cli(
        "experiment",
        "fig8",
        "--data",
        DATA,
        *FAST,
        "--seeds",
        "1",
        "--tasks",
        "stress",
        "--modalities",
        "eda,temp",
        "--models",
        "lda,m3sense-sum",
        "--out",
        str(tmp_path),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [r["row"] for r in read_csv(tmp_path / "fig8.csv")]
    assert rows == [
        "lda:eda-temp",
        "lda:eda",
        "lda:temp",
        "m3sense-sum:eda-temp",
        "m3sense-sum:eda",
        "m3sense-sum:temp",
    ]


def test_a_task_nobody_labelled_is_reported_and_exits_1(tmp_path):
    proc = run_cli(
        "experiment",
        "table2",
        "--data",
        DATA + "&tasks=stress",
        *FAST,
        "--seeds",
        "1",
        "--tasks",
        "stress,anxiety",
        "--rows",
        "lda",
        "--out",
        str(tmp_path),
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    assert "1 of 2 row/task cells scored, not scored: lda/anxiety" in proc.stderr
    assert "| LDA | features |" in (tmp_path / "table2.md").read_text()


def test_bad_input_is_one_line_exit_2(tmp_path):
    for args, needle in (
        (("--rows", "nope"), "table2 has rows rf, dt"),
        (("--folds", "9"), "--folds must be"),
        (("--tasks", "joy"), "known tasks"),
        (("--seeds", "x"), "--seeds"),
    ):
        proc = run_cli("experiment", "table2", "--data", DATA, "--out", str(tmp_path), *args)
        assert proc.returncode == 2 and needle in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) <= 2  # the header line, then the error


def test_every_row_sees_the_same_folds_and_each_window_is_held_out_once(windows):
    setup = Setup(folds=3, split_seed=5, seeds=(1,), train=TrainConfig(epochs=1))
    folds = parts(windows, setup)
    held = np.concatenate([p.test for p in folds])
    assert sorted(held.tolist()) == list(range(len(windows)))
    for p in folds:
        assert not set(windows.groups[p.test]) & set(windows.groups[np.concatenate([p.train, p.val])])
    again = parts(windows, Setup(folds=3, split_seed=5, seeds=(2, 3)))
    assert all(np.array_equal(a.test, b.test) for a, b in zip(folds, again))  # seeds never move the folds
    rows = [
        r for r in rows_for("table2", tasks=("stress",), modalities=("bvp", "eda", "temp")) if r.id in ("lda", "lr")
    ]
    records = run(rows, windows, setup)
    assert len({r["windows"] for r in records}) == 1 and len(records) == 2
    cells = summarise(rows, records)
    assert [c["seeds"] for c in cells] == [1, 1] and cells[0]["accuracy_sd"] == 0.0


def test_rows_of_each_experiment():
    mods = ("bvp", "eda", "temp")
    t2 = rows_for("table2", tasks=("stress",), modalities=mods)
    assert [r.id for r in t2][:6] == ["rf", "dt", "et", "lda", "lr", "svm"] and len(t2) == 13
    assert {r.id: r for r in t2}["single-hamlet"].no_alignment and {r.id: r for r in t2}["m3sense-cam"].unlabeled
    t4 = rows_for("table4", tasks=("stress", "anxiety", "emotion"), modalities=mods)
    assert [r.id for r in t4] == ["stress+anxiety+emotion", "stress+anxiety", "stress+emotion", "anxiety+emotion"]
    assert t4[0].paper == {"anxiety": 60.2, "emotion": 75.2, "stress": 82.7}
    f7 = rows_for("fig7", tasks=("stress", "emotion"), modalities=mods, targets=("emotion",))
    assert [(r.id, r.scored) for r in f7] == [
        ("scratch:emotion", ("emotion",)),
        ("transfer:stress>emotion", ("emotion",)),
        ("all:emotion", ("emotion",)),
    ]
    with pytest.raises(ValueError, match="two tasks"):
        rows_for("fig7", tasks=("stress",), modalities=mods)
    assert len(rows_for("fig8", tasks=("stress",), modalities=mods, models=("rf",))) == 7


def test_feature_columns_follow_the_modalities():
    names = [FEATURES[i] for i in feature_columns(("temp",))]
    assert names == ["temp_mean_c", "temp_sd_c", "temp_slope_c_s"]
    bvp = {FEATURES[i] for i in feature_columns(("bvp",))}
    assert {"hr_bpm", "ibi_rmssd_s", "beat_amp_ratio", "bvp_sd"} <= bvp and not any(n.startswith("eda") for n in bvp)
    assert len(feature_columns(("bvp", "eda", "temp", "acc"))) == len(FEATURES)


def test_row_is_frozen_and_names_what_it_scores():
    r = Row(id="x", label="x", family="f", model="rf", tasks=("stress", "anxiety"), modalities=("eda",))
    assert r.is_features and r.scored == ("stress", "anxiety")
