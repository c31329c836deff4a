"""The paper's experiments (Tables 2, 4, 5 and Figures 7, 8) as rows scored over one set of
windows and one set of folds. No file or console I/O: ``inference.cli`` loads the windows and
``inference.experiment_report`` writes the table, CSV and plot; progress goes to a callback.

Why one runner for all five: a comparison means something only when every row sees the same
windows and the same held-out people. So the windows are fixed once (labelled, with a wearer
reference, every modality present: what every row can read), the folds once (``split_seed``),
and rows differ only in what the row is about. Seeds vary the models' initialisation and
batches (and the trees of the feature models), never the folds, so the spread over seeds is the
models' own.

Splits: ``subjects`` (default) holds out whole recordings, one fold after another, and pools the
held-out predictions; ``paper`` is the paper's stratified window split (5.3), in which windows of
one person (overlapping ones, even) sit on both sides, which is why its figures run higher.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from inference.baselines import KINDS, feature_floor, fold_groups, make_estimator, model_inputs
from inference.dataset import WindowSet
from inference.features import FEATURES
from inference.model import FUSIONS, ModelConfig
from inference.train import (
    Split,
    TrainConfig,
    detailed_scores,
    fit_split,
    init_model,
    predict_probs,
    split_paper,
    split_subjects,
    to_tensors,
)
from inference.transfer import transfer_model

NAMES = ("table2", "table4", "table5", "fig7", "fig8")
SPLITS = ("subjects", "paper")
FEATURE_ROWS = ("rf", "dt", "et", "lda", "lr", "svm")  # the paper's order in Table 2
FUSION_NAMES = {"sum": "Non-Attention", "keyless": "Keyless", "hamlet": "HAMLET", "cam": "CAM"}
#: The paper's Table 2 (top-1 accuracy, %), by row id and task.
_T2 = {
    "rf": (60.0, 46.9, 69.6),
    "dt": (50.5, 43.0, 61.8),
    "et": (61.9, 43.9, 71.5),
    "lda": (37.6, 45.1, 66.1),
    "lr": (40.0, 48.1, 65.3),
    "svm": (48.0, 49.0, 67.2),
    "single-sum": (60.3, 62.0, 82.8),
    "single-keyless": (64.0, 63.5, 82.8),
    "single-hamlet": (70.2, 63.5, 86.4),
    "m3sense-sum": (71.5, 75.2, 81.5),
    "m3sense-keyless": (66.7, 75.2, 87.0),
    "m3sense-hamlet": (71.5, 75.2, 81.5),
    "m3sense-cam": (70.3, 75.2, 85.7),
}
#: Table 5: without and with unlabelled data.
_T5 = {
    "sum-without": (54.9, 75.2, 81.5),
    "hamlet-without": (52.7, 75.2, 83.6),
    "keyless-without": (55.0, 75.2, 81.5),
    "cam-without": (51.4, 75.2, 81.7),
    "sum-with": (71.5, 75.2, 81.5),
    "keyless-with": (66.7, 75.2, 87.0),
    "hamlet-with": (71.5, 75.2, 81.5),
    "cam-with": (70.3, 75.2, 85.7),
}
#: Table 4: task combinations (M3Sense), by the set of tasks learned together.
_T4 = {
    frozenset(("anxiety", "emotion", "stress")): (60.2, 75.2, 82.7),
    frozenset(("anxiety", "emotion")): (63.5, 63.5, None),
    frozenset(("anxiety", "stress")): (70.3, None, 85.8),
    frozenset(("emotion", "stress")): (None, 75.2, 82.4),
}
_PAPER_TASKS = ("anxiety", "emotion", "stress")
#: The feature columns each modality contributes (fig8 drops a modality's features with it).
_FEATURE_MODALITY = {
    "eda": "eda",
    "scr": "eda",
    "temp": "temp",
    "hr": "bvp",
    "ibi": "bvp",
    "bvp": "bvp",
    "beat": "bvp",
    "acc": "acc",
}


class Stopped(Exception):
    """A stop was asked (``should_stop``) while a run was unfinished: that run is dropped."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    """One line of an experiment: a model and what it learns from."""

    id: str
    label: str
    family: str
    model: str  # a feature model kind (rf, ...) or a fusion (cam, ...)
    tasks: tuple[str, ...]  # what it learns together (scored: all of them, or ``tasks[0]`` for fig7)
    modalities: tuple[str, ...]
    single_task: bool = False  # one network per task (the paper's deep baselines)
    no_alignment: bool = False  # γ = 0: cross-entropy only, no unlabelled windows
    unlabeled: bool = False  # the unlabelled windows train the alignment loss
    fig7: str | None = None  # "scratch", "transfer" (from tasks[1:]) or "all" (every task, all labels)
    paper: Mapping[str, float] | None = None  # the paper's top-1 accuracy (%) per task

    @property
    def is_features(self) -> bool:
        return self.model in KINDS

    @property
    def scored(self) -> tuple[str, ...]:
        return self.tasks[:1] if self.fig7 else self.tasks


def _paper(values, tasks) -> dict[str, float]:
    return {t: v for t, v in zip(_PAPER_TASKS, values) if v is not None and t in tasks}


def rows_for(
    name: str,
    *,
    tasks: Sequence[str],
    modalities: Sequence[str],
    fusion: str = "cam",
    models: Sequence[str] = ("rf", "m3sense-cam"),
    targets: Sequence[str] | None = None,
) -> list[Row]:
    """Every row of experiment ``name`` for these tasks and modalities."""
    tasks, mods = tuple(tasks), tuple(modalities)
    base: dict[str, Any] = dict(tasks=tasks, modalities=mods)
    if name == "table2":
        rows = [
            Row(id=k, label=k.upper(), family="features", model=k, paper=_paper(_T2[k], tasks), **base)
            for k in FEATURE_ROWS
        ]
        rows += [
            Row(
                id=f"single-{f}",
                label=f"{FUSION_NAMES[f]} (one network per task)",
                family="deep baseline",
                model=f,
                single_task=True,
                no_alignment=True,
                paper=_paper(_T2[f"single-{f}"], tasks),
                **base,
            )
            for f in ("sum", "keyless", "hamlet")
        ]
        rows += [
            Row(
                id=f"m3sense-{f}",
                label=f"M3Sense ({FUSION_NAMES[f]})",
                family="M3Sense",
                model=f,
                unlabeled=True,
                paper=_paper(_T2[f"m3sense-{f}"], tasks),
                **base,
            )
            for f in ("sum", "keyless", "hamlet", "cam")
        ]
        return rows
    if name == "table4":
        combos = [c for n in range(len(tasks), 1, -1) for c in itertools.combinations(tasks, n)]
        if not combos:
            raise ValueError("table4 compares task combinations: it needs data labelled for two tasks or more")
        return [
            Row(
                id="+".join(c),
                label=" + ".join(c),
                family=f"M3Sense ({FUSION_NAMES[fusion]})",
                model=fusion,
                tasks=c,
                modalities=mods,
                unlabeled=True,
                paper=_paper(_T4.get(frozenset(c), ()), c),
            )
            for c in combos
        ]
    if name == "table5":
        return [
            Row(
                id=f"{f}-{w}",
                label=f"M3Sense ({FUSION_NAMES[f]}), {w} unlabelled data",
                family=f"{w} unlabelled",
                model=f,
                no_alignment=w == "without",
                unlabeled=w == "with",
                paper=_paper(_T5[f"{f}-{w}"], tasks),
                **base,
            )
            for w in ("without", "with")
            for f in ("sum", "keyless", "hamlet", "cam")
        ]
    if name == "fig7":
        if len(tasks) < 2:
            raise ValueError(
                "fig7 transfers to a task the model never saw: it needs data labelled for two tasks or more"
            )
        rows = []
        for t in targets or tasks:
            if t not in tasks:
                raise ValueError(f"--target {t}: not among the tasks {list(tasks)}")
            others = tuple(x for x in tasks if x != t)
            src = "-".join(others)
            common: dict[str, Any] = dict(model=fusion, modalities=mods, family=f"to {t}")
            rows += [
                Row(
                    id=f"scratch:{t}",
                    label=f"{t}: from scratch on the few recordings",
                    tasks=(t,),
                    fig7="scratch",
                    **common,
                ),
                Row(
                    id=f"transfer:{src}>{t}",
                    label=f"{t}: M3Sense({src}) frozen, new head on the few",
                    tasks=(t, *others),
                    fig7="transfer",
                    **common,
                ),
                Row(
                    id=f"all:{t}",
                    label=f"{t}: M3Sense(all tasks), every training label (reference)",
                    tasks=(t, *others),
                    fig7="all",
                    **common,
                ),
            ]
        return rows
    if name == "fig8":
        subsets = [c for n in range(len(mods), 0, -1) for c in itertools.combinations(mods, n)]
        rows = []
        for m in models:
            kind = m.removeprefix("m3sense-")
            if kind not in KINDS and kind not in FUSIONS:
                raise ValueError(
                    f"--models {m}: a feature model ({', '.join(KINDS)}) or m3sense-FUSION ({', '.join(FUSIONS)})"
                )
            label = kind.upper() if kind in KINDS else f"M3Sense ({FUSION_NAMES[kind]})"
            rows += [
                Row(
                    id=f"{m}:{'-'.join(c)}",
                    label=f"{label}, {'-'.join(c).upper()}",
                    family=label,
                    model=kind,
                    tasks=tasks,
                    modalities=c,
                    unlabeled=kind not in KINDS,
                )
                for c in subsets
            ]
        return rows
    raise ValueError(f"experiment must be one of {NAMES}, not {name!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Setup:
    """What every row of one run shares."""

    split: str = "subjects"
    folds: int = 10
    split_seed: int = 0
    seeds: tuple[int, ...] = (1, 2, 3)
    train: TrainConfig = field(default_factory=TrainConfig)
    calibrated: bool = False  # inputs relative to each wearer's reference (features, and M3Sense's EDA/TEMP)
    few: int = 2  # fig7: labelled recordings the new head learns from
    few_epochs: int = 20  # fig7: epochs of the models learned from those few (a few batches per epoch)


def parts(ws: WindowSet, setup: Setup) -> list[Split]:
    """The held-out parts every row is scored on: one per fold, or the paper's one split."""
    if setup.split == "paper":
        return [split_paper(ws, setup.split_seed)]
    groups = np.unique(ws.groups)
    if not 2 <= setup.folds <= len(groups):
        raise ValueError(f"--folds must be between 2 and the number of recordings ({len(groups)})")
    return [
        split_subjects(ws, setup.split_seed, test_groups=list(f))
        for f in fold_groups(ws.groups, setup.folds, setup.split_seed)
    ]


