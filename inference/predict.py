"""Answering windows: raw window arrays in, class probabilities and the affect message meta out.

:class:`Predictor` is what the inference node and ``demo`` call. It normalises with the
checkpoint's statistics and runs either ONNX Runtime (the default: about twice as fast as
eager PyTorch on this CPU, see ``bench/bench_inference.py``) or PyTorch; both give the same
probabilities to float precision (``tests/test_model_checkpoint.py``).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from bus import Message
from inference.baselines import scaled
from inference.checkpoint import Checkpoint
from inference.dataset import reference_levels

if TYPE_CHECKING:
    from inference.answer import Answer

BACKENDS = ("onnx", "torch")


class Predictor:
    """Probabilities per task for batches of windows, from one checkpoint.

    ``tasks``: the subset to compute (default all the model's tasks): fewer tasks, less work.
    ``backend``: "onnx" (exported once per model and task subset into a cache folder) or
    "torch". ``threads``: intra-op threads of either backend (None: the library default).
    """

    def __init__(
        self,
        checkpoint: Checkpoint,
        *,
        tasks: Sequence[str] | None = None,
        backend: str = "onnx",
        threads: int | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
        self.checkpoint = checkpoint
        self.tasks, _ = checkpoint.model.task_indices(tasks)
        self.backend = backend
        cfg = checkpoint.config
        self.modalities = cfg.modalities
        self.shapes = {m: cfg.input_shape(m) for m in cfg.modalities}
        self.classes = {t: tuple(cfg.classes[t]) for t in self.tasks}
        #: per task the confidence temperature fitted on held-out people (1: none fitted)
        fitted = (checkpoint.provenance.get("confidence") or {}).get("temperature") or {}
        self.temperature = {t: float(fitted.get(t, 1.0)) for t in self.tasks}
        if backend == "onnx":
            from inference.onnx_export import OnnxRunner, export_onnx

            cache = cache_dir or Path(tempfile.gettempdir()) / "m3sense-onnx"
            key = hashlib.sha1(f"{checkpoint.model_id}|{','.join(self.tasks)}".encode()).hexdigest()[:16]
            path = cache / f"{checkpoint.model_id}-{key}.onnx"
            if not path.is_file():
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                export_onnx(checkpoint.model, tmp, self.tasks)
                tmp.replace(path)
            self._onnx = OnnxRunner(path, threads=threads)
        elif threads:
            torch.set_num_threads(threads)

    @property
    def model_id(self) -> str:
        return self.checkpoint.model_id

    @property
    def calibration_config(self):
        """The calibration settings a calibrated checkpoint was trained with (None otherwise)."""
        from inference.calibration import CalibrationConfig

        cal = self.checkpoint.provenance.get("calibration")
        return CalibrationConfig(**cal) if self.needs_reference and cal else None

    @property
    def needs_reference(self) -> bool:
        """The network reads some inputs relative to the wearer (a calibrated checkpoint)."""
        return bool(self.checkpoint.normalizer.relative)

    def probs(
        self, inputs: Mapping[str, np.ndarray], present: np.ndarray, ref_mean: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """``inputs[m]``: (B, samples, channels) in sensor units; ``present``: (B, M) bool in
        the model's modality order; ``ref_mean`` (B, F) the wearers' reference features, needed
        by a calibrated checkpoint. Returns (B, classes) float32 per task."""
        norm = self.checkpoint.normalizer
        levels = reference_levels(ref_mean, norm.relative) if norm.relative else {}
        x = {m: norm.apply(m, inputs[m], levels.get(m)) for m in self.modalities}
        present = np.asarray(present, dtype=bool)
        if self.backend == "onnx":
            probs = self._onnx.run(x, present)
        else:
            with torch.no_grad():
                out = self.checkpoint.model(
                    {m: torch.from_numpy(v) for m, v in x.items()}, torch.from_numpy(present), self.tasks
                )
            probs = {t: torch.softmax(out.logits[t], dim=-1).numpy() for t in self.tasks}
        return {
            t: scaled(p, self.temperature[t]).astype(np.float32) if self.temperature[t] != 1.0 else p
            for t, p in probs.items()
        }

    def predict_messages(self, windows: Sequence[Message]) -> list[dict[str, dict]]:
        """The ``tasks`` field of the affect message for each window message: per task
        ``{"label", "confidence", "probs", "status", "model", "calibration"}``, by the rules of
        :class:`inference.answer.Answerer` (low-quality windows are not run through the model)."""
        from inference.answer import Answerer

        answerer = Answerer({t: self for t in self.tasks}, model_id=self.model_id)
        return [{t: a.to_json() for t, a in answers.items()} for answers in answerer.answer_windows(windows, None)]


@dataclass(frozen=True, slots=True, kw_only=True)
class AffectMeta:
    """What an ``affect`` message says about one window (notes/interfaces.md), typed up to the
    bus: the answers stay :class:`inference.answer.Answer` records until :meth:`to_meta`
    writes the wire form that storage reads back (and checks, as it does any bus input)."""

    t_end_s: float
    t_start_s: float
    model: str
    source: str
    quality: Mapping[str, Any]
    answers: Mapping[str, Answer]
    #: a replayed window's ground truth per task, so stores keep prediction and truth side by side
    labels: Mapping[str, str | None] | None = None

    @classmethod
    def for_window(cls, window: Message, answers: Mapping[str, Answer], model_id: str) -> AffectMeta:
        truth = window.meta.get("labels")
        return cls(
            t_end_s=float(window.meta.get("t_end", window.t0_s)),
            t_start_s=float(window.t0_s),
            model=model_id,
            source=window.meta.get("source", "live"),
            quality=dict(window.meta.get("quality") or {}),
            answers=dict(answers),
            labels=dict(truth) if isinstance(truth, Mapping) and any(v is not None for v in truth.values()) else None,
        )

    def to_meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "t_end": self.t_end_s,
            "t_start": self.t_start_s,
            "model": self.model,
            "source": self.source,
            "quality": dict(self.quality),
            "tasks": {t: a.to_json() for t, a in self.answers.items()},
        }
        if self.labels is not None:
            meta["labels"] = dict(self.labels)
        return meta


def affect_meta(window: Message, answers: Mapping[str, Answer], model_id: str) -> dict[str, Any]:
    """The meta of the ``affect`` message answering ``window``: :class:`AffectMeta`'s wire form."""
    return AffectMeta.for_window(window, answers, model_id).to_meta()
