"""``m3sense timeline``: the stored affect timeline as JSON lines or a PNG."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.errors import UserError
from storage.records import CLASSES, TASKS, AffectRecord

_AGO = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float | None:
    """``90s``, ``30m``, ``2h``, ``1d`` in seconds; None if ``text`` is not such a duration."""
    m = _AGO.match(text)
    return float(m.group(1)) * _UNIT_S[m.group(2)] if m else None


def parse_since(text: str, now_s: float) -> float:
    """``--since``: Unix seconds (``1495437325``), a duration back from now (``90s``,
    ``30m``, ``2h``, ``1d``) or an ISO 8601 time (UTC unless it names a zone)."""
    ago = parse_duration(text)
    if ago is not None:
        return now_s - ago
    try:
        return float(text)
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise UserError(f"--since {text!r}: expected Unix seconds, a duration like 2h, or an ISO 8601 time") from None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


def as_json(r: AffectRecord) -> dict[str, Any]:
    """One output line: the window's end as ``time`` (Unix s) and ``time_iso``."""
    return {
        "time": r.time_s,
        "time_iso": datetime.fromtimestamp(r.time_s, UTC).isoformat(timespec="milliseconds"),
        "device": r.device,
        "task": r.task,
        "label": r.label,
        "confidence": r.confidence,
        "quality": {
            "status": r.status,
            "off_wrist": r.off_wrist,
            "motion": r.motion,
            "missing_fraction": r.missing_fraction,
        },
        "probs": dict(r.probs),
        "true_label": r.true_label,
        "source": r.source,
        "model": r.model,
        "calibration": r.calibration,
        "t_start": r.t_start_s,
    }


def json_lines(records: Sequence[AffectRecord]) -> str:
    return "".join(json.dumps(as_json(r), separators=(",", ":")) + "\n" for r in records)


def plot_timeline(records: Sequence[AffectRecord], out: Path) -> None:
    """One panel per task, time (UTC) across: each device's predicted label as dots (devices
    side by side within a class row) over its ground truth as a grey band where a replay
    carried one; a low-quality window shows as a red ``x`` on the "(none)" row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    tasks = [t for t in TASKS if any(r.task == t for r in records)]
    if not tasks:
        raise UserError("nothing to plot: no affect records match")
    devices = sorted({r.device for r in records})
    offset = {d: 0.25 * (i - (len(devices) - 1) / 2) / max(1, len(devices) - 1) for i, d in enumerate(devices)}

    def when(t: float) -> datetime:
        return datetime.fromtimestamp(t, UTC)

    fig, axes = plt.subplots(len(tasks), 1, figsize=(12, 2.3 * len(tasks) + 0.6), sharex=True, squeeze=False)
    for ax, task in zip(axes[:, 0], tasks):
        rows = [r for r in records if r.task == task]
        seen = (
            {c for r in rows for c, _ in r.probs}
            | {r.label for r in rows if r.label}
            | {r.true_label for r in rows if r.true_label}
        )
        classes = [c for c in CLASSES.get(task, ()) if c in seen] + sorted(seen - set(CLASSES.get(task, ())))
        level = {c: i for i, c in enumerate(classes)}
        for n, device in enumerate(devices):
            mine = sorted((r for r in rows if r.device == device), key=lambda r: r.time_s)
            colour = f"C{n}"
            truth = [(when(r.time_s), level[r.true_label] + offset[device]) for r in mine if r.true_label]
            if truth:
                ax.step(
                    *zip(*truth),
                    where="pre",
                    color=colour,
                    lw=7,
                    alpha=0.18,
                    label=f"{device} true" if len(devices) > 1 else "true",
                )
            ok = [(when(r.time_s), level[r.label] + offset[device]) for r in mine if r.label is not None]
            if ok:
                ax.plot(
                    *zip(*ok),
                    "o",
                    ms=3.5,
                    color=colour,
                    label=f"{device} predicted" if len(devices) > 1 else "predicted",
                )
            bad = [when(r.time_s) for r in mine if r.label is None]
            if bad:
                ax.plot(bad, [-1 + offset[device]] * len(bad), "x", ms=4, color="tab:red")
        ax.set_yticks([-1, *level.values()], ["(none)", *classes])
        ax.set_ylim(-1.5, len(classes) - 0.5)
        ax.set_title(task, loc="left", fontsize=10)
        ax.grid(axis="y", color="0.9")
        ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=7, frameon=False)
    axes[-1, 0].xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S", tz=UTC))
    axes[-1, 0].set_xlabel(f"window end, UTC, {when(min(r.time_s for r in records)):%Y-%m-%d}")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
