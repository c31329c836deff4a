"""Feature baselines (the paper's Table 2: RF, ET, DT, LDA, LR, SVM) on standard wrist features.

They are the reference every deep model must beat and fast models in their own right. A
model is a scikit-learn pipeline (median imputation → standardisation → classifier) per task,
fitted on :mod:`inference.features`, either absolute (``calibration: none``) or relative to
the wearer's reference (``calibration: wearer``, :func:`inference.calibration.relative_features`).

Stored as ``NAME.onnx`` (the pipeline converted by skl2onnx; loading it executes no code,
unlike a pickle) beside ``NAME.json`` (kind, task, classes, features, calibration mode and
settings, the per-feature floors, the confidence temperature and threshold, provenance).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inference.calibration import CalibrationConfig, relative_features
from inference.features import FEATURES

KINDS = ("rf", "et", "dt", "lda", "lr", "svm", "ens")
FORMAT = "m3sense-feature-model"
#: A wearer's reference SD below this share of the population SD is raised to it.
FLOOR_SHARE = 0.1


def make_estimator(kind: str, seed: int):
    """An unfitted pipeline for ``kind``; class weights balanced (WESAD has about four
    baseline windows for one amusement window). ``ens`` averages the probabilities of RF, ET,
    LDA and LR (soft voting): their errors differ, and one of them alone swings by several
    points between feature sets on ten people."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier, VotingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC
    from sklearn.tree import DecisionTreeClassifier

    clf = {
        "ens": lambda: VotingClassifier(
            [(k, make_estimator(k, seed).steps[-1][1]) for k in ("rf", "et", "lda", "lr")],
            voting="soft",
            flatten_transform=False,
        ),
        "rf": lambda: RandomForestClassifier(
            200, min_samples_leaf=3, class_weight="balanced", random_state=seed, n_jobs=1
        ),
        "et": lambda: ExtraTreesClassifier(
            200, min_samples_leaf=3, class_weight="balanced", random_state=seed, n_jobs=1
        ),
        "dt": lambda: DecisionTreeClassifier(
            max_depth=8, min_samples_leaf=10, class_weight="balanced", random_state=seed
        ),
        "lda": lambda: LinearDiscriminantAnalysis(),
        "lr": lambda: LogisticRegression(max_iter=2000, class_weight="balanced"),
        "svm": lambda: SVC(C=1.0, probability=True, class_weight="balanced", random_state=seed),
    }
    if kind not in clf:
        raise ValueError(f"model kind must be one of {KINDS}, not {kind!r}")
    return make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler(), clf[kind]())


def feature_floor(features: np.ndarray) -> np.ndarray:
    """(F,) per-feature floor for the reference SD: a share of the population SD."""
    with np.errstate(all="ignore"):
        sd = np.nanstd(features, axis=0)
    return np.where(np.isfinite(sd) & (sd > 0), FLOOR_SHARE * sd, 1e-6).astype(np.float32)


def model_inputs(
    features: np.ndarray,
    ref_mean: np.ndarray | None,
    ref_sd: np.ndarray | None,
    calibrated: bool,
    floor: np.ndarray | None,
) -> np.ndarray:
    """What a feature model reads: absolute features, or features relative to the reference."""
    if not calibrated:
        return np.asarray(features, dtype=np.float32)
    if ref_mean is None or ref_sd is None or floor is None:
        raise ValueError("calibrated feature inputs need the wearers' references and the model's floor")
    return relative_features(features, ref_mean, ref_sd, floor)


def scaled(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Temperature scaling of probabilities: softmax(log p / T)."""
    logp = np.log(np.clip(probs, 1e-7, 1.0)) / temperature
    logp -= logp.max(axis=1, keepdims=True)
    e = np.exp(logp)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The T minimising the negative log-likelihood of held-out probabilities (grid then
    refine: one parameter, so no optimiser is needed)."""

    def nll(t: float) -> float:
        p = scaled(probs, t)[np.arange(len(y)), y]
        return float(-np.log(np.clip(p, 1e-9, 1)).mean())

    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 120))
    best = grid[int(np.argmin([nll(t) for t in grid]))]
    fine = np.linspace(best / 1.07, best * 1.07, 41)
    return float(fine[int(np.argmin([nll(t) for t in fine]))])


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 10) -> tuple[float, list[dict]]:
    """ECE (the bin-weighted gap between confidence and accuracy) and the reliability bins."""
    conf = probs.max(axis=1)
    right = probs.argmax(axis=1) == y
    edges = np.linspace(0, 1, bins + 1)
    ece, table = 0.0, []
    for lo, hi in itertools.pairwise(edges):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            gap = abs(right[sel].mean() - conf[sel].mean())
            ece += sel.mean() * gap
            table.append(
                {
                    "lo": float(lo),
                    "hi": float(hi),
                    "n": int(sel.sum()),
                    "confidence": float(conf[sel].mean()),
                    "accuracy": float(right[sel].mean()),
                }
            )
    return float(ece), table


