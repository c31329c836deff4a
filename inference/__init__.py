"""M3Sense inference: the network, training (Algorithm 1), evaluation, checkpoints, prediction.

What the inference node and ``demo`` use::

    ckpt = load_checkpoint()            # the shipped default weights (or a path)
    pred = Predictor(ckpt, tasks=("stress",), backend="onnx")
    results = pred.predict_messages(window_messages)   # per window: {task: {label, confidence, probs, status}}
    meta = affect_meta(window_message, results[0], pred.model_id)

The names below are imported on first use: ``inference.cli`` lives in this package and
``m3sense --help`` must not pay for importing torch.
"""

from importlib import import_module

_WHERE = {
    "DEFAULT_MODEL": "checkpoint", "Checkpoint": "checkpoint", "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "MAX_MISSING_FRACTION": "dataset", "Normalizer": "dataset", "WindowSet": "dataset", "is_low_quality": "dataset",
    "windows_from_messages": "dataset",
    "FUSIONS": "model", "M3Sense": "model", "ModelConfig": "model", "ModelOutput": "model",
    "count_parameters": "model", "kl_to_standard_normal": "model",
    "Predictor": "predict", "affect_meta": "predict",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(import_module(f"inference.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'inference' has no attribute {name!r}")
