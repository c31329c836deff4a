"""Which model answers which task, and the rules every answer follows.

An :class:`Answerer` holds one model per task: the M3Sense network (:class:`inference.Predictor`,
several tasks from one forward pass) or a feature model (:mod:`inference.baselines`). A bundle
file (``{"format": "m3sense-bundle", "tasks": {"stress": "stress-et.onnx", ...}}``, paths
relative to it) names them; the shipped default is one. Every answer follows the same rules:

- ``low_quality``: off the wrist or mostly missing (:func:`inference.dataset.is_low_quality`):
  no label, and the model is not run;
- ``calibrating``: the task's model reads features relative to the wearer and the wearer has
  no reference yet: no label;
- ``uncertain``: the model's calibrated confidence is below its ``min_confidence``: no label,
  the probabilities are still given;
- ``ok``: a label, with ``confidence`` the probability that it is right (temperature-scaled
  on held-out people).

The live node and ``evaluate`` call the same code (:meth:`Answerer.answer_windows` and
:meth:`Answerer.answer_set`), so a recording gives the same labels either way.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bus import Message
from common.errors import DataError, UserError
from common.jsonvalues import mapping_or_empty
from inference.calibration import CalibrationConfig, CalibrationStore, Calibrator, is_usable_for_reference
from inference.dataset import MAX_MISSING_FRACTION, is_low_quality, window_inputs

if TYPE_CHECKING:  # torch and onnxruntime load only when a model does
    from inference.baselines import FeatureModel
    from inference.predict import Predictor

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "m3sense-bundle"
#: What ``demo``, ``run``, ``infer`` and ``evaluate`` use without ``--model``.
DEFAULT_BUNDLE = Path(__file__).parent / "weights" / "m3sense-default.bundle.json"


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer:
    label: str | None
    confidence: float | None
    probs: Mapping[str, float]
    status: str
    model: str
    calibration: str | None

    def to_json(self) -> dict:
        return {
            "label": self.label,
            "confidence": self.confidence,
            "probs": dict(self.probs),
            "status": self.status,
            "model": self.model,
            "calibration": self.calibration,
        }


class Calibrations:
    """Per-device calibrators of one node, saved to ``store`` after every window while a device is
    still gathering its reference (a search or a marked rest under way) and whenever a reference
    changes, so a restart, even after a crash, answers exactly as an uninterrupted node would."""

    def __init__(self, config: CalibrationConfig, store: CalibrationStore | None = None) -> None:
        self.config, self.store = config, store
        self._by_device: dict[str, Calibrator] = {}
        self._unwritable = False

    def get(self, device: str) -> Calibrator:
        cal = self._by_device.get(device)
        if cal is None:
            cal = Calibrator(self.config)
            if self.store is not None:
                try:
                    cal = self.store.load(device, self.config)
                except (ValueError, KeyError, TypeError, OSError) as exc:
                    log.warning("calibration of %s not restored (%s): calibrating it again", device, exc)
            self._by_device[device] = cal
        return cal

    def push(self, msg: Message, features: np.ndarray):
        cal = self.get(msg.device)
        before = cal.reference
        quality = mapping_or_empty(msg.meta.get("quality"))
        tags = [t for t in (msg.meta.get("tags") or ()) if isinstance(t, (int, float))]
        ref = cal.push(
            t_start_s=msg.t0_s, usable=is_usable_for_reference(quality, self.config), features=features, tags_s=tags
        )
        if self.store is not None and (ref is not before or cal.gathering or tags):
            self._save(msg.device, cal)
        if ref is not before:
            log.info(
                "calibration of %s: reference %s (%d windows)",
                msg.device,
                ref.id if ref else None,
                ref.n_windows if ref else 0,
            )
        return ref

    def save_all(self) -> None:
        if self.store is not None:
            for device, cal in self._by_device.items():
                self._save(device, cal)

    def _save(self, device: str, cal: Calibrator) -> None:
        """A state folder that cannot be written costs the restart memory, not the answers:
        said once, then the node goes on."""
        if self.store is None:
            return
        try:
            self.store.save(device, cal)
        except OSError as exc:
            if not self._unwritable:
                log.error(
                    "calibration state cannot be kept in %s (%s): a restart will calibrate wearers again",
                    self.store.folder,
                    exc,
                )
            self._unwritable = True


class Answerer:
    """Answers windows for ``tasks`` with one model per task (see the module docstring)."""

    def __init__(
        self, models: Mapping[str, Predictor | FeatureModel], *, model_id: str, path: Path | None = None
    ) -> None:
        from inference.baselines import FeatureModel

        self.models = dict(models)
        self.tasks = tuple(self.models)
        self.model_id = model_id
        self.path = path
        self._features = {t: m for t, m in self.models.items() if isinstance(m, FeatureModel)}
        self._nets: dict[int, tuple[Predictor, list[str]]] = {}
        for t, m in self.models.items():
            if not isinstance(m, FeatureModel):
                self._nets.setdefault(id(m), (m, []))[1].append(t)
        if len(self._nets) > 1:
            raise DataError(
                path or "bundle", "a bundle may hold one M3Sense network (one forward pass answers its tasks)"
            )
        self._net = next(iter(self._nets.values()))[0] if self._nets else None
        configs = {m.calibration_config for m in self.models.values() if m.needs_reference}
        if len(configs) > 1:
            raise DataError(path or "bundle", "its models were calibrated with different settings")
        self.calibration_config: CalibrationConfig | None = next(iter(configs), None)
        self.classes = {
            t: m.classes if isinstance(m, FeatureModel) else tuple(m.classes[t]) for t, m in self.models.items()
        }

    @property
    def needs_features(self) -> bool:
        """Features are computed for feature models and for the wearers' calibration."""
        return bool(self._features) or self.calibration_config is not None

    def info(self) -> dict:
        from inference.baselines import FeatureModel

        return {
            "model": self.model_id,
            "path": str(self.path) if self.path else None,
            "calibration": self.calibration_config.to_json() if self.calibration_config else None,
            "tasks": {
                t: (
                    m.info()
                    if isinstance(m, FeatureModel)
                    else {"model": m.model_id, "kind": "m3sense", "classes": list(m.classes[t])}
                )
                for t, m in self.models.items()
            },
        }

    # ---- one code path: a batch of per-window arrays ------------------------------------------

    def _answer(self, inputs, present, features, ref_mean, ref_sd, ref_ids, low_quality) -> list[dict[str, Answer]]:
        n = len(low_quality)
        out: list[dict[str, Answer]] = [{} for _ in range(n)]
        ok = ~low_quality
        probs: dict[str, np.ndarray] = {}
        for net, tasks in self._nets.values():
            idx = np.flatnonzero(ok & (ref_ids != "") if net.needs_reference else ok)
            for t in tasks:
                probs[t] = np.zeros((n, len(self.classes[t])), np.float32)
            if len(idx):
                p = net.probs(
                    {m: inputs[m][idx] for m in net.modalities},
                    present[idx],
                    ref_mean[idx] if net.needs_reference else None,
                )
                for t in tasks:
                    probs[t][idx] = p[t]
        for t, fm in self._features.items():
            have = ok & (ref_ids != "") if fm.needs_reference else ok
            idx = np.flatnonzero(have)
            probs[t] = np.zeros((n, len(fm.classes)), np.float32)
            if len(idx):
                probs[t][idx] = fm.probs(
                    features[idx],
                    ref_mean[idx] if fm.needs_reference else None,
                    ref_sd[idx] if fm.needs_reference else None,
                )
        for t, model in self.models.items():
            mid = model.model_id
            needs_ref = bool(model.needs_reference)
            floor = self._features[t].min_confidence if t in self._features else 0.0
            for i in range(n):
                ref = (ref_ids[i] or None) if needs_ref else None
                if low_quality[i]:
                    out[i][t] = Answer(
                        label=None, confidence=None, probs={}, status="low_quality", model=mid, calibration=ref
                    )
                elif needs_ref and ref is None:
                    out[i][t] = Answer(
                        label=None, confidence=None, probs={}, status="calibrating", model=mid, calibration=None
                    )
                else:
                    pr = probs[t][i]
                    best = int(pr.argmax())
                    conf = float(pr[best])
                    sure = conf >= floor
                    out[i][t] = Answer(
                        label=self.classes[t][best] if sure else None,
                        confidence=conf,
                        probs={c: float(v) for c, v in zip(self.classes[t], pr)},
                        status="ok" if sure else "uncertain",
                        model=mid,
                        calibration=ref,
                    )
        return out

    def answer_windows(self, windows: Sequence[Message], calibrations: Calibrations | None) -> list[dict[str, Answer]]:
        """Live: window messages in arrival order (each device's in time order); the wearers'
        calibrators see every window, usable or not."""
        from inference.features import FEATURES, message_features

        n = len(windows)
        net = self._net
        mods = list(net.modalities) if net else []
        shapes = dict(net.shapes) if net else {}
        rows: dict[str, list[np.ndarray]] = {m: [] for m in mods}
        present = []
        for msg in windows:
            x, p = window_inputs(msg.arrays, msg.meta, mods, shapes)
            for m in mods:
                rows[m].append(x[m])
            present.append(p)
        inputs = {m: np.stack(v) for m, v in rows.items()} if n else {}
        present_arr = np.array(present, dtype=bool).reshape(n, len(mods))
        low = np.array(
            [is_low_quality(w.meta) or (bool(mods) and not p.any()) for w, p in zip(windows, present)], dtype=bool
        )
        f_count = len(FEATURES)
        features = np.full((n, f_count), np.nan, np.float32)
        ref_mean, ref_sd = np.full((n, f_count), np.nan, np.float32), np.full((n, f_count), np.nan, np.float32)
        ref_ids = np.full(n, "", dtype=object)
        if self.needs_features and n:
            # only the windows someone reads: an answer (not low quality) or a wearer's reference
            # (usable for it by the calibration's own rule); off-wrist stretches cost nothing
            read = [
                i
                for i, w in enumerate(windows)
                if not low[i]
                or (
                    calibrations is not None
                    and is_usable_for_reference(mapping_or_empty(w.meta.get("quality")), calibrations.config)
                )
            ]
            if len(read) == n:
                features = message_features(windows)
            elif read:
                features[read] = message_features([windows[i] for i in read])
            for i, msg in enumerate(windows):
                if calibrations is None:
                    continue
                ref = calibrations.push(msg, features[i])
                if ref is not None:
                    ref_mean[i], ref_sd[i], ref_ids[i] = ref.mean, ref.sd, ref.id
        return self._answer(inputs, present_arr, features, ref_mean, ref_sd, ref_ids.astype(str), low)

    def answer_set(self, ws) -> list[dict[str, Answer]]:
        """Offline: a :class:`inference.dataset.WindowSet` with references
        (:func:`inference.dataset.with_references`)."""
        net = self._net
        present = (
            ws.present[:, [ws.modalities.index(m) for m in net.modalities]] if net else np.zeros((len(ws), 0), bool)
        )
        inputs = {m: ws.inputs[m] for m in (net.modalities if net else ())}
        low = (ws.off_wrist | (ws.missing > MAX_MISSING_FRACTION)) | ~ws.present.any(axis=1)
        return self._answer(inputs, present, ws.features, ws.ref_mean, ws.ref_sd, ws.ref_id.astype(str), low)


