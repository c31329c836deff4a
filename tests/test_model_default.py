"""The shipped default weights: what they say they learned from, and how they score on
subjects they never saw (synthetic ones here, the real WESAD ones where ../shared/data is)."""

from __future__ import annotations

import numpy as np
import pytest

from inference.checkpoint import DEFAULT_MODEL, load_checkpoint
from inference.metrics import score_all
from inference.predict import Predictor
from inference.sources import parse_source, source_windows
from inference.train import detailed_scores
from tests.conftest import WESAD, needs
from tests.model_helpers import one_torch_thread  # noqa: F401  (autouse fixture)

pytestmark = pytest.mark.skipif(not DEFAULT_MODEL.is_file(), reason="no default weights in this checkout")

#: Synthetic subjects no default-weights source used (training used seeds 11 and 12).
HELD_OUT_SYNTHETIC = "synthetic?minutes=30&subjects=4&seed=99"


@pytest.fixture(scope="module")
def ckpt():
    return load_checkpoint()


def probs_for(ckpt, ws):
    pred = Predictor(ckpt, backend="torch")
    parts = [
        pred.probs({m: ws.inputs[m][i : i + 128] for m in ckpt.config.modalities}, ws.present[i : i + 128])
        for i in range(0, len(ws), 128)
    ]
    return {t: np.concatenate([p[t] for p in parts]) for t in ckpt.config.tasks}


def windows(ckpt, spec, tmp_path):
    cfg = ckpt.config
    ws = source_windows(
        parse_source(spec),
        modalities=cfg.modalities,
        tasks=cfg.tasks,
        classes=cfg.classes,
        hop_s=20.0,
        cache_dir=tmp_path,
    )
    return ws.subset(np.flatnonzero(ws.labelled))


def test_provenance_names_every_source(ckpt):
    info = ckpt.info()
    assert info["fusion"] == "cam" and set(info["tasks"]) == {"stress", "anxiety", "emotion"}
    assert 0.9 * 2_251_000 < info["params"] < 1.1 * 2_251_000
    learned = info["provenance"]["tasks_learned_from"]
    assert learned["stress"] and all("wesad" in s for s in learned["stress"])
    for t in ("anxiety", "emotion"):
        assert learned[t] and all(s.startswith("synthetic") for s in learned[t])
    for sources in learned.values():
        assert set(sources) <= set(info["trained_on"])
    assert any(s.startswith("synthetic") and s.endswith("(unlabeled)") for s in info["trained_on"])
    assert not any("seed=99," in s or s.endswith("seed=99)") for s in info["trained_on"])
    assert info["provenance"]["seed"] == 333 and info["provenance"]["command"].startswith("m3sense train")
    assert DEFAULT_MODEL.stat().st_size < 20e6


def test_above_chance_on_held_out_synthetic_subjects(ckpt, tmp_path):
    """Four synthetic subjects no training source contained. Anxiety and emotion (learned from
    synthetic subjects) are well above guessing: macro-F1 and balanced accuracy well over 0.5,
    accuracy over always answering the commonest class. Stress learned from real WESAD only and
    transfers to simulated physiology only in part: above three-class guessing (1/3), no more."""
    ws = windows(ckpt, HELD_OUT_SYNTHETIC, tmp_path)
    scores = score_all(ws.labels, probs_for(ckpt, ws), ws.tasks, ckpt.config.classes)
    for task in ("anxiety", "emotion"):
        s = scores[task]
        assert s["macro_f1"] > 0.75 and s["balanced_accuracy"] > 0.75, s
        assert s["accuracy"] > s["majority_accuracy"] + 0.1, s
    stress = scores["stress"]
    assert stress["accuracy"] > 0.42 and stress["macro_f1"] > 0.42 and stress["balanced_accuracy"] > 0.42, stress


@needs(WESAD.is_dir(), reason=f"{WESAD} is absent (the real WESAD recordings are only in CI)")
def test_stress_on_held_out_wesad_subjects(ckpt, tmp_path):
    """The WESAD subjects the default weights were not trained on (their test part)."""
    held = [s for s in ckpt.provenance["test_subjects"] if (WESAD / s).is_dir()]
    assert held, ckpt.provenance["test_subjects"]
    from inference.dataset import WindowSet

    ws = WindowSet.concat([windows(ckpt, str(WESAD / s), tmp_path) for s in held])
    scores = detailed_scores(ws, probs_for(ckpt, ws), ckpt.config.classes)["stress"]
    assert scores["accuracy"] > 0.6, scores  # literature, wrist only: 63-76 %
    assert scores["stress_vs_rest"]["accuracy"] > 0.8, scores  # literature: 87-89 %
