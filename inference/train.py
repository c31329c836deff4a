"""Training (the paper's Algorithm 1), data splits and scoring. No file or console I/O here:
``inference.cli`` reads the data and writes checkpoints; progress goes to a callback.

Algorithm 1 as implemented: every epoch walks the labelled batches and the unlabelled
batches in one shuffled order. A labelled batch costs the masked multitask cross-entropy
(each task averaged over the windows that carry its label; a window without a label for a
task adds nothing to that task) plus γ·KL; an unlabelled batch costs γ·KL alone (Eq. 16).
KL is summed over tasks (Eq. 13) and averaged over the batch and the latent dimensions.
Adam with weight decay, cosine annealing with warm restarts stepped per batch (T0 and Tmult
in epochs), seed fixed. Deviation from the paper, on purpose: batches of 32, not 2 (CPU
throughput), and cross-entropy weighted by inverse class frequency, because WESAD has about
four baseline windows per amusement window and macro-F1 is reported.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

from inference.dataset import Normalizer, WindowSet, reference_levels
from inference.metrics import collapse, score_all
from inference.model import M3Sense, ModelConfig, kl_to_standard_normal


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainConfig:
    epochs: int = 65
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 1e-4
    gamma: float = 0.3
    t0_epochs: int = 30
    t_mult: int = 2
    seed: int = 333
    balance_classes: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class Split:
    """Window indices of each part. ``unlabeled`` windows train the alignment loss only."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    unlabeled: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def _strata(ws: WindowSet) -> np.ndarray:
    """One stratum per (task, class) a window is labelled with (its first label if several),
    -1 for windows with no label."""
    n_classes = ws.labels.max(axis=0).clip(min=0) + 1
    offsets = np.concatenate([[0], np.cumsum(n_classes)[:-1]])
    strata = np.full(len(ws), -1, dtype=np.int64)
    for j in range(len(ws.tasks) - 1, -1, -1):
        has = ws.labels[:, j] >= 0
        strata[has] = offsets[j] + ws.labels[has, j]
    return strata


def split_paper(ws: WindowSet, seed: int) -> Split:
    """The paper's protocol (5.3): per task and class, 35 % train+validation (split 75/25),
    55 % test, the remaining 10 % unlabelled. Windows are split, not subjects: overlapping
    windows of one recording can fall on both sides, as in the paper."""
    rng = np.random.default_rng(seed)
    strata = _strata(ws)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": [], "unlabeled": []}
    for s in np.unique(strata):
        idx = rng.permutation(np.flatnonzero(strata == s))
        if s < 0:
            parts["unlabeled"].append(idx)
            continue
        n = len(idx)
        n_tv, n_test = round(0.35 * n), round(0.55 * n)
        n_train = round(0.75 * n_tv)
        parts["train"].append(idx[:n_train])
        parts["val"].append(idx[n_train:n_tv])
        parts["test"].append(idx[n_tv : n_tv + n_test])
        parts["unlabeled"].append(idx[n_tv + n_test :])
    return Split(**{k: np.sort(np.concatenate(v)) if v else np.zeros(0, np.int64) for k, v in parts.items()})


def split_subjects(
    ws: WindowSet,
    seed: int,
    *,
    test_groups: Sequence[str] | None = None,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
) -> Split:
    """Leave-subjects-out: whole recordings go to test (``test_groups``, or a fraction of each
    source's recordings) and to validation, so no window of a test subject is trained on.
    Windows without any label (unlabelled sources) go to ``unlabeled``."""
    rng = np.random.default_rng(seed)
    labelled = ws.labelled
    if test_groups is not None:
        test_groups = resolve_groups(test_groups, ws.groups[labelled])
    test_set: set[str] = set(test_groups or ())
    val_set: set[str] = set()
    for src in np.unique(ws.sources):
        groups = sorted(set(ws.groups[(ws.sources == src) & labelled]))
        if len(groups) < 2:
            continue
        order = [groups[i] for i in rng.permutation(len(groups))]
        if test_groups is None:
            k = max(1, math.ceil(test_fraction * len(groups)))
            test_set.update(order[:k])
        rest = [g for g in order if g not in test_set]
        if len(rest) >= 3:
            val_set.update(rest[: max(1, math.ceil(val_fraction * len(groups)))])
    in_test = np.isin(ws.groups, list(test_set)) & labelled
    in_val = np.isin(ws.groups, list(val_set)) & labelled
    return Split(
        train=np.flatnonzero(labelled & ~in_test & ~in_val),
        val=np.flatnonzero(in_val),
        test=np.flatnonzero(in_test),
        unlabeled=np.flatnonzero(~labelled),
    )


def resolve_groups(names: Sequence[str], groups: np.ndarray) -> list[str]:
    """Recording names as a user types them: a whole group (``synthetic(...)/sim03``, a WESAD
    subject ``S5``) or, when only one labelled source has it, the part after the last ``/``."""
    known = sorted(set(groups.tolist()))
    out = []
    for name in names:
        hits = [name] if name in known else [g for g in known if g.rsplit("/", 1)[-1] == name]
        if len(hits) != 1:
            why = "matches several" if hits else "matches none"
            raise ValueError(f"test subject {name!r} {why} of the subjects {known}")
        out.append(hits[0])
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Tensors:
    """A window set normalised once, as tensors the training loop indexes."""

    inputs: dict[str, torch.Tensor]
    present: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, idx: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        return {m: v[idx] for m, v in self.inputs.items()}, self.present[idx], self.labels[idx]


