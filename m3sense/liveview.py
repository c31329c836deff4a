"""The live terminal view of ``demo`` and ``run``: per device, the current state per task."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from bus import Message


def _cell(result: dict[str, Any]) -> str:
    label = result.get("label")
    if label is None:
        return "—  (" + str(result.get("status", "no prediction")) + ")"
    conf = result.get("confidence")
    return f"{label} {conf:.0%}" if isinstance(conf, (int, float)) else str(label)


def render(state: dict[str, Message], tasks: list[str]) -> list[str]:
    """Rows of a table: device, window end (UTC), one column per task, quality."""
    head = ["device", "window end (UTC)", *tasks, "quality"]
    rows = [head]
    for device in sorted(state):
        msg = state[device]
        meta = msg.meta
        q = meta.get("quality", {}) if isinstance(meta.get("quality"), dict) else {}
        flags = [name for name in ("off_wrist", "motion") if q.get(name)]
        missing = q.get("missing_fraction")
        quality = ", ".join(flags) or "good"
        if isinstance(missing, (int, float)) and missing > 0:
            quality += f", {missing:.0%} missing"
        t_end = meta.get("t_end", msg.t0_s)
        results = meta.get("tasks", {}) if isinstance(meta.get("tasks"), dict) else {}
        rows.append(
            [
                device,
                time.strftime("%H:%M:%S", time.gmtime(t_end)),
                *(_cell(results.get(t, {})) if t in results else "" for t in tasks),
                quality,
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


class LiveView:
    """Redraws in place on a terminal (at most ``fps`` times a second); elsewhere prints
    the table every ``every_s`` seconds so logs stay short."""

    def __init__(self, tasks: list[str], out: TextIO = sys.stdout, fps: float = 4.0, every_s: float = 5.0) -> None:
        self.tasks = tasks
        self.out = out
        self.tty = out.isatty()
        self.state: dict[str, Message] = {}
        self.count = 0
        self._interval = 1.0 / fps if self.tty else every_s
        self._last = 0.0
        self._lines = 0

    def update(self, msg: Message) -> None:
        self.state[msg.device] = msg
        self.count += 1
        now = time.monotonic()
        if now - self._last >= self._interval:
            self._last = now
            self.draw()

    def draw(self) -> None:
        if not self.state:
            return
        lines = [f"affect windows so far: {self.count}", *render(self.state, self.tasks)]
        if self.tty and self._lines:
            self.out.write(f"\x1b[{self._lines}F\x1b[J")
        self.out.write("\n".join(lines) + "\n")
        self.out.flush()
        self._lines = len(lines) if self.tty else 0
