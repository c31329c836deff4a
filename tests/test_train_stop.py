"""``m3sense train`` and ``m3sense experiment`` follow the one stop convention (common/aio.py, the
README's "Exit codes"): started as real processes on tiny simulated data and signalled once their
progress lines say they are training, they write what they finished, marked partial, and exit 0
after SIGTERM, 130 after SIGINT."""

from __future__ import annotations

import csv
import json
import re
import signal
from pathlib import Path

from tests.conftest import Proc, run_cli

#: a few minutes of three simulated wearers: a first epoch takes about a second
TRAIN_DATA = "synthetic?minutes=4&subjects=3&seed=4"
#: wearers who mark their rest: every labelled window has the reference that --folds needs
FOLD_DATA = "synthetic?minutes=8&subjects=4&seed=4&mark_rest=true"


def _stop(proc: Proc, sig: signal.Signals, timeout_s: float = 60) -> tuple[int, str, str]:
    """Signal ``proc`` and return its exit code and the rest of its stdout and stderr."""
    proc.popen.send_signal(sig)
    out, err = proc.popen.communicate(timeout=timeout_s)
    return proc.popen.returncode, out, err


def test_sigterm_writes_a_partial_checkpoint_that_model_info_shows(tmp_path: Path, procs: list[Proc]) -> None:
    out = tmp_path / "m.safetensors"
    proc = Proc(["train", "--data", TRAIN_DATA, "--epochs", "100", "--threads", "1", "--out", str(out)])
    procs.append(proc)
    first = proc.wait_for_stderr("epoch 1/100", timeout=90)
    code, _, err = _stop(proc, signal.SIGTERM)
    assert code == 0, err
    epochs = len(re.findall(r"^epoch \d+/100 ", first + err, re.M))  # the epochs it said it finished
    assert 1 <= epochs < 100
    line = f"train: stopped by SIGTERM after {epochs} of 100 epochs: wrote PARTIAL checkpoint {out}"
    assert line in err
    prov = json.loads(out.with_suffix(".json").read_text())["provenance"]
    assert prov["partial"] == {"epochs_done": epochs, "epochs_planned": 100, "stopped_by": "SIGTERM"}
    assert prov["epochs_done"] == len(prov["history"]) == epochs and 1 <= prov["best_epoch"] <= epochs
    info = run_cli("model", "info", str(out), check=True)
    assert f"PARTIAL: training stopped by SIGTERM after {epochs} of 100 epochs" in info.stdout
    as_json = json.loads(run_cli("model", "info", str(out), "--json", check=True).stdout)
    assert as_json["provenance"]["partial"]["epochs_done"] == epochs


def test_sigint_before_the_first_epoch_writes_nothing_and_exits_130(tmp_path: Path, procs: list[Proc]) -> None:
    out = tmp_path / "m.safetensors"
    # batches of 4: a first epoch of many steps, so the signal lands inside it
    args = ["train", "--data", TRAIN_DATA, "--epochs", "5", "--batch-size", "4", "--threads", "1"]
    proc = Proc([*args, "--out", str(out)])
    procs.append(proc)
    proc.wait_for_stderr("train: ", timeout=90)  # the line before training starts
    code, _, err = _stop(proc, signal.SIGINT)
    assert code == 130, err
    assert "train: stopped by SIGINT before the first epoch finished: nothing written" in err
    assert "epoch 1/5" not in err
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_a_stop_while_reading_the_data_does_not_wait_for_the_reading_to_end(tmp_path: Path, procs: list[Proc]) -> None:
    out = tmp_path / "m.safetensors"
    # read without the cache: simulating and windowing four wearers takes seconds
    args = ["-v", "train", "--data", FOLD_DATA, "--no-cache", "--epochs", "1", "--threads", "1"]
    proc = Proc([*args, "--out", str(out)])
    procs.append(proc)
    proc.wait_for_stderr("reading the windows of", timeout=60)  # -v: the log line before the reading
    code, _, err = _stop(proc, signal.SIGTERM, timeout_s=3)  # well before the reading could end
    assert code == 0, err
    assert "train: stopped by SIGTERM before training started: nothing written" in err
    assert "training windows" not in err and not out.exists()


