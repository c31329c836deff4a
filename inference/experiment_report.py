"""What ``m3sense experiment`` writes: a Markdown table, a CSV (one line per row and task, and one
per seed) and a PNG bar plot, from the summary of :mod:`inference.experiments`."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

SUMMARY_FIELDS = (
    "row",
    "label",
    "family",
    "task",
    "seeds",
    "windows",
    "folds_scored",
    "accuracy_mean",
    "accuracy_sd",
    "macro_f1_mean",
    "macro_f1_sd",
    "balanced_accuracy_mean",
    "balanced_accuracy_sd",
    "stress_vs_rest_mean",
    "stress_vs_rest_sd",
    "paper_accuracy",
)
SEED_FIELDS = (
    "row",
    "task",
    "seed",
    "windows",
    "folds_scored",
    "accuracy",
    "macro_f1",
    "balanced_accuracy",
    "stress_vs_rest",
)


def _pct(mean: float | None, sd: float | None) -> str:
    return "—" if mean is None else f"{100 * mean:.1f} ± {100 * (sd or 0):.1f}"


def markdown(name: str, summary: Sequence[Mapping], meta: Mapping) -> str:
    """One line per row: per task the accuracy (mean ± SD over seeds, %) and macro-F1, with
    the paper's accuracy beside it where the paper gives one."""
    tasks = list(dict.fromkeys(c["task"] for c in summary))
    stress = any(c["stress_vs_rest_mean"] is not None for c in summary)
    head = ["model", "family"]
    for t in tasks:
        head += [f"{t}: accuracy %", f"{t}: macro-F1", f"{t}: paper %"]
    if stress:
        head.append("stress vs rest %")
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    by_row: dict[str, dict] = {}
    for c in summary:
        by_row.setdefault(c["row"], {})[c["task"]] = c
    for cells in by_row.values():
        first = next(iter(cells.values()))
        line = [first["label"], first["family"]]
        for t in tasks:
            if (cell := cells.get(t)) is None:
                line += ["", "", ""]
                continue
            f1 = "—" if cell["macro_f1_mean"] is None else f"{cell['macro_f1_mean']:.3f}"
            paper = "" if cell["paper_accuracy"] is None else f"{cell['paper_accuracy']:.1f}"
            line += [_pct(cell["accuracy_mean"], cell["accuracy_sd"]), f1, paper]
        if stress:
            s = cells.get("stress")
            line.append(_pct(s["stress_vs_rest_mean"], s["stress_vs_rest_sd"]) if s else "")
        lines.append("| " + " | ".join(line) + " |")
    split = (
        f"leave-subjects-out, {meta['folds']} folds (held-out predictions pooled)"
        if meta["split"] == "subjects"
        else "the paper's stratified window split (35/55/10 %)"
    )
    return (
        f"# {name}\n\n{len(meta['seeds'])} seed(s) {', '.join(map(str, meta['seeds']))} (mean ± SD over seeds); "
        f"{split}; {meta['windows']} labelled windows from {meta['recordings']} recordings; "
        f"{meta['epochs']} epochs; calibration {meta['calibration']}.\n\n"
        + "\n".join(lines)
        + f"\n\ncommand: `{meta['command']}`\n"
    )


def write_csv(path: Path, rows: Sequence[Mapping], fields: Sequence[str]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if r.get(k) is None else r[k] for k in fields})


def plot(path: Path, name: str, summary: Sequence[Mapping]) -> None:
    """Grouped bars: accuracy per row, one bar per task, SD over seeds as error bars, the
    paper's figure as a black tick where it has one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(dict.fromkeys(c["row"] for c in summary))
    labels = {c["row"]: c["label"] for c in summary}
    tasks = list(dict.fromkeys(c["task"] for c in summary))
    width = 0.8 / len(tasks)
    fig, ax = plt.subplots(figsize=(min(14.0, max(6.0, 0.45 * len(rows) * len(tasks) + 2)), 5.0))
    for k, t in enumerate(tasks):
        cells = {c["row"]: c for c in summary if c["task"] == t}
        xs = [i + (k - (len(tasks) - 1) / 2) * width for i in range(len(rows))]
        mean = [100 * (cells[r]["accuracy_mean"] or 0) if r in cells else 0 for r in rows]
        sd = [100 * (cells[r]["accuracy_sd"] or 0) if r in cells else 0 for r in rows]
        ax.bar(xs, mean, width, yerr=sd, capsize=2, label=t)
        paper = [
            (x, cells[r]["paper_accuracy"])
            for x, r in zip(xs, rows)
            if r in cells and cells[r]["paper_accuracy"] is not None
        ]
        if paper:
            paper_x, paper_y = zip(*paper)
            ax.scatter(paper_x, paper_y, marker="_", s=200, color="black", zorder=3, label="paper" if k == 0 else None)
    ax.set_xticks(range(len(rows)), [labels[r] for r in rows], rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(name)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_all(
    out: Path, name: str, summary: Sequence[Mapping], records: Sequence[Mapping], meta: Mapping
) -> list[Path]:
    """NAME.md, NAME.csv, NAME-seeds.csv, NAME.json and NAME.png under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.{ext}" for ext in ("md", "csv")] + [
        out / f"{name}-seeds.csv",
        out / f"{name}.json",
        out / f"{name}.png",
    ]
    paths[0].write_text(markdown(name, summary, meta))
    write_csv(paths[1], summary, SUMMARY_FIELDS)
    write_csv(paths[2], records, SEED_FIELDS)
    paths[3].write_text(json.dumps({"meta": meta, "summary": list(summary), "seeds": list(records)}, indent=2) + "\n")
    plot(paths[4], name, summary)
    return paths
