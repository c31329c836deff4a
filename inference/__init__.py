"""Inference: per-wearer calibration, wrist features and feature baselines, the M3Sense network,
training (Algorithm 1), evaluation, checkpoints, answering.

What the inference node uses::

    answerer = load_answerer()          # the shipped default bundle (or a checkpoint / .onnx / bundle path)
    cals = Calibrations(answerer.calibration_config, CalibrationStore(folder))
    answers = answerer.answer_windows(window_messages, cals)   # per window: {task: Answer}
    meta = affect_meta(window_message, answers[0], answerer.model_id)

The names below are imported on first use: ``inference.cli`` lives in this package and
``m3sense --help`` must not pay for importing torch.
"""

from common.lazy import lazy_surface

__all__, __getattr__, __dir__ = lazy_surface(
    __name__,
    {
        "DEFAULT_MODEL": "checkpoint",
        "Checkpoint": "checkpoint",
        "load_checkpoint": "checkpoint",
        "save_checkpoint": "checkpoint",
        "MAX_MISSING_FRACTION": "dataset",
        "Normalizer": "dataset",
        "WindowSet": "dataset",
        "is_low_quality": "dataset",
        "windows_from_messages": "dataset",
        "FUSIONS": "model",
        "M3Sense": "model",
        "ModelConfig": "model",
        "ModelOutput": "model",
        "count_parameters": "model",
        "kl_to_standard_normal": "model",
        "Predictor": "predict",
        "affect_meta": "predict",
        "Answer": "answer",
        "Answerer": "answer",
        "Calibrations": "answer",
        "DEFAULT_BUNDLE": "answer",
        "load_answerer": "answer",
        "CalibrationConfig": "calibration",
        "CalibrationStore": "calibration",
        "Calibrator": "calibration",
        "Reference": "calibration",
        "FEATURES": "features",
        "window_features": "features",
        "KINDS": "baselines",
        "FeatureModel": "baselines",
        "load_feature_model": "baselines",
    },
)