def feature_columns(modalities: Sequence[str]) -> np.ndarray:
    """Indices of the wrist features computed from these modalities."""
    return np.array([i for i, f in enumerate(FEATURES) if _FEATURE_MODALITY[f.split("_")[0]] in modalities])


def _relative(setup: Setup, modalities: Sequence[str]) -> tuple[str, ...]:
    return tuple(m for m in ("eda", "temp") if m in modalities) if setup.calibrated else ()


def _feature_probs(row: Row, data: WindowSet, part: Split, seed: int, setup: Setup) -> dict[str, np.ndarray]:
    cols = feature_columns(row.modalities)
    train = np.concatenate([part.train, part.val])
    out = {}
    for t in row.tasks:
        y = data.labels[:, data.tasks.index(t)]
        tr = train[y[train] >= 0]
        if len(np.unique(y[tr])) < 2:
            continue
        floor = feature_floor(data.features[tr]) if setup.calibrated else None
        x = model_inputs(data.features, data.ref_mean, data.ref_sd, setup.calibrated, floor)[:, cols]
        est = make_estimator(row.model, seed).fit(x[tr], y[tr])
        p = np.zeros((len(part.test), len(ModelConfig().classes[t])))
        p[:, est.classes_] = est.predict_proba(x[part.test])
        out[t] = p
    return out


