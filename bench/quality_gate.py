"""Where the quality gate belongs: held-out accuracy against a window's missing share and motion.

Leave-subjects-out on the WESAD recordings with the shipped stress recipe (wearer-calibrated
feature ensemble). Missing data is injected into the held-out windows the way the windower
fills a hole (the last measured value held), as one stretch of the given share of the window in
every modality; motion is measured, binned by the share of 1 s blocks flagged as motion. Prints
both curves and, with ``--plot``, draws them.

    .venv/bin/python bench/quality_gate.py --data ../shared/data/wesad-e4 [--plot curve.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.baselines import feature_floor, fold_groups, make_estimator, model_inputs
from inference.calibration import CalibrationConfig
from inference.features import window_features
from inference.model import ModelConfig
from inference.sources import parse_source, source_windows

SHARES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def hold_last(x: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """(N, samples, ...) with one stretch of ``share`` of each window replaced by the value before it."""
    if share <= 0:
        return x
    out = x.copy()
    n = x.shape[1]
    k = round(share * n)
    for i in range(len(x)):
        start = int(rng.integers(1, n - k + 1)) if k < n else 0
        out[i, start : start + k] = out[i, max(start - 1, 0)]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/wesad-e4")
    ap.add_argument("--folds", type=int, default=10)
    ap.add_argument("--kind", default="ens")
    ap.add_argument("--plot", type=Path, default=None)
    args = ap.parse_args()
    cfg = ModelConfig(tasks=("stress",), modalities=("bvp", "eda", "temp", "acc"))
    ws = source_windows(
        parse_source(args.data),
        modalities=cfg.modalities,
        tasks=cfg.tasks,
        classes=cfg.classes,
        hop_s=10,
        calibration=CalibrationConfig(),
    )
    ws = ws.subset(np.flatnonzero(ws.labelled & ws.calibrated))
    assert ws.ref_mean is not None and ws.ref_sd is not None  # calibration=... gave every window its reference
    y = ws.labels[:, 0]
    rng = np.random.default_rng(0)
    right = {s: np.zeros(len(ws), bool) for s in SHARES}
    for fold in fold_groups(ws.groups, args.folds, 0):
        test = np.isin(ws.groups, fold)
        floor = feature_floor(ws.features[~test])
        est = make_estimator(args.kind, 0).fit(
            model_inputs(ws.features[~test], ws.ref_mean[~test], ws.ref_sd[~test], True, floor), y[~test]
        )
        for share in SHARES:
            sig = {m: hold_last(ws.inputs[m][test], share, rng) for m in ("bvp", "eda", "temp", "acc")}
            f = window_features(sig)
            x = model_inputs(f, ws.ref_mean[test], ws.ref_sd[test], True, floor)
            right[share][test] = est.predict(x) == y[test]
    print(f"# stress ({args.kind}, wearer-calibrated), {len(ws)} held-out windows, {args.folds} folds\n")
    print("| missing share (injected) | accuracy |\n|---:|---:|")
    for s in SHARES:
        print(f"| {s:.1f} | {100 * right[s].mean():.1f} % |")
    base = right[0.0]
    bins = [(0.0, 0.0), (0.0, 0.1), (0.1, 0.25), (0.25, 1.0)]
    print("\n| motion share (measured) | windows | accuracy |\n|---|---:|---:|")
    motion_rows = []
    for lo, hi in bins:
        sel = (ws.motion == 0) if hi == 0 else (ws.motion > lo) & (ws.motion <= hi)
        acc = float(base[sel].mean()) if sel.any() else float("nan")
        motion_rows.append((lo, hi, int(sel.sum()), acc))
        label = "0" if hi == 0 else f"({lo:g}, {hi:g}]"
        print(f"| {label} | {int(sel.sum())} | {100 * acc:.1f} % |")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
        ax[0].plot(SHARES, [100 * right[s].mean() for s in SHARES], "o-")
        ax[0].set(
            xlabel="share of the window missing (held last value)", ylabel="accuracy %", title="stress, held-out people"
        )
        ax[1].bar(range(len(motion_rows)), [100 * r[3] for r in motion_rows])
        ax[1].set_xticks(range(len(motion_rows)), ["0" if r[1] == 0 else f"≤{r[1]:g}" for r in motion_rows])
        ax[1].set(xlabel="share of 1 s blocks with motion", ylabel="accuracy %", title="by measured motion")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"\nplot: {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
