"""The one JSON object ``run --json`` and ``demo --json`` print on stdout: the facts of the text
summary (what reached the sink, what waits, what was lost, why the exit code is what it is) in
fields a script can read without parsing sentences. Field names are listed in the README
("Command line conventions")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from common.summary import summary

if TYPE_CHECKING:
    from m3sense.pipeline import PipelineResult

#: the store's counts that the run's report repeats at its top level (``store --json`` names them)
_STORE_COUNTS = ("written", "affect_records", "spooled", "spool_dir", "dropped", "refused", "lost_windows")


def run_report(result: PipelineResult, sink: str, devices: int, lines: Sequence[str]) -> dict[str, Any]:
    """What a finished (or stopped) run did; ``exit_code`` and ``reason`` come with :func:`finish`."""
    store = result.store
    counts: dict[str, Any] = {k: (store or {}).get(k) for k in _STORE_COUNTS}
    counts["lost_windows_by_device"] = (store or {}).get("lost_windows_by_device") or {}
    return {
        "devices": devices,
        "affect_windows": len(result.affect),
        "sink": (store or {}).get("sink") or sink,
        **counts,
        "restarts": dict(result.restarts),
        "stages": dict(result.exit_codes),
        "died": result.died,
        "failure": result.failure,
        "problems": problems(result),
        "store": store,
        "lines": list(lines),
    }


def problems(result: PipelineResult) -> list[str]:
    """Each reason the run is not a clean 0, in a few words (empty for a clean run)."""
    store = result.store
    out = []
    if result.failure:
        out.append(result.failure)
    if result.died:
        out.append(f"stage {result.died} died while {result.phase}")
    out += [
        f"stage {name} exited with code {code}"
        for name, code in sorted(result.exit_codes.items())
        if code != 0 and name != result.died and (name != "store" or store is None)
    ]
    out += [f"stage {name} was restarted {n} time(s)" for name, n in sorted(result.restarts.items())]
    if store is None:
        out.append("the store reported nothing: what reached the sink is unknown")
        return out
    lost = int(store.get("dropped") or 0) + int(store.get("refused") or 0)
    if lost:
        out.append(f"{lost} records lost")
    if store.get("spooled"):
        out.append(f"{store['spooled']} points wait in the spool {store.get('spool_dir')}")
    if store.get("lost_windows"):
        out.append(f"{store['lost_windows']} windows never reached the store")
    if store.get("exit_code") not in (0, None) and not out:
        out.append(f"the store exited with code {store['exit_code']}")
    return out


def finish(command: str, report: dict[str, Any] | None, code: int) -> dict[str, Any]:
    """``report`` under its command with the exit code the process ends with and why; a run
    stopped before it could report (a second Ctrl-C) says so instead of its counts."""
    body = report if report is not None else {"problems": ["stopped before the run could report"]}
    return summary(command, code, body, body.get("problems", []) if code else [])
