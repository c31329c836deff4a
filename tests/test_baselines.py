"""Feature baselines: every kind fits, ships as ONNX that answers as scikit-learn does, refuses
tampered files; confidence calibration does what it says."""

from __future__ import annotations

import json

import numpy as np
import pytest

from common.errors import DataError
from inference.baselines import (
    KINDS,
    cross_validate,
    expected_calibration_error,
    feature_floor,
    fit_temperature,
    fold_groups,
    load_feature_model,
    make_estimator,
    model_inputs,
    save_feature_model,
    scaled,
)
from inference.calibration import CalibrationConfig
from inference.features import FEATURES


def toy(n_per: int = 40, people: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three classes that differ in two features, on top of a per-person offset."""
    rng = np.random.default_rng(seed)
    parts: list[np.ndarray] = []
    y: list[int] = []
    g: list[str] = []
    for p in range(people):
        offset = rng.normal(0, 3, len(FEATURES))
        for c in range(3):
            f = rng.normal(0, 1, (n_per, len(FEATURES))) + offset
            f[:, 0] += 3 * c
            f[:, 5] -= 2 * c
            parts.append(f)
            y += [c] * n_per
            g += [f"p{p}"] * n_per
    x = np.concatenate(parts).astype(np.float32)
    x[::17, 11] = np.nan  # windows without beats
    return x, np.array(y), np.array(g)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_ships_as_onnx_and_answers_as_sklearn(kind, tmp_path):
    x, y, _ = toy()
    est = make_estimator(kind, seed=1).fit(x, y)
    path = save_feature_model(
        tmp_path / f"m-{kind}.onnx",
        est,
        kind=kind,
        task="stress",
        classes=("baseline", "stress", "amusement"),
        calibrated=False,
        calibration=None,
        floor=None,
        temperature=1.0,
        min_confidence=0.5,
        provenance={"test": True},
    )
    fm = load_feature_model(path)
    assert fm.task == "stress" and not fm.needs_reference and fm.model_id.startswith(f"{kind}-stress-")
    np.testing.assert_allclose(fm.probs(x[:50]), est.predict_proba(x[:50]), atol=2e-4)


def test_a_calibrated_model_reads_features_relative_to_the_wearer(tmp_path):
    x, y, g = toy()
    mean = np.stack([x[g == p].mean(axis=0) for p in g])
    sd = np.stack([x[g == p].std(axis=0) for p in g])
    floor = feature_floor(x)
    est = make_estimator("lr", 1).fit(model_inputs(x, mean, sd, True, floor), y)
    path = save_feature_model(
        tmp_path / "cal.onnx",
        est,
        kind="lr",
        task="stress",
        classes=("a", "b", "c"),
        calibrated=True,
        calibration=CalibrationConfig(),
        floor=floor,
        temperature=2.0,
        min_confidence=0.5,
        provenance={},
    )
    fm = load_feature_model(path)
    assert fm.needs_reference and fm.calibration_config == CalibrationConfig()
    expect = scaled(est.predict_proba(model_inputs(x[:20], mean[:20], sd[:20], True, floor)), 2.0)
    np.testing.assert_allclose(fm.probs(x[:20], mean[:20], sd[:20]), expect, atol=2e-4)


def test_tampered_or_foreign_files_are_refused(tmp_path):
    x, y, _ = toy()
    path = save_feature_model(
        tmp_path / "m.onnx",
        make_estimator("dt", 1).fit(x, y),
        kind="dt",
        task="stress",
        classes=("a", "b", "c"),
        calibrated=False,
        calibration=None,
        floor=None,
        temperature=1.0,
        min_confidence=0.0,
        provenance={},
    )
    blob = bytearray(path.read_bytes())
    blob[-5] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="not the ones"):
        load_feature_model(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["features"] = meta["features"][:-1]
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="other features"):
        load_feature_model(path)


def test_temperature_undoes_known_overconfidence():
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 2, (4000, 3))
    true_p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(3, p=p) for p in true_p])
    over = scaled(true_p, 0.5)  # twice as sharp as the truth
    t = fit_temperature(over, y)
    assert t == pytest.approx(2.0, rel=0.15)
    assert expected_calibration_error(scaled(over, t), y)[0] < 0.03 < expected_calibration_error(over, y)[0]


def test_leave_subjects_out_never_trains_on_the_test_person():
    x, y, g = toy()
    folds = fold_groups(g, 3, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == sorted(set(g.tolist()))
    cal, _raw, temps = cross_validate(x, y, g, folds, kind="lr", seed=0, calibrated=False)
    assert cal.shape == (len(y), 3) and len(temps) == 3
    np.testing.assert_allclose(cal.sum(axis=1), 1.0, atol=1e-6)
    assert (cal.argmax(1) == y).mean() > 0.5  # the class signal carries across people (chance: 1/3)


def test_train_table_then_ship_and_evaluate_a_feature_model(tmp_path):
    """The CLI end to end on simulated wearers who mark their rest: one table over the same
    windows and folds, a shipped ONNX model, and evaluate running it with calibration."""
    from tests.conftest import run_cli

    data = "synthetic?minutes=25&subjects=3&seed=5&mark_rest=true"
    table = json.loads(
        run_cli(
            "train",
            "--model",
            "lr,dt",
            "--data",
            data,
            "--tasks",
            "stress",
            "--folds",
            "3",
            "--calibration",
            "both",
            "--json",
            "--no-cache",
            timeout=600,
            check=True,
        ).stdout
    )
    assert set(table["rows"]) == {"lr (wearer)", "lr (absolute)", "dt (wearer)", "dt (absolute)"}
    sizes = {row["stress"]["n_windows"] for row in table["rows"].values()}
    assert len(sizes) == 1 and sizes.pop() > 50  # the same windows for every row
    out = tmp_path / "stress-lr.onnx"
    run_cli(
        "train",
        "--model",
        "lr",
        "--data",
        data,
        "--tasks",
        "stress",
        "--out",
        str(out),
        "--no-cache",
        timeout=600,
        check=True,
    )
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["calibration"] == "wearer" and meta["provenance"]["held_out"]["n_windows"] > 50
    scores = json.loads(
        run_cli("evaluate", "--model", str(out), "--data", data, "--json", "--no-cache", timeout=600, check=True).stdout
    )["stress"]
    assert scores["model"].startswith("lr-stress-") and scores["coverage"]["calibrating"] > 0
    assert scores["n_windows"] == scores["coverage"]["ok"] + scores["coverage"]["uncertain"]
    # in-sample (the model learned these people): a check of the plumbing, not of the model
    assert 0 <= scores["ece"] <= 1 and scores["accuracy"] > 0.6
