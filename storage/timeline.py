"""``m3sense timeline``: the stored affect timeline as JSON lines or a PNG."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from m3sense.errors import UserError
from storage.records import TASKS, AffectRecord

_AGO = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_since(text: str, now_s: float) -> float:
    """``--since``: Unix seconds (``1495437325``), a duration back from now (``90s``,
    ``30m``, ``2h``, ``1d``) or an ISO 8601 time (UTC unless it names a zone)."""
    m = _AGO.match(text)
    if m:
        return now_s - float(m.group(1)) * _UNIT_S[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise UserError(f"--since {text!r}: expected Unix seconds, a duration like 2h, or an ISO 8601 time") from None
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()


def as_json(r: AffectRecord) -> dict[str, Any]:
    """One output line: the window's end as ``time`` (Unix s) and ``time_iso``."""
    return {
        "time": r.time_s,
        "time_iso": datetime.fromtimestamp(r.time_s, timezone.utc).isoformat(timespec="milliseconds"),
        "device": r.device,
        "task": r.task,
        "label": r.label,
        "confidence": r.confidence,
        "quality": {"status": r.status, "off_wrist": r.off_wrist, "motion": r.motion,
                    "missing_fraction": r.missing_fraction},
        "probs": dict(r.probs),
        "true_label": r.true_label,
        "source": r.source,
        "model": r.model,
        "t_start": r.t_start_s,
    }


def json_lines(records: Sequence[AffectRecord]) -> str:
    return "".join(json.dumps(as_json(r), separators=(",", ":")) + "\n" for r in records)


def plot(records: Sequence[AffectRecord], out: Path) -> None:
    """One panel per task: predicted label (dots, per device) and ground truth (grey steps)
    over time; a low-quality window shows as an ``x`` on a "no answer" row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in TASKS if any(r.task == t for r in records)]
    if not tasks:
        raise UserError("nothing to plot: no affect records match")
    t0 = min(r.time_s for r in records)
    fig, axes = plt.subplots(len(tasks), 1, figsize=(11, 2.2 * len(tasks) + 0.6), sharex=True, squeeze=False)
    for ax, task in zip(axes[:, 0], tasks):
        rows = [r for r in records if r.task == task]
        classes = sorted({c for r in rows for c, _ in r.probs} | {r.label for r in rows if r.label}
                         | {r.true_label for r in rows if r.true_label})
        level = {c: i for i, c in enumerate(classes)}
        none_level = -1
        truth = [(r.time_s - t0, level[r.true_label]) for r in rows if r.true_label is not None]
        if truth:
            xs, ys = zip(*sorted(truth))
            ax.step(xs, ys, where="post", color="0.6", lw=6, alpha=0.5, label="ground truth")
        for device in sorted({r.device for r in rows}):
            mine = [r for r in rows if r.device == device]
            ok = [(r.time_s - t0, level[r.label]) for r in mine if r.label is not None]
            if ok:
                ax.plot(*zip(*ok), "o", ms=3, label=f"predicted ({device})")
            bad = [r.time_s - t0 for r in mine if r.label is None]
            if bad:
                ax.plot(bad, [none_level] * len(bad), "x", ms=4, color="tab:red", label=f"no answer ({device})")
        ax.set_yticks([none_level, *level.values()], ["(none)", *classes])
        ax.set_ylim(none_level - 0.5, len(classes) - 0.5)
        ax.set_title(task, loc="left", fontsize=10)
        ax.legend(loc="upper right", fontsize=7)
    start = datetime.fromtimestamp(t0, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    axes[-1, 0].set_xlabel(f"seconds since {start} (window end)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