def to_tensors(ws: WindowSet, normalizer: Normalizer) -> Tensors:
    levels = reference_levels(ws.ref_mean, normalizer.relative) if normalizer.relative else {}
    return Tensors(
        inputs={m: torch.from_numpy(normalizer.apply(m, v, levels.get(m))) for m, v in ws.inputs.items()},
        present=torch.from_numpy(ws.present.copy()),
        labels=torch.from_numpy(ws.labels.copy()),
    )


def class_weights(labels: np.ndarray, n_classes: Sequence[int]) -> list[torch.Tensor]:
    """Per task: n / (C · n_c), 1 for a class never seen (it then never weighs in)."""
    out = []
    for j, c in enumerate(n_classes):
        y = labels[:, j][labels[:, j] >= 0]
        counts = np.bincount(y, minlength=c).astype(float)
        w = np.where(counts > 0, len(y) / (c * np.maximum(counts, 1)), 1.0)
        out.append(torch.tensor(w, dtype=torch.float32))
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class EpochLog:
    epoch: int
    loss: float
    ce: float
    kl: float
    train_acc: Mapping[str, float]
    val: Mapping[str, Mapping[str, float]]  # task -> {"accuracy", "macro_f1"}
    lr: float


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainResult:
    model: M3Sense  # with the best validation weights loaded (the initial ones when no epoch finished)
    best_epoch: int  # 0: no epoch finished
    history: tuple[EpochLog, ...]  # one entry per finished epoch
    stopped: bool = False  # ``should_stop`` ended it before the planned epochs

    @property
    def epochs_done(self) -> int:
        return len(self.history)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def init_model(cfg: ModelConfig, seed: int) -> M3Sense:
    """A fresh network whose initial weights follow from ``seed``: with :func:`train_model`
    seeding the batches too, one command and seed give one checkpoint."""
    seed_everything(seed)
    return M3Sense(cfg)


def alignment_loss(out) -> torch.Tensor:
    # a tensor start (0.0 + first term is exact): the same sum, and a tensor even for no tasks
    return sum((kl_to_standard_normal(out.mu[t], out.logvar[t]).mean() for t in out.mu), torch.zeros(()))