def test_sigterm_during_cross_validation_scores_the_finished_folds(procs: list[Proc]) -> None:
    args = ["train", "--data", FOLD_DATA, "--folds", "3", "--epochs", "12", "--threads", "1", "--json"]
    proc = Proc(args)
    procs.append(proc)
    proc.wait_for_stderr("fold 1/3 epoch 12/12", timeout=120)
    proc.wait_for_stderr("fold 2/3 epoch 1/12", timeout=60)
    code, out, err = _stop(proc, signal.SIGTERM)
    assert code == 0, err
    assert "fold 2/3 epoch 12/12" not in err and "fold 3/3" not in err
    assert "train: stopped by SIGTERM after 1 of 3 folds: the scores below are PARTIAL" in err
    scores = json.loads(out)
    assert scores.pop("partial") == {"folds_done": 1, "folds_planned": 3, "stopped_by": "SIGTERM"}
    assert scores and all(s["n_windows"] > 0 for s in scores.values())  # the held-out windows of fold 1 only


def _experiment(out: Path) -> list[str]:
    """table2 with a fast row and a slow one, two seeds: runs [1/4] rf, [2/4] m3sense-cam, ..."""
    return [
        *("experiment", "table2", "--data", FOLD_DATA, "--tasks", "stress", "--rows", "rf,m3sense-cam"),
        *("--seeds", "1,2", "--folds", "2", "--epochs", "60", "--threads", "1", "--out", str(out), "--json"),
    ]


def test_sigterm_stops_an_experiment_with_its_finished_runs_written_as_partial(
    tmp_path: Path, procs: list[Proc]
) -> None:
    out = tmp_path / "t2"
    proc = Proc(_experiment(out))
    procs.append(proc)
    proc.wait_for_stderr("[2/4] seed 1, m3sense-cam: fold 1/2", timeout=120)  # run 1 (rf) has finished
    code, stdout, err = _stop(proc, signal.SIGTERM)
    assert code == 0, err
    assert "experiment table2: stopped by SIGTERM after 1 of 4 runs: wrote PARTIAL results" in err
    summary = json.loads(stdout)  # the one object --json prints, nothing else on stdout
    paths = [str(out / n) for n in ("table2.md", "table2.csv", "table2-seeds.csv", "table2.json", "table2.png")]
    assert summary["command"] == "experiment" and summary["exit_code"] == 0
    assert summary["reason"] == "stopped by SIGTERM after 1 of 4 runs"
    assert summary["partial"] is True and summary["stopped_by"] == "SIGTERM" and summary["paths"] == paths
    assert (summary["runs_completed"], summary["runs_planned"]) == (1, 4)
    assert [(c["row"], c["task"], c["seeds"]) for c in summary["cells"]] == [("rf", "stress", 1)]
    assert 0 <= summary["cells"][0]["accuracy_mean"] <= 1
    meta = json.loads((out / "table2.json").read_text())["meta"]
    assert meta["partial"] is True and (meta["runs_completed"], meta["runs_planned"]) == (1, 4)
    assert meta["stopped_by"] == "SIGTERM" and meta["seeds"] == [1]
    assert (out / "table2.md").read_text().startswith("# table2 (PARTIAL: 1 of 4 runs finished, stopped by SIGTERM)")
    with open(out / "table2-seeds.csv", newline="") as f:
        assert [(r["row"], r["seed"]) for r in csv.DictReader(f)] == [("rf", "1")]


def test_sigint_stops_an_experiment_with_130_and_says_so_in_its_summary(tmp_path: Path, procs: list[Proc]) -> None:
    out = tmp_path / "t2"
    proc = Proc(_experiment(out))
    procs.append(proc)
    proc.wait_for_stderr("[2/4] seed 1, m3sense-cam: fold 1/2", timeout=120)
    code, stdout, err = _stop(proc, signal.SIGINT)
    assert code == 130, err
    summary = json.loads(stdout)
    assert summary["exit_code"] == 130 and summary["reason"] == "interrupted (Ctrl-C)"
    assert summary["partial"] is True and summary["stopped_by"] == "SIGINT" and summary["runs_completed"] == 1
    assert json.loads((out / "table2.json").read_text())["meta"]["stopped_by"] == "SIGINT"