def _fit(
    data: WindowSet,
    part: Split,
    tasks: Sequence[str],
    row: Row,
    seed: int,
    setup: Setup,
    *,
    train: np.ndarray | None = None,
    val: np.ndarray | None = None,
    unlabeled: np.ndarray,
    model=None,
    normalizer=None,
    keep_labels: Sequence[str] | None = None,
    few: bool = False,
    should_stop: Callable[[], bool] | None = None,
):
    """Train one network on ``tasks`` (labels of ``keep_labels`` only, if given): (model, its
    test-part probabilities, its normaliser), all None when the training side holds fewer than two
    labelled windows. Raises :class:`Stopped` when ``should_stop`` ended the training."""
    base = ModelConfig()
    cfg = (
        model.cfg
        if model is not None
        else ModelConfig(
            fusion=row.model, tasks=tuple(tasks), modalities=row.modalities, classes={t: base.classes[t] for t in tasks}
        )
    )
    sub = data.select(cfg.modalities, cfg.tasks)
    if keep_labels is not None:
        keep = np.array([t in keep_labels for t in cfg.tasks])
        sub = replace(sub, labels=np.where(keep[None, :], sub.labels, -1))
    has = np.asarray((sub.labels >= 0).any(axis=1))
    train = part.train if train is None else train
    val = part.val if val is None else val
    split = Split(train=train[has[train]], val=val[has[val]], test=part.test, unlabeled=unlabeled)
    if len(split.train) < 2:
        return None, None, None
    tc = replace(
        setup.train,
        seed=seed,
        gamma=0.0 if row.no_alignment else setup.train.gamma,
        epochs=setup.few_epochs if few else setup.train.epochs,
    )
    res, norm = fit_split(
        sub,
        split,
        tc,
        model=model if model is not None else init_model(cfg, seed),
        relative=_relative(setup, cfg.modalities),
        normalizer=normalizer,
        should_stop=should_stop,
    )
    if res.stopped:
        raise Stopped
    return res.model, predict_probs(res.model, to_tensors(sub.subset(part.test), norm)), norm