def train_model(
    model: M3Sense,
    tc: TrainConfig,
    train: Tensors,
    val: Tensors | None,
    unlabeled: Tensors | None = None,
    *,
    on_step: Callable[[int, int, int, Mapping[str, float]], None] | None = None,
    on_epoch: Callable[[EpochLog], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Algorithm 1; keeps the weights of the epoch with the best mean validation macro-F1
    (the last epoch when there is no validation set).

    ``should_stop`` is asked before every batch (an epoch of a large data set takes minutes, more
    than a supervisor waits after SIGTERM): once it says yes, the unfinished epoch is dropped and
    the result is that of the epochs finished, marked ``stopped``."""
    seed_everything(tc.seed)
    tasks = model.cfg.tasks
    n_classes = [len(model.cfg.classes[t]) for t in tasks]
    weights = class_weights(train.labels.numpy(), n_classes) if tc.balance_classes else [None] * len(tasks)
    trainable = [p for p in model.parameters() if p.requires_grad]  # frozen parts (transfer) stay as loaded
    opt = torch.optim.Adam(trainable, lr=tc.lr, weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=tc.t0_epochs, T_mult=tc.t_mult)
    g = torch.Generator().manual_seed(tc.seed)
    history: list[EpochLog] = []
    best = (-math.inf, 0, copy.deepcopy(model.state_dict()))
    stopped = False
    for epoch in range(1, tc.epochs + 1):
        batches = [("l", b) for b in _batches(len(train), tc.batch_size, g)]
        if unlabeled is not None and len(unlabeled):
            batches += [("u", b) for b in _batches(len(unlabeled), tc.batch_size, g)]
        order = torch.randperm(len(batches), generator=g).tolist()
        model.train()
        sums = {"loss": 0.0, "ce": 0.0, "kl": 0.0}
        hits = np.zeros(len(tasks)), np.zeros(len(tasks))
        for step, k in enumerate(order):
            if should_stop is not None and should_stop():
                stopped = True
                break
            kind, idx = batches[k]
            source = train if kind == "l" else unlabeled
            assert source is not None  # "u" batches exist only with unlabelled windows
            x, present, y = source.take(idx)
            out = model(x, present)
            kl = alignment_loss(out)
            ce = torch.zeros(())
            if kind == "l":
                for j, t in enumerate(tasks):
                    has = y[:, j] >= 0
                    if has.any():
                        ce = ce + F.cross_entropy(out.logits[t][has], y[has, j], weight=weights[j])
                        hits[0][j] += (out.logits[t][has].argmax(1) == y[has, j]).sum().item()
                        hits[1][j] += has.sum().item()
            loss = ce + tc.gamma * kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step(epoch - 1 + (step + 1) / len(order))
            sums["loss"] += loss.item()
            sums["ce"] += ce.item()
            sums["kl"] += kl.item()
            if on_step is not None:
                on_step(epoch, step + 1, len(order), {k: v / (step + 1) for k, v in sums.items()})
        if stopped:  # this epoch is unfinished: it neither counts nor competes for the best weights
            break
        val_scores = {}
        if val is not None and len(val):
            probs = predict_probs(model, val)
            val_scores = {
                t: {"accuracy": s["accuracy"], "macro_f1": s["macro_f1"]}
                for t, s in score_all(val.labels.numpy(), probs, tasks, model.cfg.classes).items()
            }
        log = EpochLog(
            epoch=epoch,
            loss=sums["loss"] / len(order),
            ce=sums["ce"] / len(order),
            kl=sums["kl"] / len(order),
            train_acc={t: hits[0][j] / hits[1][j] for j, t in enumerate(tasks) if hits[1][j]},
            val=val_scores,
            lr=opt.param_groups[0]["lr"],
        )
        history.append(log)
        if on_epoch is not None:
            on_epoch(log)
        metric = np.mean([s["macro_f1"] for s in val_scores.values()]) if val_scores else epoch
        if metric > best[0]:
            best = (metric, epoch, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[2])
    model.eval()
    return TrainResult(model=model, best_epoch=best[1], history=tuple(history), stopped=stopped)


def fit_split(
    ws: WindowSet,
    split: Split,
    tc: TrainConfig,
    *,
    model: M3Sense,
    relative: Sequence[str] = (),
    normalizer: Normalizer | None = None,
    on_step=None,
    on_epoch=None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[TrainResult, Normalizer]:
    """Train ``model`` on one split of ``ws``: the normaliser is fitted on the training and
    unlabelled parts (no test window shapes it), unless one is given (a transferred model must
    see its inputs scaled as its frozen encoders learned them)."""
    norm = normalizer or Normalizer.fit(ws.subset(np.concatenate([split.train, split.unlabeled])), relative=relative)
    unl = ws.subset(split.unlabeled).without_labels()
    res = train_model(
        model,
        tc,
        to_tensors(ws.subset(split.train), norm),
        to_tensors(ws.subset(split.val), norm) if len(split.val) else None,
        to_tensors(unl, norm) if len(unl) else None,
        on_step=on_step,
        on_epoch=on_epoch,
        should_stop=should_stop,
    )
    return res, norm


def _batches(n: int, size: int, g: torch.Generator) -> list[torch.Tensor]:
    """Shuffled index batches; a trailing batch of one is dropped (BatchNorm needs two)."""
    perm = torch.randperm(n, generator=g)
    return [b for b in perm.split(size) if len(b) > 1]


@torch.no_grad()
def predict_probs(
    model: M3Sense, data: Tensors, batch_size: int = 256, tasks: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """Softmax probabilities per task, (N, classes), in eval mode."""
    was_training = model.training
    model.eval()
    names = list(model.cfg.tasks if tasks is None else tasks)
    parts: dict[str, list[np.ndarray]] = {t: [] for t in names}
    for idx in torch.arange(len(data)).split(batch_size):
        x, present, _ = data.take(idx)
        out = model(x, present, names)
        for t in names:
            parts[t].append(torch.softmax(out.logits[t], dim=-1).numpy())
    model.train(was_training)
    return {
        t: np.concatenate(v) if v else np.zeros((0, len(model.cfg.classes[t])), np.float32) for t, v in parts.items()
    }


def detailed_scores(ws: WindowSet, probs: Mapping[str, np.ndarray], classes: Mapping[str, Sequence[str]]) -> dict:
    """Per task: scores over all windows, per subject (group), and for the stress task also
    stress vs the rest (collapsed from the 3-class output: the argmax is "stress" or not)."""
    out = score_all(ws.labels, probs, ws.tasks, classes)
    for t, s in out.items():
        j = ws.tasks.index(t)
        binary = None
        if t == "stress" and "stress" in classes[t]:
            pos = list(classes[t]).index("stress")
            y2 = collapse(ws.labels[:, j], pos)[:, None]
            p2 = np.stack([1 - probs[t][:, pos], probs[t][:, pos]], axis=1)

            def binary(sel, y2=y2, p2=p2):
                return score_all(y2[sel], {"b": p2[sel]}, ("b",), {"b": ("rest", "stress")})["b"]

            s["stress_vs_rest"] = binary(slice(None))
        per = {}
        for g in np.unique(ws.groups):
            sel = ws.groups == g
            sub = score_all(ws.labels[sel][:, [j]], {t: probs[t][sel]}, (t,), classes)
            if t in sub:
                per[str(g)] = {k: sub[t][k] for k in ("n_windows", "accuracy", "macro_f1")}
                if binary is not None:
                    per[str(g)]["stress_vs_rest_accuracy"] = binary(sel)["accuracy"]
        s["per_subject"] = per
    return out
