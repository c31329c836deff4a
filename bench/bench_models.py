"""Training time and inference windows/s of every model, the M3Sense network as the baseline.

On the WESAD stress windows (labelled, with a wearer reference): per feature model the time to
fit it on every window, and windows/s through features + ONNX Runtime for batches of 1 and 256;
for M3Sense the time of one training epoch and windows/s through ONNX Runtime at the same batches.

    .venv/bin/python bench/bench_models.py --data ../shared/data/wesad-e4 [--kinds rf,et,...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.baselines import (
    KINDS,
    FeatureModel,
    feature_floor,
    load_feature_model,
    make_estimator,
    model_inputs,
    save_feature_model,
)
from inference.calibration import CalibrationConfig
from inference.features import window_features
from inference.model import ModelConfig
from inference.sources import parse_source, source_windows


def rate(fn, n_windows: int, repeat: int = 3) -> float:
    best = min(_timed(fn) for _ in range(repeat))
    return n_windows / best


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/wesad-e4")
    ap.add_argument("--kinds", default=",".join(KINDS))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    cfg = ModelConfig(tasks=("stress",), classes={"stress": ModelConfig().classes["stress"]})
    ws = source_windows(
        parse_source(args.data),
        modalities=("bvp", "eda", "temp", "acc"),
        tasks=cfg.tasks,
        classes=cfg.classes,
        hop_s=10,
        calibration=CalibrationConfig(),
    )
    ws = ws.subset(np.flatnonzero(ws.labelled & ws.calibrated))
    y = ws.labels[:, 0]
    n = len(ws)
    sig = {m: ws.inputs[m] for m in ("bvp", "eda", "temp", "acc")}
    one = {m: v[:1] for m, v in sig.items()}
    big = {m: v[:256] for m, v in sig.items()}
    print(f"# {n} WESAD stress windows, one thread\n")
    print(
        f"features alone: {rate(lambda: window_features(big), 256):,.0f} windows/s (batch 256), "
        f"{rate(lambda: window_features(one), 1, 20):,.0f} (batch 1)\n"
    )
    print("| model | fit on all windows | windows/s, batch 1 | windows/s, batch 256 |\n|---|---:|---:|---:|")

    from inference.checkpoint import load_checkpoint
    from inference.dataset import Normalizer
    from inference.predict import Predictor
    from inference.train import TrainConfig, init_model, to_tensors, train_model

    net_cfg = ModelConfig(
        tasks=("stress",), modalities=("bvp", "eda", "temp"), classes={"stress": cfg.classes["stress"]}
    )
    net_ws = ws.select(net_cfg.modalities, net_cfg.tasks)
    norm = Normalizer.fit(net_ws)
    t_epoch = _timed(
        lambda: train_model(init_model(net_cfg, 333), TrainConfig(epochs=1), to_tensors(net_ws, norm), None)
    )
    pred = Predictor(load_checkpoint(), tasks=("stress",), threads=1)
    x = {m: net_ws.inputs[m] for m in net_cfg.modalities}
    r1 = rate(lambda: pred.probs({m: v[:1] for m, v in x.items()}, net_ws.present[:1]), 1, 20)
    r256 = rate(lambda: pred.probs({m: v[:256] for m, v in x.items()}, net_ws.present[:256]), 256)
    print(f"| M3Sense (baseline; ONNX Runtime) | {t_epoch:.1f} s per epoch | {r1:,.0f} | {r256:,.0f} |")

    assert ws.ref_mean is not None and ws.ref_sd is not None  # calibration=... gave every window its reference
    ref_mean, ref_sd = ws.ref_mean, ws.ref_sd
    floor = feature_floor(ws.features)
    xf = model_inputs(ws.features, ws.ref_mean, ws.ref_sd, True, floor)
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds.split(","):
            est = make_estimator(kind, 0)
            t_fit = _timed(partial(est.fit, xf, y))
            path = save_feature_model(
                Path(tmp) / f"{kind}.onnx",
                est,
                kind=kind,
                task="stress",
                classes=cfg.classes["stress"],
                calibrated=True,
                calibration=CalibrationConfig(),
                floor=floor,
                temperature=1.0,
                min_confidence=0.0,
                provenance={},
            )
            fm = load_feature_model(path)

            def run(k: int, fm: FeatureModel = fm) -> None:
                f = window_features({m: v[:k] for m, v in sig.items()})
                fm.probs(f, ref_mean[:k], ref_sd[:k])

            print(
                f"| {kind} (features + ONNX Runtime) | {t_fit:.1f} s | {rate(lambda: run(1), 1, 20):,.0f} | "
                f"{rate(lambda: run(256), 256):,.0f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
