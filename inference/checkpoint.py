"""Checkpoints: ``NAME.safetensors`` (weights) beside ``NAME.json`` (everything else).

The JSON holds the architecture (:class:`ModelConfig`), the input contract (modalities,
rates, window length), the normalisation statistics and the provenance (data sources, per
task what it learned from, seed, command, code version, held-out scores). Weights are read
with safetensors only, which cannot execute code; nothing here unpickles anything.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from common.errors import DataError
from inference.dataset import Normalizer
from inference.model import MODALITY_FS_HZ, M3Sense, ModelConfig, count_parameters

FORMAT = "m3sense-checkpoint"
FORMAT_VERSION = 1
#: The weights shipped in the package: what ``demo``, ``infer`` and ``evaluate`` use by default.
DEFAULT_MODEL = Path(__file__).parent / "weights" / "m3sense-default.safetensors"


@dataclass(frozen=True, slots=True, kw_only=True)
class Checkpoint:
    """A loaded checkpoint: the model in eval mode and what is needed to feed it."""

    model: M3Sense
    normalizer: Normalizer
    provenance: Mapping
    model_id: str  # "m3sense-<fusion>-<first 12 hex of the weights' sha256>"
    path: Path

    @property
    def config(self) -> ModelConfig:
        return self.model.cfg

    def info(self) -> dict:
        """What ``m3sense model info`` prints."""
        cfg = self.config
        return {
            "model": self.model_id,
            "path": str(self.path),
            "params": count_parameters(self.model),
            "fusion": cfg.fusion,
            "tasks": {t: list(cfg.classes[t]) for t in cfg.tasks},
            "modalities": list(cfg.modalities),
            "window_s": cfg.window_s,
            "trained_on": list(self.provenance.get("trained_on", [])),
            "provenance": dict(self.provenance),
        }


def _pair(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def code_version() -> str:
    """Package version plus the git commit (and '+dirty') when run from a checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("m3sense")
    except PackageNotFoundError:
        v = "unknown"
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return f"{v}+g{head}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return v


def save_checkpoint(path: str | Path, model: M3Sense, normalizer: Normalizer, provenance: Mapping) -> Path:
    """Write both files; returns the weights path."""
    from safetensors.torch import save_file

    weights, config = _pair(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(weights), metadata={"format": FORMAT})
    cfg = model.cfg
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": cfg.to_json(),
        "inputs": {
            "window_s": cfg.window_s,
            "fs_hz": {m: MODALITY_FS_HZ[m] for m in cfg.modalities},
            "shapes": {m: list(cfg.input_shape(m)) for m in cfg.modalities},
        },
        "normalisation": normalizer.to_json(),
        "params": count_parameters(model),
        "provenance": {
            "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "code_version": code_version(),
            **provenance,
        },
    }
    config.write_text(json.dumps(doc, indent=2) + "\n")
    return weights


def load_checkpoint(path: str | Path | None = None) -> Checkpoint:
    """Load a checkpoint (the shipped default weights when ``path`` is None) in eval mode.

    ``path`` may name the ``.safetensors`` file, the ``.json`` or their common stem.
    Raises :class:`DataError` for a missing, foreign or inconsistent checkpoint.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights, config = _pair(DEFAULT_MODEL if path is None else path)
    for f in (weights, config):
        if not f.is_file():
            raise DataError(f, "no such checkpoint file (a checkpoint is NAME.safetensors beside NAME.json)")
    try:
        doc = json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(config, f"not JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise DataError(config, f"not an {FORMAT} file")
    if doc.get("format_version") != FORMAT_VERSION:
        raise DataError(config, f"checkpoint format {doc.get('format_version')}, this code reads {FORMAT_VERSION}")
    try:
        cfg = ModelConfig.from_json(doc["model"])
        normalizer = Normalizer.from_json(doc["normalisation"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(config, f"bad model config: {exc}") from exc
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise DataError(weights, f"unreadable safetensors file: {exc}") from exc
    model = M3Sense(cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise DataError(weights, f"weights do not fit the config in {config.name}: {exc}") from exc
    model.eval()
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
    return Checkpoint(
        model=model,
        normalizer=normalizer,
        provenance=doc.get("provenance", {}),
        model_id=f"m3sense-{cfg.fusion}-{digest}",
        path=weights,
    )