def _network_probs(
    row: Row,
    data: WindowSet,
    part: Split,
    extra: np.ndarray,
    seed: int,
    setup: Setup,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, np.ndarray]:
    empty = np.zeros(0, np.int64)
    unl = np.concatenate([part.unlabeled, extra]) if row.unlabeled else empty
    if row.fig7 is None:
        out: dict[str, np.ndarray] = {}
        for tasks in [(t,) for t in row.tasks] if row.single_task else [row.tasks]:
            _, p, _ = _fit(data, part, tasks, row, seed, setup, unlabeled=unl, should_stop=should_stop)
            out |= {t: v for t, v in (p or {}).items() if t in tasks}
        return out
    target, others = row.tasks[0], row.tasks[1:]
    if row.fig7 == "all":
        _, p, _ = _fit(data, part, row.tasks, row, seed, setup, unlabeled=unl, should_stop=should_stop)
        return {target: p[target]} if p else {}
    few = few_recordings(data, part, target, setup.few, seed)
    if row.fig7 == "scratch":
        _, p, _ = _fit(
            data,
            part,
            (target,),
            row,
            seed,
            setup,
            train=few,
            val=empty,
            unlabeled=empty,
            few=True,
            should_stop=should_stop,
        )
        return {target: p[target]} if p else {}
    source, _, norm = _fit(data, part, others, row, seed, setup, unlabeled=unl, should_stop=should_stop)
    if source is None:
        return {}
    model = transfer_model(source, (target,), ModelConfig().classes, seed)
    _, p, _ = _fit(
        data,
        part,
        model.cfg.tasks,
        row,
        seed,
        setup,
        train=few,
        val=empty,
        unlabeled=empty,
        model=model,
        normalizer=norm,
        keep_labels=(target,),
        few=True,
        should_stop=should_stop,
    )
    return {target: p[target]} if p else {}


def few_recordings(data: WindowSet, part: Split, task: str, n: int, seed: int) -> np.ndarray:
    """The training windows labelled for ``task`` of ``n`` of the training part's recordings,
    drawn by ``seed`` (the same few for the from-scratch and the transferred model)."""
    y = data.labels[:, data.tasks.index(task)]
    train = part.train[y[part.train] >= 0]
    groups = np.unique(data.groups[train])
    chosen = np.random.default_rng(seed).permutation(groups)[:n]
    return train[np.isin(data.groups[train], chosen)]


