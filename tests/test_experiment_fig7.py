"""The claim of the paper's Figure 7 on simulated wearers: a head for a task the model never saw,
learned on the frozen representation of a model of the other tasks from one labelled recording,
beats a model trained from scratch on that same recording.

Scored by macro-F1 and balanced accuracy: anxiety is "low" in about 63 % of these windows, so a
model that always answers "low" has 63 % accuracy, macro-F1 0.39 and balanced accuracy 0.5, which
is where the scratch model ends up. The real network, two folds, one seed (seeds 1-3 were checked
by hand: the README gives the larger run); a fixed seed on one thread makes it repeatable.
"""

from __future__ import annotations

import csv

from tests.conftest import run_cli

DATA = "synthetic?minutes=12&subjects=4&seed=3&mark_rest=true"


def test_a_new_head_on_a_frozen_representation_beats_scratch_on_the_same_few(tmp_path):
    proc = run_cli(
        "experiment",
        "fig7",
        "--data",
        DATA,
        "--target",
        "anxiety",
        "--rows",
        "scratch:anxiety,transfer:stress-emotion>anxiety",
        "--few",
        "1",
        "--epochs",
        "4",
        "--few-epochs",
        "15",
        "--lr",
        "2e-3",
        "--batch-size",
        "16",
        "--folds",
        "2",
        "--seeds",
        "1",
        "--threads",
        "1",
        "--out",
        str(tmp_path),
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / "fig7-seeds.csv", newline="") as f:
        runs = list(csv.DictReader(f))
    by = {(r["row"].split(":")[0], r["seed"]): r for r in runs}
    assert len(by) == 2
    for seed in ("1",):
        scratch, transfer = by[("scratch", seed)], by[("transfer", seed)]
        assert scratch["windows"] == transfer["windows"]  # the same held-out windows
        assert float(transfer["macro_f1"]) > float(scratch["macro_f1"]) + 0.05, (seed, scratch, transfer)
        assert float(transfer["balanced_accuracy"]) > max(0.5, float(scratch["balanced_accuracy"]))
