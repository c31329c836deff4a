"""``m3sense train | evaluate | model info | export-onnx``: the model's commands.

Handlers import torch and the model code only when they run (``m3sense --help`` stays fast).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

from bus.cli import add_bus_option
from bus.workers_cli import add_workers_options, workers_spec
from common.argtypes import (
    deprecated_alias,
    fraction,
    non_negative_int,
    non_negative_number,
    non_negative_seconds,
    positive_int,
    positive_minutes,
    positive_number,
    positive_seconds,
)
from common.errors import UserError
from common.summary import add_json_option, print_summary

#: what ``--model`` takes wherever a model answers (read by ``inference.answer.load_answerer``)
MODEL_HELP = (
    "a model file: M3Sense checkpoint (NAME.safetensors beside NAME.json, or their common stem), "
    "feature model (.onnx) or bundle (.bundle.json); default: the shipped bundle"
)
#: what ``--data`` takes (``inference.sources``: anything ``replay`` reads, or the simulator)
DATA_HELP = (
    "labelled source: an E4 Connect folder or zip with labels.csv (or a folder of them), a data set in its "
    "original layout (wesad:PATH, kemocon:PATH, verbio:PATH, unlabelled:PATH), or 'synthetic?minutes=30&subjects=6'"
)

PROTOCOLS = ("paper", "subjects")

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train M3Sense (Algorithm 1) or a feature baseline and score it on held-out people",
        description="Train on windows made from labelled recordings by the preprocess code path. "
        "SOURCE is an E4 Connect folder/zip with labels.csv (or a folder of them), a data set in "
        "its original layout (wesad:PATH, kemocon:PATH, verbio:PATH, unlabelled:PATH), or "
        "'synthetic?minutes=30&subjects=6&seed=1'; add '?tasks=a,b' (or '&tasks=') to keep "
        "only those tasks' labels.",
    )
    p.add_argument("--data", action="append", required=True, metavar="SOURCE", help=DATA_HELP + " (repeatable)")
    p.add_argument(
        "--unlabeled",
        action="append",
        default=[],
        metavar="SOURCE",
        help="source whose labels are dropped: it trains the alignment loss only (repeatable)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("m3sense-model.safetensors"),
        help="checkpoint to write (NAME.safetensors + NAME.json); not written with --folds",
    )
    p.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="subjects",
        help="paper: stratified 35%% train+val / 55%% test / 10%% unlabelled windows; "
        "subjects: whole recordings held out (default)",
    )
    p.add_argument(
        "--test-subjects",
        default=None,
        metavar="A,B",
        help="subjects protocol: these recordings are the test part (S5; or sim03 when "
        "only one labelled source has a sim03)",
    )
    p.add_argument(
        "--test-fraction",
        type=fraction,
        default=0.2,
        help="subjects protocol: share of each source's recordings held out",
    )
    p.add_argument(
        "--folds",
        type=non_negative_int,
        default=0,
        help="subjects protocol: K-fold cross-validation over recordings (no checkpoint)",
    )
    p.add_argument("--fusion", default="cam", choices=("cam", "hamlet", "keyless", "sum"))
    p.add_argument("--tasks", default="stress,anxiety,emotion")
    p.add_argument("--modalities", default="bvp,eda,temp")
    p.add_argument("--epochs", type=positive_int, default=65, help="the paper's 65 by default")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--lr", type=positive_number, default=3e-4)
    p.add_argument("--weight-decay", type=non_negative_number, default=1e-4)
    p.add_argument("--gamma", type=non_negative_number, default=0.3, help="weight of the alignment (KL) loss")
    p.add_argument("--seed", type=non_negative_int, default=333)
    p.add_argument(
        "--hop-s", type=positive_seconds, default=10.0, help="seconds between the starts of training windows"
    )
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--no-cache", action="store_true", help="do not cache windows in the temp folder")
    p.add_argument("--json", action="store_true", help="print the test scores as one JSON object")
    p.add_argument(
        "--model",
        default="m3sense",
        metavar="KIND[,KIND]",
        help="m3sense (the network) or a feature baseline: rf, et, dt, lda, lr, svm, ens (soft vote "
        "of rf, et, lda, lr); several "
        "(comma-separated) with --folds give one table over the same windows and folds",
    )
    p.add_argument(
        "--calibration",
        default=None,
        choices=("wearer", "none", "both"),
        help="inputs relative to each wearer's reference (wearer: features, or M3Sense's EDA and "
        "TEMP levels) or absolute (none); both: a row of each (feature models, with --folds). "
        "Default: wearer for feature models, none for m3sense. With --folds, windows without a "
        "wearer reference are left out, so every model is scored on the same windows",
    )
    p.add_argument(
        "--init",
        type=Path,
        default=None,
        metavar="CHECKPOINT",
        help="transfer: start from this M3Sense checkpoint and learn --tasks (new or not) on its "
        "representation; its other tasks are kept as they are (use with --freeze encoders)",
    )
    p.add_argument(
        "--freeze",
        choices=("encoders",),
        default=None,
        help="with --init: encoders, fusion, domain alignment and the checkpoint's other tasks stay "
        "fixed; only the task networks of --tasks learn (a few labelled recordings suffice)",
    )
    p.add_argument(
        "--min-confidence",
        type=fraction,
        default=0.5,
        help="feature models: below this calibrated confidence the answer is withheld (default 0.5)",
    )
    add_calibration_options(p)
    p.set_defaults(func=_train)

    p = sub.add_parser(
        "experiment",
        help="reproduce a table or figure of the paper (table2, table4, table5, fig7, fig8)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Runs one of the paper's experiments over one set of windows and folds and writes NAME.md "
        "(table), NAME.csv (mean and SD per row and task), NAME-seeds.csv, NAME.json and NAME.png "
        "into --out. Every row sees the same windows (labelled, with a wearer reference, every "
        "--modalities present) and the same folds; seeds change the models, not the folds.\n\n"
        "  table2  feature models (RF, DT, ET, LDA, LR, SVM), one network per task without alignment "
        "(Non-Attention, Keyless, HAMLET) and the four M3Sense variants, per task\n"
        "  table4  M3Sense (--fusion) learning each combination of two or more tasks\n"
        "  table5  the four M3Sense variants without (γ = 0) and with unlabelled data "
        "(--unlabeled, or the paper split's unlabelled 10 %%)\n"
        "  fig7    transfer to a task the model never saw (paper 6.3): per target task, a model "
        "from scratch on --few labelled recordings, M3Sense trained on the other tasks then "
        "frozen with a new head learned from the same few, and M3Sense on every task and label\n"
        "  fig8    modality combinations for --models\n\n"
        "Progress (one line per row and fold) goes to stderr. Exit 1 when some row could not be "
        "scored for some task (it is marked in the table).",
    )
    p.add_argument(
        "name",
        choices=("table2", "table4", "table5", "fig7", "fig8"),
        metavar="NAME",
        help="table2, table4, table5, fig7 or fig8",
    )
    p.add_argument(
        "--data", action="append", required=True, metavar="SOURCE", help="labelled source, as for train (repeatable)"
    )
    p.add_argument(
        "--unlabeled",
        action="append",
        default=[],
        metavar="SOURCE",
        help="source whose labels are dropped: it trains the alignment loss of the rows that use "
        "unlabelled data (repeatable)",
    )
    p.add_argument("--out", type=Path, default=None, help="folder for the results (default m3sense-experiments/NAME)")
    p.add_argument(
        "--split",
        choices=("subjects", "paper"),
        default="subjects",
        help="subjects: leave-subjects-out folds (default); paper: the paper's stratified window split, "
        "where one person's windows sit on both sides",
    )
    p.add_argument(
        "--folds",
        type=positive_int,
        default=None,
        help="subjects split: folds over the recordings (default one per recording, at most 10)",
    )
    p.add_argument("--seeds", default="1,2,3", metavar="A,B", help="model seeds; the spread is over them")
    p.add_argument(
        "--split-seed", type=non_negative_int, default=0, help="fixes the folds (or the paper split) for every row"
    )
    p.add_argument("--tasks", default=None, help="default: every task the data labels")
    p.add_argument("--modalities", default="bvp,eda,temp")
    p.add_argument("--rows", default=None, metavar="ID,ID", help="only these rows (their ids are in NAME.csv)")
    p.add_argument(
        "--fusion", default="cam", choices=("cam", "hamlet", "keyless", "sum"), help="table4, fig7: the M3Sense variant"
    )
    p.add_argument(
        "--models",
        default="rf,m3sense-cam",
        metavar="KIND,KIND",
        help="fig8: feature models and m3sense-FUSION networks (default rf,m3sense-cam)",
    )
    p.add_argument("--target", default=None, metavar="TASK,TASK", help="fig7: the unseen tasks (default every task)")
    p.add_argument("--few", type=positive_int, default=2, help="fig7: labelled recordings the new head learns from")
    p.add_argument(
        "--few-epochs",
        type=positive_int,
        default=20,
        help="fig7: epochs of the from-scratch model and the new head on those few recordings "
        "(they hold a few batches; default 20)",
    )
    p.add_argument(
        "--calibration",
        choices=("none", "wearer"),
        default="none",
        help="none: absolute inputs, as in the paper (default); wearer: relative to each wearer",
    )
    p.add_argument("--epochs", type=positive_int, default=10, help="per network (the paper trained 65)")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--lr", type=positive_number, default=3e-4)
    p.add_argument(
        "--gamma", type=non_negative_number, default=0.3, help="weight of the alignment (KL) loss where it is used"
    )
    p.add_argument("--hop-s", type=positive_seconds, default=10.0, help="seconds between the starts of windows")
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--no-cache", action="store_true", help="do not cache windows in the temp folder")
    add_json_option(
        p,
        "experiment, out, paths (the files written), partial, runs_completed, runs_planned (a run: one row, "
        "one seed, every fold), stopped_by, cells_scored, cells_planned, not_scored, cells (per row and task: "
        "seeds, accuracy and macro-F1 mean and SD)",
    )
    add_calibration_options(p)
    p.set_defaults(func=_experiment)

    p = sub.add_parser(
        "evaluate",
        help="score a trained model on every labelled window of a source",
        description="Scores every labelled window that gets an answer (status ok or uncertain), "
        "with each wearer calibrated as live; coverage counts the windows that were "
        "still calibrating or of low quality.",
    )
    p.add_argument("--model", type=Path, default=None, help=MODEL_HELP)
    p.add_argument("--data", action="append", required=True, metavar="SOURCE", help=DATA_HELP + " (repeatable)")
    p.add_argument("--hop-s", type=positive_seconds, default=10.0, help="seconds between the starts of windows")
    p.add_argument("--backend", choices=("onnx", "torch"), default="onnx")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("model", help="inspect a checkpoint")
    msub = p.add_subparsers(dest="model_command", metavar="ACTION")
    msub.required = True
    q = msub.add_parser("info", help="architecture, size, tasks, modalities and training provenance")
    q.add_argument(
        "path",
        nargs="?",
        type=Path,
        default=None,
        help="checkpoint, feature model (.onnx) or bundle (default: the shipped bundle)",
    )
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_info)
    q = msub.add_parser(
        "calibrate-confidence",
        help="fit the network's confidence temperature per task",
        description="Fits, per task, the temperature that makes the network's confidence the "
        "probability of being right on SOURCE (people the network never saw; not the "
        "ones you will evaluate on) and writes it into the checkpoint's JSON.",
    )
    q.add_argument("path", type=Path, help="M3Sense checkpoint (.safetensors or .json)")
    q.add_argument("--data", action="append", required=True, metavar="SOURCE", help=DATA_HELP + " (repeatable)")
    q.add_argument("--hop-s", type=positive_seconds, default=10.0, help="seconds between the starts of windows")
    q.set_defaults(func=_calibrate_confidence)

    p = sub.add_parser(
        "infer",
        help="answer window/ messages with affect/ predictions (M3Sense)",
        description="Subscribes window/, micro-batches windows across devices (a batch runs when full "
        "or when its oldest window has waited --max-wait-s) and publishes "
        "affect/<device>/.",
    )
    add_bus_option(p)
    add_workers_options(p)
    p.add_argument("--model", type=Path, default=None, help=MODEL_HELP)
    p.add_argument("--tasks", default=None, help="comma-separated subset of the model's tasks (default all)")
    p.add_argument("--backend", choices=("onnx", "torch"), default="onnx")
    p.add_argument("--max-batch", type=positive_int, default=32, help="windows per forward pass at most (default 32)")
    deprecated_alias(
        p,
        "--max-wait-ms",
        p.add_argument(
            "--max-wait-s",
            type=non_negative_seconds,
            default=0.05,
            metavar="S",
            help="run a batch once its oldest window has waited S seconds (default 0.05)",
        ),
        scale=0.001,
        old_type=non_negative_number,
    )
    p.add_argument("--threads", type=positive_int, default=None, help="intra-op threads of the backend")
    p.add_argument(
        "--state-dir",
        default=None,
        metavar="DIR",
        help="where each wearer's calibration is kept across restarts (default "
        "$XDG_STATE_HOME/m3sense/calibration; 'none' keeps it in memory only)",
    )
    from bus.metrics import add_metrics_options

    add_metrics_options(p)
    add_json_option(p, "counters (the last line's counts: windows, answered, bus_missing, ...)")
    p.set_defaults(func=_infer)

    p = sub.add_parser(
        "calibration",
        help="show or reset the wearers' calibration kept by infer",
        description="Each wearer's reference state (the calmest stretch of their first usable "
        "minutes, or a rest they marked with the E4 button), as infer keeps it.",
    )
    csub = p.add_subparsers(dest="calibration_command", metavar="ACTION")
    csub.required = True
    for action, text in (
        ("show", "the reference of DEVICE (all devices without one)"),
        ("reset", "forget DEVICE's calibration: it calibrates again from its next windows"),
    ):
        q = csub.add_parser(action, help=text)
        q.add_argument("device", nargs="?" if action == "show" else None, default=None, metavar="DEVICE")
        q.add_argument("--state-dir", type=Path, default=None, help="default $XDG_STATE_HOME/m3sense/calibration")
        q.add_argument("--json", action="store_true")
        q.set_defaults(func=_calibration)

    p = sub.add_parser("export-onnx", help="write the inference graph as an ONNX model")
    p.add_argument(
        "--model",
        type=Path,
        default=None,
        help="M3Sense checkpoint file (NAME.safetensors beside NAME.json); default: the shipped one",
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tasks", default=None, help="comma-separated subset (default all)")
    p.set_defaults(func=_export)


def add_calibration_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--calibration-minutes",
        type=positive_minutes,
        default=10.0,
        help="length of each wearer's reference stretch (default 10)",
    )
    p.add_argument(
        "--calibration-search-minutes",
        type=positive_minutes,
        default=30.0,
        help="the calmest stretch is looked for in this much of a wearer's first usable data (default 30)",
    )


def calibration_config(args):
    from inference.calibration import CalibrationConfig

    try:
        return CalibrationConfig(minutes=args.calibration_minutes, search_minutes=args.calibration_search_minutes)
    except ValueError as exc:
        raise UserError(f"--calibration-minutes/--calibration-search-minutes: {exc}") from exc


def _csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _load(path: Path | None):
    from inference.checkpoint import load_checkpoint

    return load_checkpoint(path)


def _windows(specs, *, cfg, hop_s: float, no_cache: bool, unlabeled: bool = False, calibration=None):
    from inference.sources import parse_source, source_windows

    out = []
    for spec in specs:
        src = parse_source(spec)
        log.info("reading the windows of %s", spec)
        ws = source_windows(
            src,
            modalities=cfg.modalities,
            tasks=cfg.tasks,
            classes=cfg.classes,
            hop_s=hop_s,
            unlabeled=unlabeled,
            calibration=calibration,
            **({"cache_dir": None} if no_cache else {}),
        )
        if not len(ws):
            raise UserError(f"data source {spec!r} gave no usable windows")
        out.append((src, ws))
    return out


class _Progress:
    """One status line on a terminal (rewritten in place), one line per epoch otherwise."""

    def __init__(self, epochs: int, prefix: str = "") -> None:
        self.epochs, self.prefix, self.tty = epochs, prefix, sys.stderr.isatty()

    def step(self, epoch: int, step: int, n: int, losses) -> None:
        if self.tty:
            bar = "#" * round(20 * step / n)
            print(
                f"\r{self.prefix}epoch {epoch}/{self.epochs} [{bar:<20}] {step}/{n} "
                f"loss {losses['loss']:.3f} ce {losses['ce']:.3f} kl {losses['kl']:.3f}",
                end="",
                file=sys.stderr,
            )

    def epoch(self, log) -> None:
        acc = " ".join(f"{t} {v:.2f}" for t, v in log.train_acc.items())
        val = " ".join(f"{t} {s['accuracy']:.2f}/{s['macro_f1']:.2f}" for t, s in log.val.items())
        print(
            f"{chr(13) if self.tty else ''}{self.prefix}epoch {log.epoch}/{self.epochs} loss {log.loss:.3f} "
            f"(ce {log.ce:.3f} kl {log.kl:.3f}) train acc: {acc} | val acc/F1: {val or '-'} | lr {log.lr:.2e}",
            file=sys.stderr,
            flush=True,
        )


def _train(args) -> int:
    """Runs under the stop convention: the first SIGINT/SIGTERM ends training after the current
    batch and writes what the finished epochs (or folds) give, marked partial."""
    from inference.train_stop import run_blocking

    return run_blocking(lambda stop: _train_until(args, stop), name="train", before="training started")


def _train_until(args, stop) -> int:
    kinds = _csv(args.model)
    if kinds != ("m3sense",):
        from inference.train_features import train_features

        args.calibration = args.calibration or "wearer"
        return train_features(
            args, kinds, windows=_windows, calibration=calibration_config(args), print_scores=_print_scores, stop=stop
        )
    if (args.init is None) != (args.freeze is None):
        raise UserError("--init CHECKPOINT and --freeze encoders go together")
    init = _load(args.init) if args.init is not None else None
    if init is not None:
        args.calibration = args.calibration or ("wearer" if init.normalizer.relative else "none")
        if (args.calibration == "wearer") != bool(init.normalizer.relative):
            raise UserError(
                f"--calibration {args.calibration}: {args.init} was trained with "
                f"calibration {'wearer' if init.normalizer.relative else 'none'}"
            )
    args.calibration = args.calibration or "none"
    if args.calibration == "both":
        raise UserError("--calibration both is for feature models; train m3sense once per mode")
    calibrated = args.calibration == "wearer"
    cal = calibration_config(args)
    from dataclasses import replace

    import numpy as np
    import torch

    from inference.checkpoint import save_checkpoint
    from inference.dataset import WindowSet
    from inference.model import ModelConfig, count_parameters
    from inference.train import (
        TrainConfig,
        detailed_scores,
        fit_split,
        init_model,
        predict_probs,
        split_paper,
        split_subjects,
        to_tensors,
    )
    from inference.transfer import frozen_parts, transfer_config, transfer_model

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        base = ModelConfig()
        tasks = _csv(args.tasks)
        cfg = ModelConfig(
            fusion=args.fusion,
            tasks=tasks,
            modalities=_csv(args.modalities),
            classes={t: base.classes[t] for t in tasks if t in base.classes},
        )
        if init is not None:  # the checkpoint fixes the architecture; only its --tasks learn
            cfg = transfer_config(init.config, tasks, base.classes)
        tc = TrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            gamma=args.gamma,
            seed=args.seed,
        )
    except (ValueError, KeyError) as exc:
        raise UserError(str(exc)) from exc
    if args.epochs < 1 or args.hop_s <= 0 or args.batch_size < 2:
        raise UserError("--epochs must be >= 1, --hop-s > 0 and --batch-size >= 2")
    # windows of a labelled source outside its label intervals are not used (give the source to
    # --unlabeled as well to train the alignment loss on them)
    # (calibrated, or scored over folds: only windows that have a wearer reference)
    only_calibrated = calibrated or bool(args.folds)
    labelled = [
        (src, w.subset(np.flatnonzero(w.labelled & (w.calibrated if only_calibrated else True))))
        for src, w in _windows(args.data, cfg=cfg, hop_s=args.hop_s, no_cache=args.no_cache, calibration=cal)
    ]
    unlabeled = [
        (src, w.subset(np.flatnonzero(w.calibrated)) if calibrated else w)
        for src, w in _windows(
            args.unlabeled, cfg=cfg, hop_s=args.hop_s, no_cache=args.no_cache, unlabeled=True, calibration=cal
        )
    ]
    if init is not None:  # the kept tasks learn nothing here: only the labels of --tasks count
        learned = np.array([t in tasks for t in cfg.tasks])
        labelled = [(src, w.subset(np.flatnonzero((w.labels[:, learned] >= 0).any(axis=1)))) for src, w in labelled]
        labelled = [(src, replace(w, labels=np.where(learned[None, :], w.labels, -1))) for src, w in labelled]
    ws = WindowSet.concat([w for _, w in labelled + unlabeled])
    if not ws.labelled.any():
        raise UserError("no labelled windows in the --data sources")

    def fit(split, prefix=""):
        prog = _Progress(tc.epochs, prefix)
        model = (
            transfer_model(init.model, tasks, base.classes, tc.seed) if init is not None else init_model(cfg, tc.seed)
        )
        return fit_split(
            ws,
            split,
            tc,
            model=model,
            relative=("eda", "temp") if calibrated else (),
            normalizer=init.normalizer if init is not None else None,
            on_step=prog.step,
            on_epoch=prog.epoch,
            should_stop=stop,
        )

    if args.folds and args.protocol != "subjects":
        raise UserError("--folds goes with --protocol subjects")
    if args.folds:
        groups = np.unique(ws.groups[ws.labelled])
        if not 2 <= args.folds <= len(groups):
            raise UserError(f"--folds must be between 2 and the number of labelled recordings ({len(groups)})")
        order = groups[np.random.default_rng(args.seed).permutation(len(groups))]
        test_idx: list[np.ndarray] = []
        probs: dict[str, list[np.ndarray]] = {t: [] for t in cfg.tasks}
        stop.start_work()
        print(
            f"train: {args.folds}-fold leave-subjects-out over {len(groups)} recordings, {tc.epochs} epochs per fold "
            "(a stop signal keeps the folds finished)",
            file=sys.stderr,
            flush=True,
        )
        for k, fold in enumerate(np.array_split(order, args.folds), 1):
            if stop():
                break
            split = split_subjects(ws, args.seed, test_groups=list(fold))
            res, norm = fit(split, prefix=f"fold {k}/{args.folds} ")
            if res.stopped:  # an unfinished fold is not scored
                break
            p = predict_probs(res.model, to_tensors(ws.subset(split.test), norm))
            test_idx.append(split.test)
            for t in cfg.tasks:
                probs[t].append(p[t])
        done = len(test_idx)
        if done < args.folds:
            print(
                f"train: stopped by {stop.why} after {done} of {args.folds} folds: "
                + (
                    "no fold finished, no scores"
                    if not done
                    else f"the scores below are PARTIAL, pooled over the {done} finished fold(s)"
                ),
                file=sys.stderr,
                flush=True,
            )
            if not done:
                return 0
        test = ws.subset(np.concatenate(test_idx))
        scores = detailed_scores(test, {t: np.concatenate(v) for t, v in probs.items()}, cfg.classes)
        if done < args.folds:
            partial = {"folds_done": done, "folds_planned": args.folds, "stopped_by": stop.why}
            title = f"PARTIAL: {done} of {args.folds} folds of a leave-subjects-out run, pooled over the finished folds"
            _print_partial_scores(scores, args.json, title, partial)
            return 0
        _print_scores(scores, args.json, f"{args.folds}-fold leave-subjects-out, pooled over all test folds")
        return 0

    try:
        split = (
            split_paper(ws, args.seed)
            if args.protocol == "paper"
            else split_subjects(
                ws,
                args.seed,
                test_groups=_csv(args.test_subjects) if args.test_subjects else None,
                test_fraction=args.test_fraction,
            )
        )
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    if not len(split.train):
        raise UserError("the split left no training windows")
    stop.start_work()
    print(
        f"train: {len(split.train)} training windows, {tc.epochs} epochs (a stop signal keeps the epochs finished)",
        file=sys.stderr,
        flush=True,
    )
    res, norm = fit(split)
    if res.stopped and not res.epochs_done:
        print(f"train: stopped by {stop.why} before the first epoch finished: nothing written", file=sys.stderr)
        return 0
    test = ws.subset(split.test)
    scores = detailed_scores(test, predict_probs(res.model, to_tensors(test, norm)), cfg.classes) if len(test) else {}
    train_ws = ws.subset(split.train)
    provenance = {
        "trained_on": [src.name for src, _ in labelled] + [f"{src.name} (unlabeled)" for src, _ in unlabeled],
        "tasks_learned_from": {
            t: sorted(set(train_ws.sources[train_ws.labels[:, j] >= 0].tolist()))
            if init is None or t in tasks
            else list(init.provenance.get("tasks_learned_from", {}).get(t, []))
            for j, t in enumerate(cfg.tasks)
        },
        "protocol": args.protocol,
        "split_windows": {
            "train": len(split.train),
            "val": len(split.val),
            "test": len(split.test),
            "unlabeled": len(split.unlabeled),
        },
        "test_subjects": sorted(set(test.groups.tolist())) if args.protocol == "subjects" else None,
        "val_subjects": sorted(set(ws.groups[split.val].tolist())) if args.protocol == "subjects" else None,
        "seed": args.seed,
        "epochs": args.epochs,
        "epochs_done": res.epochs_done,
        # a checkpoint of a run stopped early: what it is made of, and what stopped it
        "partial": (
            {"epochs_done": res.epochs_done, "epochs_planned": args.epochs, "stopped_by": stop.why}
            if res.stopped
            else None
        ),
        "calibration": cal.to_json() if calibrated else None,
        "best_epoch": res.best_epoch,
        "hop_s": args.hop_s,
        "train_config": {k: getattr(tc, k) for k in tc.__dataclass_fields__},
        "command": "m3sense " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "held_out": (
            {t: v for t, v in init.provenance.get("held_out", {}).items() if t not in tasks} if init is not None else {}
        )
        | {t: _headline(s) for t, s in scores.items()},
        **(
            {
                "init": {
                    "model": init.model_id,
                    "path": str(init.path),
                    "learned": list(tasks),
                    "frozen": frozen_parts(res.model),
                }
            }
            if init is not None
            else {}
        ),
        "history": [
            {"epoch": h.epoch, "loss": round(h.loss, 4), "ce": round(h.ce, 4), "kl": round(h.kl, 4), "val": h.val}
            for h in res.history
        ],
    }
    path = save_checkpoint(args.out, res.model, norm, provenance)
    title = f"held-out test part ({args.protocol} protocol, {len(test)} windows)"
    if res.stopped:
        print(
            f"train: stopped by {stop.why} after {res.epochs_done} of {args.epochs} epochs: wrote PARTIAL checkpoint "
            f"{path} (best epoch {res.best_epoch}; its provenance says partial)",
            file=sys.stderr,
        )
        _print_partial_scores(
            scores,
            args.json,
            f"PARTIAL model ({res.epochs_done} of {args.epochs} epochs): {title}",
            provenance["partial"],
        )
        return 0
    print(f"saved {path} ({count_parameters(res.model)} parameters, best epoch {res.best_epoch})", file=sys.stderr)
    _print_scores(scores, args.json, title)
    return 0


def _print_partial_scores(scores: dict, as_json: bool, title: str, partial: dict) -> None:
    """The scores of a stopped run: the title says partial; the JSON object (tasks as keys) gains
    a ``partial`` key saying what was done of what was planned."""
    if as_json:
        print(json.dumps({**scores, "partial": partial}, indent=2))
    else:
        _print_scores(scores, False, title)


def _experiment(args) -> int:
    """Runs under the stop convention: the first SIGINT/SIGTERM drops the unfinished run and
    writes the files of the runs finished, marked partial; ``--json`` then says what was written."""
    from inference.train_stop import StopFlag, run_blocking

    stop = StopFlag()
    facts: dict = dict.fromkeys(
        ("experiment", "out", "paths", "partial", "runs_completed", "runs_planned", "stopped_by")
    )
    facts |= {"experiment": args.name, "paths": [], "partial": True, "runs_completed": 0}
    problems: list[str] = []
    code = run_blocking(
        lambda flag: _experiment_until(args, flag, facts, problems),
        name=f"experiment {args.name}",
        before="the first run started",
        flag=stop,
    )
    if args.json:
        if stop.signal and not facts.get("stopped_by"):  # stopped while reading, or twice
            facts["stopped_by"] = stop.why
            problems.append(
                f"stopped by {stop.why} before the first run started"
                if not stop.working
                else f"asked twice to stop: left after {facts['runs_completed']} finished run(s), "
                + ("the files hold the seeds finished before" if facts["paths"] else "nothing written")
            )
        print_summary("experiment", code, facts, problems)
    return code


def _experiment_until(args, stop, facts: dict, problems: list[str]) -> int:
    """Load the windows once, run the rows, write the files; the table is also printed (not with
    ``--json``). ``facts`` and ``problems`` get what ``--json`` reports."""
    import numpy as np
    import torch

    from inference.dataset import WindowSet
    from inference.experiment_report import markdown, write_all
    from inference.experiments import Setup, rows_for, run, summarise
    from inference.model import ModelConfig
    from inference.train import TrainConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    base = ModelConfig()
    mods = _csv(args.modalities)
    try:
        seeds = tuple(int(x) for x in _csv(args.seeds))
        cfg = ModelConfig(tasks=tuple(base.classes), modalities=mods, classes=base.classes)
        tc = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, gamma=args.gamma)
    except ValueError as exc:
        raise UserError(f"--seeds/--modalities: {exc}") from exc
    if not seeds or min(args.epochs, args.few, args.few_epochs) < 1 or args.batch_size < 2:
        raise UserError("--seeds needs a seed, --epochs, --few and --few-epochs >= 1, --batch-size >= 2")
    cal = calibration_config(args)

    def usable(w, reference=True):  # what every row can read: every modality present, a wearer reference
        return w.subset(np.flatnonzero(w.present.all(axis=1) & (w.calibrated if reference else True)))

    ws = WindowSet.concat(
        [w for _, w in _windows(args.data, cfg=cfg, hop_s=args.hop_s, no_cache=args.no_cache, calibration=cal)]
    )
    ws = usable(ws.subset(np.flatnonzero(ws.labelled)))
    tasks = (
        _csv(args.tasks) if args.tasks else tuple(t for j, t in enumerate(cfg.tasks) if (ws.labels[:, j] >= 0).any())
    )
    bad = [t for t in tasks if t not in cfg.tasks]
    if bad or not tasks:
        raise UserError(
            f"--tasks {','.join(bad)}: known tasks are {', '.join(cfg.tasks)}"
            if bad
            else "no labelled window with a wearer reference in --data (recordings need about "
            f"{cal.search_minutes:g} min of usable data before their labels)"
        )
    ws = ws.select(mods, tasks)
    ws = ws.subset(np.flatnonzero(ws.labelled))
    unl = None
    if args.unlabeled:
        unl = usable(
            WindowSet.concat(
                [
                    w
                    for _, w in _windows(
                        args.unlabeled,
                        cfg=cfg,
                        hop_s=args.hop_s,
                        no_cache=args.no_cache,
                        unlabeled=True,
                        calibration=cal,
                    )
                ]
            ),
            reference=args.calibration == "wearer",
        ).select(mods, tasks)
        if not len(unl):
            raise UserError(
                "--unlabeled gave no window with every --modalities present"
                + (" and a wearer reference" if args.calibration == "wearer" else "")
            )
    if args.name == "table5" and not args.unlabeled and args.split != "paper":
        raise UserError(
            "table5 compares training without and with unlabelled data: give --unlabeled SOURCE "
            "(or --split paper, whose 10 % unlabelled part serves)"
        )
    n_rec = len(np.unique(ws.groups))
    folds = args.folds or min(n_rec, 10)
    setup = Setup(
        split=args.split,
        folds=folds,
        split_seed=args.split_seed,
        seeds=seeds,
        train=tc,
        calibrated=args.calibration == "wearer",
        few=args.few,
        few_epochs=args.few_epochs,
    )
    try:
        rows = rows_for(
            args.name,
            tasks=tasks,
            modalities=mods,
            fusion=args.fusion,
            models=_csv(args.models),
            targets=_csv(args.target) if args.target else None,
        )
        if args.rows:
            wanted = _csv(args.rows)
            unknown = [r for r in wanted if r not in {row.id for row in rows}]
            if unknown:
                raise ValueError(f"--rows {','.join(unknown)}: {args.name} has rows {', '.join(r.id for r in rows)}")
            rows = [r for r in rows if r.id in wanted]
        print(
            f"experiment {args.name}: {len(rows)} rows x {len(seeds)} seeds over {len(ws)} windows of {n_rec} "
            f"recordings ({'paper split' if args.split == 'paper' else f'{folds} folds'}), tasks "
            f"{','.join(tasks)}",
            file=sys.stderr,
            flush=True,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    meta = {
        "experiment": args.name,
        "split": args.split,
        "folds": folds if args.split == "subjects" else None,
        "split_seed": args.split_seed,
        "seeds": list(seeds),
        "windows": len(ws),
        "recordings": n_rec,
        "tasks": list(tasks),
        "modalities": list(mods),
        "epochs": args.epochs,
        "calibration": args.calibration,
        "few": args.few if args.name == "fig7" else None,
        "few_epochs": args.few_epochs if args.name == "fig7" else None,
        "data": list(args.data),
        "unlabeled": list(args.unlabeled),
        "unlabeled_windows": 0 if unl is None else len(unl),
        "command": "m3sense " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    }
    out = args.out or Path("m3sense-experiments") / args.name
    planned = len(rows) * len(seeds)
    finished: list[tuple[int, str]] = []  # (seed, row id) of every finished run
    facts |= {
        "experiment": args.name,
        "out": str(out),
        "paths": [],
        "partial": True,
        "runs_completed": 0,
        "runs_planned": planned,
        "stopped_by": None,
    }

    def write(records, stopped_by: str | None):
        """The files of the runs finished so far; until every run is done they say partial
        (in the JSON's meta and the table's heading), with the runs finished of those planned."""
        partial = len(finished) < planned
        ran = {r for _, r in finished}
        summary = summarise([r for r in rows if r.id in ran] if partial else rows, records)
        done_seeds = sorted({s for s, _ in finished}, key=seeds.index)
        m = meta | {
            "seeds": done_seeds if partial else list(seeds),
            "partial": partial,
            "runs_completed": len(finished),
            "runs_planned": planned,
            "stopped_by": stopped_by,
        }
        title = args.name
        if partial:
            title += f" (PARTIAL: {len(finished)} of {planned} runs finished" + (
                f", stopped by {stopped_by})" if stopped_by else ")"
            )
        paths = write_all(out, args.name, summary, records, m)
        table = markdown(title, summary, m)
        paths[0].write_text(table)  # the heading says partial where it is
        facts["paths"] = [str(p) for p in paths]
        return summary, paths, table

    def run_done(_k: int, _n: int, seed: int, row: str) -> None:
        finished.append((seed, row))
        facts["runs_completed"] = len(finished)

    def seed_done(records):  # the files always hold every finished seed
        done = sorted({r["seed"] for r in records}, key=seeds.index)
        write(records, None)
        print(f"{args.name}: seed(s) {','.join(map(str, done))} done, files in {out}", file=sys.stderr, flush=True)

    stop.start_work()
    try:
        records = run(
            rows,
            ws,
            setup,
            unlabeled=unl,
            seed_done=seed_done,
            run_done=run_done,
            should_stop=stop,
            progress=lambda line: print(f"{args.name} {line}", file=sys.stderr, flush=True),
        )
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    partial = len(finished) < planned
    stopped_by = stop.why if partial else None
    facts |= {"partial": partial, "runs_completed": len(finished), "stopped_by": stopped_by}
    if partial:
        problems.append(f"stopped by {stopped_by} after {len(finished)} of {planned} runs")
    if not finished:
        print(
            f"experiment {args.name}: stopped by {stopped_by} before the first run finished: nothing written",
            file=sys.stderr,
        )
        return 0
    summary, paths, table = write(records, stopped_by)
    if not args.json:
        print(table)
    missing = [f"{c['row']}/{c['task']}" for c in summary if not c["seeds"]]
    facts |= {
        "paths": [str(p) for p in paths],
        "cells_scored": len(summary) - len(missing),
        "cells_planned": sum(len(r.scored) for r in rows),
        "not_scored": missing,
        "cells": [
            {k: c[k] for k in ("row", "task", "seeds", "accuracy_mean", "accuracy_sd", "macro_f1_mean", "macro_f1_sd")}
            for c in summary
        ],
    }
    if missing:
        problems.append(f"not scored: {', '.join(missing)}")
    print(
        (
            f"experiment {args.name}: stopped by {stopped_by} after {len(finished)} of {planned} runs: wrote PARTIAL "
            "results of the finished runs to "
            if partial
            else f"experiment {args.name}: wrote "
        )
        + f"{', '.join(str(p) for p in paths)}; "
        f"{len(summary) - len(missing)} of {len(summary)} row/task cells scored"
        + (f", not scored: {', '.join(missing)}" if missing else ""),
        file=sys.stderr,
    )
    return 1 if missing else 0


def _headline(s: dict) -> dict:
    """The figures of one task's scores that go into a checkpoint's provenance."""
    out = {k: s[k] for k in ("n_windows", "accuracy", "macro_f1", "balanced_accuracy", "majority_accuracy")}
    if "stress_vs_rest" in s:
        out["stress_vs_rest"] = {k: s["stress_vs_rest"][k] for k in ("accuracy", "macro_f1")}
    return out


def _print_scores(scores: dict, as_json: bool, title: str) -> None:
    from inference.metrics import markdown_table

    if as_json:
        print(json.dumps(scores, indent=2))
        return
    print(f"# {title}\n\n{markdown_table(scores)}")
    for t, s in scores.items():
        if "stress_vs_rest" in s:
            b = s["stress_vs_rest"]
            print(f"\n{t}, stress vs the rest: accuracy {100 * b['accuracy']:.1f} %, macro-F1 {b['macro_f1']:.3f}")
        if len(s.get("per_subject", {})) > 1:
            binary = "stress_vs_rest" in s
            print(
                f"\n{t} per subject:\n\n| subject | windows | accuracy | macro-F1 |"
                + (" stress vs rest |\n|---|---:|---:|---:|---:|" if binary else "\n|---|---:|---:|---:|")
            )
            for g, v in s["per_subject"].items():
                extra = f" {100 * v['stress_vs_rest_accuracy']:.1f} % |" if binary else ""
                print(
                    f"| {g.rsplit('/', 1)[-1]} | {v['n_windows']} | {100 * v['accuracy']:.1f} % | "
                    f"{v['macro_f1']:.3f} |{extra}"
                )


def _evaluate(args) -> int:
    import numpy as np

    from inference.answer import load_answerer
    from inference.baselines import expected_calibration_error
    from inference.calibration import CalibrationConfig
    from inference.dataset import WindowSet
    from inference.train import detailed_scores

    answerer = load_answerer(args.model, backend=args.backend)
    cfg = _evaluation_config(answerer)
    cal = answerer.calibration_config or CalibrationConfig()
    ws = WindowSet.concat(
        [w for _, w in _windows(args.data, cfg=cfg, hop_s=args.hop_s, no_cache=args.no_cache, calibration=cal)]
    )
    ws = ws.subset(np.flatnonzero(ws.labelled))
    if not len(ws):
        raise UserError("no labelled windows for this model's tasks in the data")
    answers = answerer.answer_set(ws)
    scores = {}
    for j, t in enumerate(cfg.tasks):
        status = np.array([a[t].status for a in answers])
        has = (ws.labels[:, j] >= 0) & np.isin(status, ("ok", "uncertain"))
        if not has.any():
            continue
        idx = np.flatnonzero(has)
        probs = np.array([[answers[i][t].probs[c] for c in answerer.classes[t]] for i in idx], dtype=np.float32)
        one = ws.subset(idx).select(ws.modalities, (t,))
        s = detailed_scores(one, {t: probs}, {t: answerer.classes[t]})[t]
        labelled = ws.labels[:, j] >= 0
        ok = status[has] == "ok"
        s["coverage"] = {
            k: int(((status == k) & labelled).sum()) for k in ("ok", "uncertain", "calibrating", "low_quality")
        }
        s["answered_accuracy"] = float((probs.argmax(1) == one.labels[:, 0])[ok].mean()) if ok.any() else None
        s["ece"], s["reliability"] = expected_calibration_error(probs, one.labels[:, 0])
        s["model"] = answers[idx[0]][t].model
        scores[t] = s
    _print_scores(scores, args.json, f"{answerer.model_id} on {', '.join(args.data)}")
    return 0


def _evaluation_config(answerer):
    """A model config that asks the window sources for the answerer's tasks and for every
    modality any of its networks reads."""
    from inference.model import ModelConfig

    base = ModelConfig()
    mods = (
        tuple(dict.fromkeys(m for net in answerer.models.values() for m in getattr(net, "modalities", ())))
        or base.modalities
    )
    return ModelConfig(tasks=answerer.tasks, modalities=mods, classes={t: answerer.classes[t] for t in answerer.tasks})


def _info(args) -> int:
    from inference.answer import _kind_of

    if args.path is None or _kind_of(args.path) != "m3sense":
        return _bundle_info(args)
    info = _load(args.path).info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    prov = info["provenance"]
    print(
        f"{info['model']}  ({info['path']})\n{info['params']:,} parameters, fusion {info['fusion']}, "
        f"modalities {', '.join(info['modalities'])}, {info['window_s']:g} s windows"
    )
    for t, classes in info["tasks"].items():
        learned = ", ".join(prov.get("tasks_learned_from", {}).get(t, [])) or "?"
        held = prov.get("held_out", {}).get(t)
        score = f"; held out: accuracy {100 * held['accuracy']:.1f} %, macro-F1 {held['macro_f1']:.3f}" if held else ""
        print(f"  {t} ({' / '.join(classes)}): learned from {learned}{score}")
    print(
        f"trained on: {'; '.join(info['trained_on'])}\nseed {prov.get('seed')}, {prov.get('epochs')} epochs, "
        f"code {prov.get('code_version')}\ncommand: {prov.get('command')}"
    )
    if partial := prov.get("partial"):
        print(
            f"PARTIAL: training stopped by {partial.get('stopped_by')} after {partial.get('epochs_done')} of "
            f"{partial.get('epochs_planned')} epochs"
        )
    return 0


def _calibrate_confidence(args) -> int:
    import numpy as np

    from inference.baselines import expected_calibration_error, fit_temperature, scaled
    from inference.checkpoint import _pair
    from inference.dataset import WindowSet
    from inference.predict import Predictor

    ckpt = _load(args.path)
    pred = Predictor(ckpt, backend="onnx")
    pred.temperature = {t: 1.0 for t in pred.tasks}
    cfg = ckpt.config
    ws = WindowSet.concat([w for _, w in _windows(args.data, cfg=cfg, hop_s=args.hop_s, no_cache=False)])
    ws = ws.subset(np.flatnonzero(ws.labelled))
    probs = [
        pred.probs({m: ws.inputs[m][i : i + 256] for m in cfg.modalities}, ws.present[i : i + 256])
        for i in range(0, len(ws), 256)
    ]
    fitted, report = {}, {}
    for j, t in enumerate(cfg.tasks):
        has = ws.labels[:, j] >= 0
        if not has.any():
            continue
        p = np.concatenate([b[t] for b in probs])[has]
        y = ws.labels[has, j]
        fitted[t] = fit_temperature(p, y)
        report[t] = {
            "windows": int(has.sum()),
            "temperature": fitted[t],
            "ece_before": expected_calibration_error(p, y)[0],
            "ece_after": expected_calibration_error(scaled(p, fitted[t]), y)[0],
        }
    if not fitted:
        raise UserError("no labelled windows for the network's tasks in --data")
    _, meta_path = _pair(args.path)
    doc = json.loads(meta_path.read_text())
    doc.setdefault("provenance", {})["confidence"] = {
        "temperature": fitted,
        "fitted_on": list(args.data),
        "report": report,
    }
    meta_path.write_text(json.dumps(doc, indent=2))
    print(json.dumps(report, indent=2))
    return 0


def _bundle_info(args) -> int:
    """What answers each task (a bundle, or one feature model), with its held-out figures."""
    from inference.answer import load_answerer

    info = load_answerer(args.path).info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['model']}  ({info['path']})")
    if info["calibration"]:
        c = info["calibration"]
        print(
            f"wearer calibration: the calmest {c['minutes']:g} min of the first {c['search_minutes']:g} min of "
            "usable data, or a rest marked with a double press"
        )
    for t, m in info["tasks"].items():
        held = (m.get("provenance") or {}).get("held_out") or {}
        score = (
            f"; held out: accuracy {100 * held['accuracy']:.1f} %, macro-F1 {held['macro_f1']:.3f}"
            if "accuracy" in held
            else ""
        )
        cal = f", {m['calibration']} calibration" if m.get("calibration") else ""
        print(f"  {t} ({' / '.join(m['classes'])}): {m['model']} ({m['kind']}{cal}){score}")
    return 0


def _calibration(args) -> int:
    from inference.calibration import CalibrationStore, Calibrator

    store = CalibrationStore(args.state_dir or CalibrationStore.default_folder())
    if args.calibration_command == "reset":
        done = store.reset(args.device)
        print(f"calibration of {args.device} {'reset' if done else 'was not kept'} ({store.folder})", file=sys.stderr)
        return 0 if done else 1
    devices = [args.device] if args.device else store.devices()
    out = {}
    for d in devices:
        p = store.path(d)
        if not p.is_file():
            raise UserError(f"no calibration kept for {d!r} in {store.folder}")
        try:
            state = Calibrator.from_json(json.loads(p.read_text())).to_json()
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{p}: not a calibration state ({exc})") from exc
        out[d] = {
            "reference": state["reference"],
            "searching": state["searching"],
            "config": state["config"],
            "candidate_windows": len(state["candidates"]["t_s"]),
        }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    if not out:
        print(f"no calibration kept in {store.folder}")
    for d, v in out.items():
        r = v["reference"]
        if r is None:
            print(f"{d}: calibrating ({v['candidate_windows']} usable windows so far)")
            continue
        from inference.features import FEATURES

        m = dict(zip(FEATURES, r["mean"]))
        print(
            f"{d}: {r['kind']} reference, {r['n_windows']} windows from {r['t_start_s']:.0f} to {r['t_end_s']:.0f} "
            f"(Unix s): EDA {_feature_text(m, 'eda_mean_us', 'µS')}, "
            f"temperature {_feature_text(m, 'temp_mean_c', '°C')}, heart rate {_feature_text(m, 'hr_bpm', 'bpm')}"
        )
    return 0


def _feature_text(means: Mapping[str, float | None], name: str, unit: str) -> str:
    """One reference mean for a person to read; '?' where the reference lacks it."""
    value = means.get(name)
    return "?" if value is None else f"{value:.2f} {unit}"


def _export(args) -> int:
    from inference.onnx_export import export_onnx

    ckpt = _load(args.model)
    try:
        path = export_onnx(ckpt.model, args.out, _csv(args.tasks) if args.tasks else None)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    print(f"wrote {path}", file=sys.stderr)
    return 0


def _infer(args) -> int:
    if (spec := workers_spec(args, "infer")) is not None:  # a worker of a group: its subscriber shares partitions
        from bus.shards import configure, owned_line

        configure(spec, lambda owned: print(owned_line("infer", spec, owned), file=sys.stderr, flush=True))
    from common.counting import run_counting
    from inference.answer import Calibrations, load_answerer
    from inference.calibration import CalibrationConfig, CalibrationStore
    from inference.node import serve

    answerer = load_answerer(
        args.model, tasks=_csv(args.tasks) if args.tasks else None, backend=args.backend, threads=args.threads
    )
    store = (
        None
        if args.state_dir == "none"
        else CalibrationStore(Path(args.state_dir) if args.state_dir else CalibrationStore.default_folder())
    )
    calibrations = Calibrations(answerer.calibration_config or CalibrationConfig(), store)

    def ready(bus: str) -> None:
        where = f", calibration state in {store.folder}" if store and answerer.calibration_config else ""
        print(
            f"infer: {answerer.model_id} ({args.backend}), tasks {','.join(answerer.tasks)}{where}, listening on {bus}",
            file=sys.stderr,
            flush=True,
        )

    from bus.metrics import start_metrics

    return run_counting(
        "infer",
        lambda stop, report: serve(
            args.bus,
            answerer,
            max_batch=args.max_batch,
            max_wait_s=args.max_wait_s,
            on_ready=ready,
            report=report,
            calibrations=calibrations,
            metrics=start_metrics(args, "infer"),
            stop=stop,
        ),
        json_summary=args.json,
    )