def run(
    rows: Sequence[Row],
    ws: WindowSet,
    setup: Setup,
    *,
    unlabeled: WindowSet | None = None,
    progress: Callable[[str], None] = lambda _: None,
    seed_done: Callable[[list[dict]], None] = lambda _: None,
    run_done: Callable[[int, int, int, str], None] = lambda _k, _n, _seed, _row: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> list[dict]:
    """Score every row on every seed; one record per (row, task, seed) that could be scored.
    ``seed_done`` gets the records so far after each seed (a long run keeps its finished seeds);
    ``run_done(k, total, seed, row_id)`` follows each finished run (one row, one seed, every fold).

    ``should_stop`` is asked before every fold and every batch of a network: once it says yes,
    the unfinished run is dropped and the records of the finished runs are returned."""
    data = ws if unlabeled is None or not len(unlabeled) else WindowSet.concat([ws, unlabeled])
    extra = np.arange(len(ws), len(data))
    folds = parts(ws, setup)
    records: list[dict] = []
    total = len(setup.seeds) * len(rows)
    for k, (seed, row) in enumerate(itertools.product(setup.seeds, rows), 1):
        test_idx: list[np.ndarray] = []
        probs: dict[str, list[np.ndarray | None]] = {t: [] for t in row.scored}  # None: no model in a fold
        try:
            for i, part in enumerate(folds, 1):
                if should_stop():
                    raise Stopped
                progress(f"[{k}/{total}] seed {seed}, {row.id}: fold {i}/{len(folds)}")
                p = (
                    _feature_probs(row, data, part, seed, setup)
                    if row.is_features
                    else _network_probs(row, data, part, extra, seed, setup, should_stop)
                )
                test_idx.append(part.test)
                for t in row.scored:  # a fold with no model for t adds nothing to t's pooled score
                    probs[t].append(p.get(t))
        except Stopped:
            break
        for t in row.scored:
            idx = np.concatenate([ix for ix, p in zip(test_idx, probs[t]) if p is not None] or [np.zeros(0, int)])
            one = ws.subset(idx).select(ws.modalities, (t,))
            if not len(idx) or not (one.labels[:, 0] >= 0).any():
                continue
            s = detailed_scores(
                one, {t: np.concatenate([p for p in probs[t] if p is not None])}, {t: ModelConfig().classes[t]}
            )[t]
            records.append(
                {
                    "row": row.id,
                    "task": t,
                    "seed": seed,
                    "windows": s["n_windows"],
                    "accuracy": s["accuracy"],
                    "macro_f1": s["macro_f1"],
                    "balanced_accuracy": s["balanced_accuracy"],
                    "stress_vs_rest": s["stress_vs_rest"]["accuracy"] if "stress_vs_rest" in s else None,
                    "folds_scored": sum(p is not None for p in probs[t]),
                }
            )
        run_done(k, total, seed, row.id)
        if k % len(rows) == 0:
            seed_done(records)
    return records


def summarise(rows: Sequence[Row], records: Sequence[dict]) -> list[dict]:
    """Per row and scored task: mean and SD over seeds (SD 0 with one seed), or a cell marked missing."""
    out = []
    for row in rows:
        for t in row.scored:
            rs = [r for r in records if r["row"] == row.id and r["task"] == t]
            cell = {
                "row": row.id,
                "label": row.label,
                "family": row.family,
                "task": t,
                "seeds": len(rs),
                "paper_accuracy": (row.paper or {}).get(t),
            }
            for key in ("accuracy", "macro_f1", "balanced_accuracy", "stress_vs_rest"):
                v = np.array([r[key] for r in rs if r[key] is not None], dtype=float)
                cell[f"{key}_mean"] = float(v.mean()) if len(v) else None
                cell[f"{key}_sd"] = float(v.std(ddof=1)) if len(v) > 1 else (0.0 if len(v) else None)
            cell["windows"] = rs[0]["windows"] if rs else 0
            cell["folds_scored"] = min((r["folds_scored"] for r in rs), default=0)
            out.append(cell)
    return out
