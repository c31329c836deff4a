"""Reliability diagram of a model's held-out confidences, from ``m3sense train --json`` output.

.venv/bin/m3sense train --model ens --data ../shared/data/wesad-e4 --tasks stress --folds 10 --json > s.json
.venv/bin/python bench/reliability.py s.json --task stress --out reliability.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scores", type=Path)
    ap.add_argument("--task", default="stress")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    s = json.loads(args.scores.read_text())[args.task]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = s["reliability"]
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect")
    ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", label="held-out people")
    for b in bins:
        ax.annotate(
            str(b["n"]), (b["confidence"], b["accuracy"]), textcoords="offset points", xytext=(4, -10), fontsize=7
        )
    ax.set(
        xlabel="confidence",
        ylabel="accuracy",
        xlim=(0, 1),
        ylim=(0, 1),
        title=f"{args.task}: ECE {s['ece']:.3f} (before scaling {s['ece_before_scaling']:.3f})",
    )
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
