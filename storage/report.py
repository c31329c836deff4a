"""What ``m3sense store`` says when it ends: its exit code, its last line and its JSON.

Pure: the CLI gathers the counts, this decides what they mean, so that a store never says
"stored" about points that are not in the sink. Exit codes: 0 when everything received
reached the sink; 1 when something was dropped, refused or still waits in the spool (or
the store failed); 2 for bad input; 130 after Ctrl-C, whatever was stored by then.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreOutcome:
    sink: str | None = None  # the SINK address without secrets (None: it did not parse)
    influx: bool = False
    messages: int = 0  # bus messages taken in
    received: int = 0  # records made from them
    written: int = 0  # points (rows) the sink acknowledged
    spooled: int = 0  # points waiting in the spool at exit
    spool_dir: Path | None = None
    dropped: int = 0  # lost: queue and spool both full
    refused: int = 0  # lost: the server refused them as invalid
    affect_records: int = 0  # the affect part of ``written``
    interrupted: bool = False  # Ctrl-C (SIGINT)
    bad_input: str | None = None  # a UserError before anything ran
    failure: str | None = None  # what ended the store before it finished
    error: str | None = None  # why the sink's latest write failed
    malformed: Mapping[str, int] = field(default_factory=dict)  # messages dropped as malformed, by kind
    lost_windows: Mapping[str, int] = field(
        default_factory=dict
    )  # windows that never arrived, by device (bus_gap rows)

    @property
    def exit_code(self) -> int:
        if self.bad_input is not None:
            return 2
        if self.interrupted:
            return 130
        return 1 if self.failure or self.spooled or self.dropped or self.refused or self.lost_windows else 0

    def as_json(self) -> dict:
        """The one object ``store --json`` prints (``m3sense run`` reads these keys)."""
        return {
            "sink": self.sink,
            "written": self.written,
            "spooled": self.spooled,
            "spool_dir": None if self.spool_dir is None else str(self.spool_dir),
            "dropped": self.dropped,
            "refused": self.refused,
            "affect_records": self.affect_records,
            "exit_code": self.exit_code,
            "received": self.received,
            "error": self.bad_input or self.failure or self.error,
            "lost_windows": sum(self.lost_windows.values()),
            "lost_windows_by_device": dict(self.lost_windows),
        }

    def summary(self) -> str:
        """The last line on stderr: what reached the sink, what waits where, what was lost."""
        unit = "points" if self.influx else "records"
        parts = [f"{self.messages} messages, {self.received} records received"]
        if self.written:
            parts.append(f"{self.written} {unit} ({self.affect_records} affect) written to {self.sink}")
        else:
            parts.append(f"nothing reached {'InfluxDB' if self.influx else 'the sink'} ({self.sink})")
        if self.spooled:
            parts.append(
                f"{self.spooled} points wait in spool {self.spool_dir}; the next `m3sense store` with this "
                f"spool (the same --sink, or --spool-dir {self.spool_dir}) sends them first"
            )
        elif self.influx:
            parts.append("none wait in the spool")
        lost = self.dropped + self.refused
        parts.append(
            f"{lost} lost ({self.refused} refused by the server, {self.dropped} dropped: spool full)"
            if lost
            else "none lost"
        )
        if self.lost_windows:
            each = ", ".join(f"{d} {n}" for d, n in sorted(self.lost_windows.items()))
            parts.append(f"{sum(self.lost_windows.values())} windows never arrived ({each}), stored as bus_gap")
        if self.malformed:
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.malformed.items()))
            parts.append(f"{sum(self.malformed.values())} malformed messages dropped ({kinds})")
        if self.error and (self.spooled or lost):
            parts.append(f"last error: {self.error}")
        head = "failed" if self.failure else "interrupted" if self.interrupted else None
        return f"store: {head}; " + "; ".join(parts) if head else "store: " + "; ".join(parts)