def _kind_of(path: Path) -> str:
    if path.suffix == ".onnx":
        return "feature"
    if path.suffix == ".safetensors" or (not path.exists() and path.with_suffix(".safetensors").exists()):
        return "m3sense"  # a checkpoint, named by its weights or by its common stem
    try:
        fmt = json.loads(path.read_text()).get("format")
    except (OSError, ValueError, AttributeError) as exc:
        raise UserError(f"--model {path}: cannot read it ({exc})") from exc
    return {BUNDLE_FORMAT: "bundle", "m3sense-feature-model": "feature"}.get(fmt, "m3sense")


def load_answerer(
    path: Path | None = None, *, tasks: Sequence[str] | None = None, backend: str = "onnx", threads: int | None = None
) -> Answerer:
    """An M3Sense checkpoint, a feature model (``.onnx``) or a bundle (``.bundle.json``);
    the shipped default bundle when ``path`` is None. ``tasks`` keeps only those tasks."""
    from inference.baselines import load_feature_model
    from inference.checkpoint import load_checkpoint
    from inference.predict import Predictor

    path = Path(path) if path is not None else DEFAULT_BUNDLE
    if not path.exists() and not path.with_suffix(".json").exists():
        raise UserError(f"--model {path}: no such file")
    kind = _kind_of(path)
    nets: dict[Path, Predictor] = {}

    def net(p: Path, want: Sequence[str] | None) -> Predictor:
        if p not in nets:
            nets[p] = Predictor(load_checkpoint(p), tasks=want, backend=backend, threads=threads)
        return nets[p]

    if kind == "bundle":
        spec = json.loads(path.read_text())
        parts = {t: (path.parent / rel) for t, rel in dict(spec.get("tasks", {})).items()}
        chosen = [t for t in parts if tasks is None or t in tasks]
        missing = [t for t in (tasks or ()) if t not in parts]
        if missing or not chosen:
            raise UserError(f"--tasks: the model answers {list(parts)}")
        by_file: dict[Path, list[str]] = {}
        for t in chosen:
            by_file.setdefault(parts[t], []).append(t)
        models: dict[str, Predictor | FeatureModel] = {}
        for p, ts in by_file.items():
            if _kind_of(p) == "feature":
                fm = load_feature_model(p)
                for t in ts:
                    if fm.task != t:
                        raise DataError(path, f"{p.name} answers {fm.task}, not {t}")
                    models[t] = fm
            else:
                n = net(p, ts)
                models.update({t: n for t in ts})
        models = {t: models[t] for t in chosen}
        ids = "|".join(f"{t}={m.model_id}" for t, m in models.items())
        model_id = f"{spec.get('name', 'bundle')}-{hashlib.sha1(ids.encode()).hexdigest()[:12]}"
        return Answerer(models, model_id=model_id, path=path)
    if kind == "feature":
        fm = load_feature_model(path)
        if tasks is not None and tuple(tasks) != (fm.task,):
            raise UserError(f"--tasks: {path} answers {fm.task} only")
        return Answerer({fm.task: fm}, model_id=fm.model_id, path=path)
    pred = net(path, tasks)
    return Answerer({t: pred for t in pred.tasks}, model_id=pred.model_id, path=path)
