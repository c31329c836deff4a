"""Dataset layer, splits, metrics and Algorithm 1 on small hand-built and simulated window sets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from common.errors import UserError
from inference.dataset import Normalizer, WindowSet, windows_from_messages
from inference.metrics import confusion, macro_f1, task_scores
from inference.model import M3Sense, ModelConfig
from inference.sources import parse_source, source_windows
from inference.train import (
    TrainConfig,
    TrainResult,
    detailed_scores,
    init_model,
    predict_probs,
    resolve_groups,
    split_paper,
    split_subjects,
    to_tensors,
    train_model,
)
from tests.conftest import run_cli
from tests.model_helpers import one_torch_thread, quality, window  # noqa: F401  (autouse fixture)

CFG = ModelConfig(tasks=("stress", "anxiety", "emotion"), modalities=("bvp", "eda", "temp"))
SHAPES = {m: CFG.input_shape(m) for m in CFG.modalities}


def as_set(windows, source="test") -> WindowSet:
    return windows_from_messages(
        [w.to_message() for w in windows],
        modalities=CFG.modalities,
        shapes=SHAPES,
        tasks=CFG.tasks,
        classes=CFG.classes,
        source=source,
    )


def test_labels_become_indices_and_unknown_labels_are_masked():
    ws = as_set(
        [
            window(labels={"stress": "amusement", "emotion": "high"}),
            window(labels={"stress": "meditation"}),  # not a model class: no stress label
            window(labels={"anxiety": "low"}),
        ]
    )
    assert ws.labels.tolist() == [[2, -1, 1], [-1, -1, -1], [-1, 0, -1]]
    assert ws.labelled.tolist() == [True, False, True]


def test_absent_modality_and_low_quality_windows():
    ws = as_set(
        [
            window(present={"eda": False}),
            window(q=quality(off_wrist=True, usable=False)),
            window(q=quality(missing_fraction=0.8, usable=False)),
            window(present={"bvp": False, "eda": False, "temp": False}),  # nothing to run the model on
        ]
    )
    assert len(ws) == 1
    assert ws.present.tolist() == [[True, False, True]]
    assert ws.inputs["bvp"].shape == (1, 1280, 1) and ws.inputs["eda"].shape == (1, 80, 1)


def test_normalizer_per_window_and_global_and_json():
    ws = as_set([window(level=v, seed=i) for i, v in enumerate((0.0, 1.0, 2.0))])
    norm = Normalizer.fit(ws)
    bvp = norm.apply("bvp", ws.inputs["bvp"])
    np.testing.assert_allclose(bvp.mean(axis=(1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(bvp.std(axis=(1, 2)), 1, atol=1e-3)
    eda = norm.apply("eda", ws.inputs["eda"])
    assert abs(eda.mean()) < 1e-3 and eda[2].mean() > eda[0].mean()
    assert Normalizer.from_json(norm.to_json()) == norm
    nan = norm.apply("eda", np.full((1, 80, 1), np.nan, np.float32))
    assert np.isfinite(nan).all()


@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 4)), min_size=30, max_size=120))
@settings(max_examples=25, deadline=None)
def test_paper_split_is_a_stratified_partition(rows):
    labels = np.full((len(rows), 3), -1)
    for i, (c, _) in enumerate(rows):
        labels[i, 0] = c
    ws = WindowSet(
        modalities=("eda",),
        tasks=("stress", "anxiety", "emotion"),
        inputs={"eda": np.zeros((len(rows), 80, 1), np.float32)},
        present=np.ones((len(rows), 1), bool),
        labels=labels,
        groups=np.array([f"s{g}" for _, g in rows]),
        sources=np.array(["x"] * len(rows)),
        t0_s=np.zeros(len(rows)),
    )
    s = split_paper(ws, seed=333)
    parts = [s.train, s.val, s.test, s.unlabeled]
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(rows)))
    for c in range(3):
        n = int((labels[:, 0] == c).sum())
        if n >= 20:  # proportions hold per class (rounding aside)
            assert abs((labels[s.test, 0] == c).sum() - 0.55 * n) <= 1
            assert abs((labels[np.concatenate([s.train, s.val]), 0] == c).sum() - 0.35 * n) <= 1


def test_subject_split_never_shares_a_recording():
    ws = as_set([window(device=f"s{i % 6}", t0=10.0 * i, labels={"stress": "baseline"}, seed=i) for i in range(36)])
    s = split_subjects(ws, seed=1, test_fraction=0.3)
    train, val, test = (set(ws.groups[p]) for p in (s.train, s.val, s.test))
    assert test and train and not (train & test) and not (val & test) and not (train & val)
    s2 = split_subjects(ws, seed=1, test_groups=["s0", "s3"])
    assert set(ws.groups[s2.test]) == {"s0", "s3"}
    with pytest.raises(ValueError, match="matches none"):
        split_subjects(ws, seed=1, test_groups=["nobody"])
    # A bare name picks among the labelled recordings only: an unlabelled "u/s7" is no rival.
    both = WindowSet.concat(
        [
            as_set([window(device="a/s7", t0=10.0 * i, labels={"stress": "baseline"}, seed=i) for i in range(3)]),
            as_set([window(device="u/s7", t0=10.0 * i, labels={}, seed=i) for i in range(3)]),
            ws,
        ]
    )
    s3 = split_subjects(both, seed=1, test_groups=["s7"])
    assert set(both.groups[s3.test]) == {"a/s7"} and len(s3.unlabeled) == 3


def test_test_subjects_may_be_named_by_device_when_unambiguous():
    groups = np.array(["synthetic(seed=1)/sim01", "synthetic(seed=1)/sim02", "synthetic(seed=2)/sim01", "S5"])
    assert resolve_groups(["sim02", "S5", "synthetic(seed=2)/sim01"], groups) == [
        "synthetic(seed=1)/sim02",
        "S5",
        "synthetic(seed=2)/sim01",
    ]
    with pytest.raises(ValueError, match="matches several"):
        resolve_groups(["sim01"], groups)


def test_metrics_against_hand_counts():
    y = np.array([0, 0, 1, 1, 2, -1])
    p = np.array([0, 1, 1, 1, 0, 2])
    cm = confusion(y[y >= 0], p[y >= 0], 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    # F1: class0 2*1/(2+2)=0.5, class1 2*2/(2+3)=0.8, class2 0
    assert macro_f1(cm) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    s = task_scores(y, p, ("a", "b", "c"))
    assert s["n_windows"] == 5 and s["accuracy"] == pytest.approx(0.6)
    # recalls: a 1/2, b 2/2, c 0/1; the commonest true classes (a, b) hold 2 of 5
    assert s["balanced_accuracy"] == pytest.approx(0.5) and s["majority_accuracy"] == pytest.approx(0.4)


def tiny_cfg() -> ModelConfig:
    return ModelConfig(
        tasks=CFG.tasks,
        modalities=CFG.modalities,
        window_s=20.0,
        cnn_channels=(8, 4),
        embed_dim=16,
        lstm_hidden=16,
        fusion_dim=16,
        task_dim=32,
        fc_dims=(32, 16),
        latent_dim=8,
        head_hidden=16,
    )


def test_short_training_lowers_the_loss_and_learns():
    """A few epochs on a small set whose classes differ in EDA level and pulse rate."""
    stress = ("baseline", "stress", "amusement")
    wins = []
    for i in range(90):
        c = i % 3
        wins.append(
            window(
                device=f"s{i % 5}",
                t0=20.0 * i,
                level=float(c),
                seed=i,
                labels={"stress": stress[c], "anxiety": ("low", "high")[c == 1]} if i % 4 else {},
            )
        )
    ws = as_set(wins)
    cfg = tiny_cfg()
    norm = Normalizer.fit(ws)
    torch.manual_seed(0)
    labelled = np.flatnonzero(ws.labelled)
    res = train_model(
        M3Sense(cfg),
        TrainConfig(epochs=15, batch_size=16, lr=3e-3, seed=333),
        to_tensors(ws.subset(labelled), norm),
        None,
        to_tensors(ws.subset(np.flatnonzero(~ws.labelled)), norm),
    )
    ce = [h.ce for h in res.history]
    assert np.mean(ce[-3:]) < 0.75 * ce[0], ce
    probs = predict_probs(res.model, to_tensors(ws.subset(labelled), norm))
    scores = detailed_scores(ws.subset(labelled), probs, cfg.classes)
    assert scores["stress"]["accuracy"] > 0.7  # chance: 1/3
    assert scores["anxiety"]["accuracy"] > 0.7  # chance: 2/3 "low", so this needs both classes
    assert "emotion" not in scores  # no emotion labels: nothing to score
    assert set(scores["stress"]["per_subject"]) == {f"s{i}" for i in range(5)}
    # stress vs rest is the 3-class answer collapsed: right where "is it stress?" is answered right
    truth = ws.subset(labelled).labels[:, cfg.tasks.index("stress")]
    answer = probs["stress"].argmax(axis=1)
    judged = truth >= 0
    is_stress = stress.index("stress")
    expected = np.mean((truth[judged] == is_stress) == (answer[judged] == is_stress))
    assert scores["stress"]["stress_vs_rest"]["accuracy"] == pytest.approx(expected)
    assert scores["stress"]["stress_vs_rest"]["accuracy"] >= scores["stress"]["accuracy"]


def test_training_is_reproducible_with_the_seed():
    ws = as_set(
        [
            window(device=f"s{i % 3}", level=float(i % 2), seed=i, labels={"emotion": ("low", "high")[i % 2]})
            for i in range(24)
        ]
    )
    norm, cfg = Normalizer.fit(ws), tiny_cfg()
    runs: list[TrainResult] = []
    for _ in range(2):
        torch.manual_seed(len(runs))  # whatever the global RNG holds, the seed decides
        runs.append(
            train_model(init_model(cfg, 7), TrainConfig(epochs=2, batch_size=8, seed=7), to_tensors(ws, norm), None)
        )
    assert [h.loss for h in runs[0].history] == [h.loss for h in runs[1].history]
    for a, b in zip(runs[0].model.state_dict().values(), runs[1].model.state_dict().values()):
        assert torch.equal(a, b)


def test_train_command_gives_one_checkpoint_per_seed(tmp_path):
    """Two runs of one ``m3sense train`` command write byte-identical weights and scores."""
    outs = []
    for k in range(2):
        out = tmp_path / f"run{k}" / "model.safetensors"
        proc = run_cli(
            "train",
            "--data",
            "synthetic?minutes=2&subjects=3&seed=4",
            "--epochs",
            "1",
            "--threads",
            "1",
            "--no-cache",
            "--json",
            "--out",
            str(out),
            check=True,
        )
        outs.append((json.loads(proc.stdout), out.read_bytes()))
    assert outs[0] == outs[1]
    assert set(outs[0][0]) == {"stress", "anxiety", "emotion"}


def test_source_strings():
    src = parse_source("synthetic?minutes=3&subjects=2&seed=4&tasks=anxiety,emotion")
    assert src.synthetic and src.params == {"minutes": "3", "subjects": "2", "seed": "4"}
    assert src.tasks == ("anxiety", "emotion") and src.name == "synthetic(minutes=3,seed=4,subjects=2)"
    assert parse_source("synthetic").name == "synthetic(minutes=30,seed=1,subjects=4)"
    with pytest.raises(UserError, match="no such file"):
        parse_source("/nonexistent/wesad")
    with pytest.raises(UserError, match="only 'tasks='"):
        parse_source(".?minutes=3")


def test_simulated_source_through_the_preprocess_path(tmp_path):
    """Recordings → preprocess windows → arrays; the tasks filter keeps only those labels and
    the cache gives back the same set."""
    kw = dict(modalities=CFG.modalities, tasks=CFG.tasks, classes=CFG.classes, hop_s=20.0, cache_dir=tmp_path)
    src = parse_source("synthetic?minutes=6&subjects=1&seed=3&tasks=emotion")
    ws = source_windows(src, **kw)
    assert len(ws) >= 10 and ws.inputs["bvp"].shape[1:] == (1280, 1)
    assert (ws.labels[:, :2] == -1).all() and (ws.labels[:, 2] >= 0).any()
    assert all(g.startswith("synthetic(") and g.endswith("/sim01") for g in ws.groups)
    again = source_windows(src, **kw)
    assert np.array_equal(again.inputs["eda"], ws.inputs["eda"]) and np.array_equal(again.labels, ws.labels)
    assert not source_windows(src, unlabeled=True, **kw).labelled.any()
