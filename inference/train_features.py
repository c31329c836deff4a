"""``m3sense train --model rf|et|dt|lda|lr|svm|ens``: feature baselines, their leave-subjects-out
table and the files they ship as.

Every row of one run sees the same windows (labelled windows for which a wearer reference
existed: the windows a calibrated model answers) and the same folds, so rows differ only in the
model and in whether features are relative to the wearer.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import numpy as np

from common.errors import UserError


def _csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def load_windows(args, *, windows, calibration, tasks, need_reference: bool):
    from inference.dataset import WindowSet
    from inference.model import ModelConfig

    base = ModelConfig()
    unknown = [t for t in tasks if t not in base.classes]
    if unknown:
        raise UserError(f"unknown task(s) {unknown}; known: {list(base.classes)}")
    cfg = ModelConfig(tasks=tasks, classes={t: base.classes[t] for t in tasks})
    ws = WindowSet.concat(
        [w for _, w in windows(args.data, cfg=cfg, hop_s=args.hop_s, no_cache=args.no_cache, calibration=calibration)]
    )
    keep = ws.labelled & ws.calibrated if need_reference else ws.labelled
    if not keep.any():
        raise UserError(
            "no labelled window has a wearer reference: recordings need at least "
            f"{calibration.search_minutes:g} min of usable data before their labels"
        )
    return ws.subset(np.flatnonzero(keep)), cfg


def task_scores(ws, j: int, task: str, kind: str, calibrated: bool, folds, seed: int, classes):
    """Leave-subjects-out scores of one model and task, with its confidence calibration; also
    the raw out-of-fold probabilities and their labels (what the shipped temperature is fitted on)."""
    from inference.baselines import cross_validate, expected_calibration_error
    from inference.train import detailed_scores

    has = np.flatnonzero(ws.labels[:, j] >= 0)
    sub = ws.subset(has)
    y = sub.labels[:, j]
    cal, raw, temps = cross_validate(
        sub.features,
        y,
        sub.groups,
        folds,
        kind=kind,
        seed=seed,
        ref_mean=sub.ref_mean,
        ref_sd=sub.ref_sd,
        calibrated=calibrated,
    )
    one = sub.select(sub.modalities, (task,))
    s = detailed_scores(one, {task: cal}, classes)[task]
    s["ece"], s["reliability"] = expected_calibration_error(cal, y)
    s["ece_before_scaling"], _ = expected_calibration_error(raw, y)
    s["temperatures"] = temps
    conf = cal.max(axis=1)
    s["confidence_curve"] = [
        {
            "min_confidence": th,
            "answered": float((conf >= th).mean()),
            "accuracy": float((cal.argmax(1) == y)[conf >= th].mean()) if (conf >= th).any() else None,
        }
        for th in (0.0, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    ]
    return s, raw, y


def train_features(args, kinds, *, windows, calibration, print_scores, stop) -> int:
    """``stop`` (a :class:`inference.train_stop.StopFlag`) is asked between models: a stopped
    table holds the rows finished, a stopped fit keeps the model files already written."""
    from inference.baselines import KINDS, fold_groups

    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise UserError(
            f"--model {','.join(bad)}: feature models are {', '.join(KINDS)} "
            "(train m3sense in its own run: --model m3sense)"
        )
    modes = {"wearer": (True,), "none": (False,), "both": (True, False)}[args.calibration]
    tasks = _csv(args.tasks)
    ws, cfg = load_windows(args, windows=windows, calibration=calibration, tasks=tasks, need_reference=True in modes)
    groups = np.unique(ws.groups)
    stop.start_work()
    if args.folds:
        if not 2 <= args.folds <= len(groups):
            raise UserError(f"--folds must be between 2 and the number of recordings ({len(groups)})")
        folds = fold_groups(ws.groups, args.folds, args.seed)
        rows = {}
        planned = [(kind, calibrated) for kind in kinds for calibrated in modes]
        for kind, calibrated in planned:
            if stop():
                break
            name = f"{kind} ({'wearer' if calibrated else 'absolute'})"
            print(f"train: {name}, {args.folds}-fold leave-subjects-out", file=sys.stderr, flush=True)
            rows[name] = {
                t: task_scores(ws, j, t, kind, calibrated, folds, args.seed, cfg.classes)[0]
                for j, t in enumerate(cfg.tasks)
                if (ws.labels[:, j] >= 0).any()
            }
        title = f"{args.folds}-fold leave-subjects-out, pooled over all test folds ({len(ws)} windows)"
        partial = None
        if len(rows) < len(planned):
            partial = {"rows_done": len(rows), "rows_planned": len(planned), "stopped_by": stop.why}
            print(
                f"train: stopped by {stop.why} after {len(rows)} of {len(planned)} models: "
                + ("no scores" if not rows else "the table below is PARTIAL"),
                file=sys.stderr,
                flush=True,
            )
            if not rows:
                return 0
            title = f"PARTIAL ({len(rows)} of {len(planned)} models): {title}"
        if len(planned) == 1:
            print_scores(next(iter(rows.values())), args.json, title)
        elif args.json:
            folds_json = [f.tolist() for f in folds]
            print(
                json.dumps(
                    {"rows": rows, "windows": len(ws), "folds": folds_json} | ({"partial": partial} if partial else {}),
                    indent=2,
                )
            )
        else:
            print(f"# {title}\n\n" + comparison_table(rows))
        return 0
    if len(kinds) != 1 or len(modes) != 1:
        raise UserError("one --model and one --calibration mode make a model file (several need --folds)")
    return _fit_and_save(args, kinds[0], modes[0], ws, cfg, calibration, print_scores, groups, stop)


def _fit_and_save(args, kind, calibrated, ws, cfg, calibration, print_scores, groups, stop) -> int:
    """Fit on every window (nothing held out); the figures reported and stored are the
    leave-subjects-out figures of the same recipe, whose folds also fit the temperature.
    A stop between tasks keeps the files of the tasks finished (each a whole model)."""
    from inference.baselines import (
        feature_floor,
        fit_temperature,
        fold_groups,
        make_estimator,
        model_inputs,
        save_feature_model,
    )
    from inference.checkpoint import code_version

    if len(groups) < 2:
        raise UserError("a feature model needs at least two recordings (its confidence is fitted on held-out ones)")
    folds = fold_groups(ws.groups, min(len(groups), args.folds or 10), args.seed)
    scores = {}
    planned = [t for j, t in enumerate(cfg.tasks) if (ws.labels[:, j] >= 0).any()]
    for j, task in enumerate(cfg.tasks):
        has = np.flatnonzero(ws.labels[:, j] >= 0)
        if not len(has):
            continue
        if stop():
            break
        print(
            f"train: {kind} for {task}: leave-subjects-out over {len(folds)} folds, then all windows",
            file=sys.stderr,
            flush=True,
        )
        s, raw, y = task_scores(ws, j, task, kind, calibrated, folds, args.seed, cfg.classes)
        scores[task] = s
        sub = ws.subset(has)
        floor = feature_floor(sub.features) if calibrated else None
        x = model_inputs(sub.features, sub.ref_mean, sub.ref_sd, calibrated, floor)
        est = make_estimator(kind, args.seed).fit(x, y)
        out = _out_path(args.out, task, len(cfg.tasks))
        provenance = {
            "trained_on": list(args.data),
            "subjects": sorted(set(sub.groups.tolist())),
            "windows": len(sub),
            "seed": args.seed,
            "hop_s": args.hop_s,
            "command": "m3sense " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
            "held_out": {
                k: s[k] for k in ("n_windows", "accuracy", "macro_f1", "balanced_accuracy", "majority_accuracy", "ece")
            }
            | ({"stress_vs_rest": s["stress_vs_rest"]} if "stress_vs_rest" in s else {}),
            "protocol": f"{len(folds)}-fold leave-subjects-out",
        }
        provenance["code_version"] = code_version()
        path = save_feature_model(
            out,
            est,
            kind=kind,
            task=task,
            classes=cfg.classes[task],
            calibrated=calibrated,
            calibration=calibration if calibrated else None,
            floor=floor,
            temperature=fit_temperature(raw, y),
            min_confidence=args.min_confidence,
            provenance=provenance,
        )
        print(f"saved {path}", file=sys.stderr)
    title = f"{kind}: leave-subjects-out figures of this recipe ({len(folds)} folds)"
    if len(scores) < len(planned):
        left = [t for t in planned if t not in scores]
        print(
            f"train: stopped by {stop.why} after {len(scores)} of {len(planned)} tasks: "
            f"no model written for {', '.join(left)}",
            file=sys.stderr,
            flush=True,
        )
        if not scores:
            return 0
        title = f"PARTIAL ({len(scores)} of {len(planned)} tasks): {title}"
    print_scores(scores, args.json, title)
    return 0


def _out_path(out: Path, task: str, n_tasks: int) -> Path:
    stem = out.with_suffix("")
    return (stem if n_tasks == 1 else stem.with_name(f"{stem.name}-{task}")).with_suffix(".onnx")


def comparison_table(rows: dict) -> str:
    """Markdown: one line per model and task."""
    lines = [
        "| model | task | accuracy | macro-F1 | balanced acc. | stress vs rest | ECE |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, by_task in rows.items():
        for t, s in by_task.items():
            b = s.get("stress_vs_rest")
            binary = f"{100 * b['accuracy']:.1f} %" if b else "-"
            lines.append(
                f"| {name} | {t} | {100 * s['accuracy']:.1f} % | {s['macro_f1']:.3f} | "
                f"{100 * s['balanced_accuracy']:.1f} % | {binary} | {s['ece']:.3f} |"
            )
    return "\n".join(lines)