@dataclass(frozen=True, slots=True, kw_only=True)
class FeatureModel:
    """A fitted feature model for one task, run with ONNX Runtime."""

    kind: str
    task: str
    classes: tuple[str, ...]
    calibration: str  # "wearer" or "none"
    calibration_config: CalibrationConfig | None
    floor: np.ndarray | None
    temperature: float
    min_confidence: float
    provenance: Mapping
    model_id: str
    path: Path
    _session: Any  # an onnxruntime InferenceSession (onnxruntime ships no annotations)

    @property
    def needs_reference(self) -> bool:
        return self.calibration == "wearer"

    def probs(
        self, features: np.ndarray, ref_mean: np.ndarray | None = None, ref_sd: np.ndarray | None = None
    ) -> np.ndarray:
        """(B, classes) calibrated probabilities for (B, F) features (and references)."""
        x = model_inputs(features, ref_mean, ref_sd, self.needs_reference, self.floor)
        if not len(x):
            return np.zeros((0, len(self.classes)), np.float32)
        out = self._session.run(None, {"features": np.ascontiguousarray(x, dtype=np.float32)})
        p = np.asarray(out[1], dtype=np.float64)
        return scaled(p, self.temperature).astype(np.float32)

    def info(self) -> dict:
        return {
            "model": self.model_id,
            "path": str(self.path),
            "kind": self.kind,
            "task": self.task,
            "classes": list(self.classes),
            "calibration": self.calibration,
            "temperature": self.temperature,
            "min_confidence": self.min_confidence,
            "provenance": dict(self.provenance),
        }


def save_feature_model(
    path: str | Path,
    pipeline,
    *,
    kind: str,
    task: str,
    classes: Sequence[str],
    calibrated: bool,
    calibration: CalibrationConfig | None,
    floor: np.ndarray | None,
    temperature: float,
    min_confidence: float,
    provenance: Mapping,
) -> Path:
    """Write ``NAME.onnx`` and ``NAME.json``; returns the ONNX path."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    path = Path(path).with_suffix(".onnx")
    path.parent.mkdir(parents=True, exist_ok=True)
    onx = to_onnx(
        pipeline,
        initial_types=[("features", FloatTensorType([None, len(FEATURES)]))],
        options={id(pipeline.steps[-1][1]): {"zipmap": False}},
        target_opset=17,
    )
    blob = onx.SerializeToString()
    path.write_bytes(blob)
    meta = {
        "format": FORMAT,
        "version": 1,
        "kind": kind,
        "task": task,
        "classes": list(classes),
        "features": list(FEATURES),
        "calibration": "wearer" if calibrated else "none",
        "calibration_config": calibration.to_json() if calibrated and calibration else None,
        "floor": [float(v) for v in floor] if floor is not None else None,
        "temperature": float(temperature),
        "min_confidence": float(min_confidence),
        "sha256": hashlib.sha256(blob).hexdigest(),
        "provenance": dict(provenance),
    }
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    return path


def load_feature_model(path: str | Path) -> FeatureModel:
    """Load ``NAME.onnx`` + ``NAME.json``; refuses a model whose bytes are not the ones its
    JSON names, or that was fitted on other features."""
    import onnxruntime as ort

    from common.errors import DataError

    onnx_path = Path(path).with_suffix(".onnx")
    meta_path = onnx_path.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text())
        blob = onnx_path.read_bytes()
    except (OSError, ValueError) as exc:
        raise DataError(onnx_path, str(exc)) from exc
    if meta.get("format") != FORMAT:
        raise DataError(meta_path, "not an m3sense feature model")
    if meta.get("features") != list(FEATURES):
        raise DataError(meta_path, "fitted on other features than this version computes")
    digest = hashlib.sha256(blob).hexdigest()
    if digest != meta.get("sha256"):
        raise DataError(onnx_path, f"the weights are not the ones {meta_path.name} describes")
    t = float(meta.get("temperature", 1.0))
    if not (math.isfinite(t) and t > 0):
        raise DataError(meta_path, f"bad temperature {t}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3  # skl2onnx graphs carry an unused initializer ORT warns about on every load
    sess = ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])
    cal = meta.get("calibration_config")
    return FeatureModel(
        kind=meta["kind"],
        task=meta["task"],
        classes=tuple(meta["classes"]),
        calibration=meta["calibration"],
        calibration_config=CalibrationConfig(**cal) if cal else None,
        floor=np.array(meta["floor"], dtype=np.float32) if meta.get("floor") else None,
        temperature=t,
        min_confidence=float(meta.get("min_confidence", 0.0)),
        provenance=meta.get("provenance", {}),
        model_id=f"{meta['kind']}-{meta['task']}-{digest[:12]}",
        path=onnx_path,
        _session=sess,
    )


def fold_groups(groups: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """Recordings split into ``folds`` parts, the same for every model of one run."""
    order = np.unique(groups)
    order = order[np.random.default_rng(seed).permutation(len(order))]
    return [f for f in np.array_split(order, folds) if len(f)]


def cross_validate(
    features: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    folds: Sequence[np.ndarray],
    *,
    kind: str,
    seed: int,
    ref_mean=None,
    ref_sd=None,
    calibrated: bool,
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Leave-subjects-out: per fold, fit on the other recordings and predict this fold's.
    Returns out-of-fold probabilities (N, C) (calibrated by a temperature fitted on the other
    folds' out-of-fold outputs, so no window calibrates its own confidence), the raw ones, and
    the per-fold temperatures."""
    n_classes = int(y.max()) + 1
    raw = np.zeros((len(y), n_classes))
    fold_of = np.full(len(y), -1)
    for k, fold in enumerate(folds):
        test = np.isin(groups, fold)
        train = ~test
        floor = feature_floor(features[train]) if calibrated else None
        x = model_inputs(features, ref_mean, ref_sd, calibrated, floor)
        est = make_estimator(kind, seed).fit(x[train], y[train])
        p = np.zeros((int(test.sum()), n_classes))
        p[:, est.classes_] = est.predict_proba(x[test])
        raw[test] = p
        fold_of[test] = k
    temps, cal = [], np.zeros_like(raw)
    for k in range(len(folds)):
        here = fold_of == k
        t = fit_temperature(raw[~here], y[~here]) if (~here).any() else 1.0
        temps.append(t)
        cal[here] = scaled(raw[here], t)
    return cal, raw, temps
