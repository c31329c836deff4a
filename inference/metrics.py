"""Scores per task: top-1 accuracy, macro-F1 and the confusion matrix, over labelled windows only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts, rows = truth, columns = prediction."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def macro_f1(cm: np.ndarray) -> float:
    """Mean F1 over the classes that occur in the truth or the predictions (a class absent
    from both says nothing about the model and is not averaged in as 0 or 1)."""
    tp = np.diag(cm).astype(float)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    seen = (support + predicted) > 0
    if not seen.any():
        return float("nan")
    f1 = 2 * tp[seen] / (support[seen] + predicted[seen])
    return float(f1.mean())


def task_scores(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]) -> dict:
    """Scores of one task; ``y_true`` -1 entries (no label) are skipped.

    Two chance references come along, because affect labels are imbalanced (about 70 % of
    emotion windows are "low"): ``majority_accuracy``, what always answering the commonest
    true class scores, and ``balanced_accuracy``, the mean recall over the classes present,
    which is 1/classes for any constant or random answer."""
    keep = y_true >= 0
    cm = confusion(y_true[keep], y_pred[keep], len(classes))
    n = int(keep.sum())
    support = cm.sum(axis=1)
    present = support > 0
    return {
        "n_windows": n,
        "accuracy": float(np.trace(cm) / n) if n else float("nan"),
        "macro_f1": macro_f1(cm) if n else float("nan"),
        "balanced_accuracy": float((np.diag(cm)[present] / support[present]).mean()) if n else float("nan"),
        "majority_accuracy": float(support.max() / n) if n else float("nan"),
        "classes": list(classes),
        "confusion": cm.tolist(),
    }


def score_all(
    labels: np.ndarray, probs: Mapping[str, np.ndarray], tasks: Sequence[str], classes: Mapping[str, Sequence[str]]
) -> dict[str, dict]:
    """Per task in ``probs`` that has at least one labelled window: :func:`task_scores`."""
    out = {}
    for j, t in enumerate(tasks):
        if t in probs and (labels[:, j] >= 0).any():
            out[t] = task_scores(labels[:, j], probs[t].argmax(axis=1), classes[t])
    return out


def collapse(y: np.ndarray, positive: int) -> np.ndarray:
    """A multi-class label vector as one-vs-rest (1 = ``positive``), keeping -1 as no label."""
    return np.where(y < 0, -1, (y == positive).astype(np.int64))


def markdown_table(scores: Mapping[str, dict]) -> str:
    rows = [
        "| task | windows | accuracy | macro-F1 | balanced accuracy | always the commonest class |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for t, s in scores.items():
        rows.append(
            f"| {t} | {s['n_windows']} | {100 * s['accuracy']:.1f} % | {s['macro_f1']:.3f} | "
            f"{100 * s['balanced_accuracy']:.1f} % | {100 * s['majority_accuracy']:.1f} % |"
        )
    out = ["\n".join(rows)]
    for t, s in scores.items():
        head = "| truth \\ predicted | " + " | ".join(s["classes"]) + " |"
        sep = "|---|" + "---:|" * len(s["classes"])
        body = [f"| {c} | " + " | ".join(str(v) for v in row) + " |" for c, row in zip(s["classes"], s["confusion"])]
        out.append(f"{t}:\n\n" + "\n".join([head, sep, *body]))
    return "\n\n".join(out)
