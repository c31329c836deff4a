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

from typing import TYPE_CHECKING

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

if TYPE_CHECKING:  # the same names, for the type checker (at run time they load on first use)
    from inference.answer import (
        DEFAULT_BUNDLE as DEFAULT_BUNDLE,
        Answer as Answer,
        Answerer as Answerer,
        Calibrations as Calibrations,
        load_answerer as load_answerer,
    )
    from inference.baselines import (
        KINDS as KINDS,
        FeatureModel as FeatureModel,
        load_feature_model as load_feature_model,
    )
    from inference.calibration import (
        CalibrationConfig as CalibrationConfig,
        CalibrationStore as CalibrationStore,
        Calibrator as Calibrator,
        Reference as Reference,
    )
    from inference.checkpoint import (
        DEFAULT_MODEL as DEFAULT_MODEL,
        Checkpoint as Checkpoint,
        load_checkpoint as load_checkpoint,
        save_checkpoint as save_checkpoint,
    )
    from inference.dataset import (
        MAX_MISSING_FRACTION as MAX_MISSING_FRACTION,
        Normalizer as Normalizer,
        WindowSet as WindowSet,
        is_low_quality as is_low_quality,
        windows_from_messages as windows_from_messages,
    )
    from inference.features import FEATURES as FEATURES, window_features as window_features
    from inference.model import (
        FUSIONS as FUSIONS,
        M3Sense as M3Sense,
        ModelConfig as ModelConfig,
        ModelOutput as ModelOutput,
        count_parameters as count_parameters,
        kl_to_standard_normal as kl_to_standard_normal,
    )
    from inference.predict import Predictor as Predictor, affect_meta as affect_meta
