"""What a store with several ``--sink`` says per sink (pure; beside :mod:`storage.report`).

:class:`storage.report.StoreOutcome` describes the first sink, as it did when there was
only one (``m3sense run`` reads those keys). This adds what became of the records in every
sink, so that a loss in the second sink (an MQTT broker away at exit, say) shows in the JSON
(``sinks``: one object per sink, when there are several), in the last line and in the exit code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from storage.sink import SinkCounters


@dataclass(frozen=True, slots=True, kw_only=True)
class SinkReport:
    sink: str  # its address, without secrets
    written: int
    affect_records: int
    pending: int  # in its spool (InfluxDB) or buffer at exit
    dropped: int
    refused: int
    error: str | None

    @classmethod
    def of(cls, address: str, c: SinkCounters, error: str | None) -> SinkReport:
        return cls(
            sink=address,
            written=c.written,
            affect_records=c.affect_written,
            pending=c.pending,
            dropped=c.dropped,
            refused=c.rejected,
            error=error,
        )

    @property
    def complete(self) -> bool:
        return not (self.pending or self.dropped or self.refused)

    def as_json(self) -> dict[str, Any]:
        return {
            "sink": self.sink,
            "written": self.written,
            "affect_records": self.affect_records,
            "spooled": self.pending,
            "dropped": self.dropped,
            "refused": self.refused,
            "error": self.error,
        }

    def summary(self) -> str:
        lost = self.dropped + self.refused
        text = f"{self.sink}: {self.written} records ({self.affect_records} affect) written"
        text += f", {self.pending} wait" if self.pending else ""
        text += f", {lost} lost ({self.refused} refused, {self.dropped} dropped)" if lost else ", none lost"
        return text + (f" (last error: {self.error})" if self.error and not self.complete else "")


def combine(
    outcome_json: Mapping[str, Any],
    summary: str,
    exit_code: int,
    sinks: Sequence[SinkReport],
    alerts: Mapping[str, int] | None,
) -> tuple[dict[str, Any], str, int]:
    """The store's JSON, last line and exit code with every sink counted: 1 when any sink
    holds back or lost records (2 and 130 keep their meaning)."""
    code = exit_code
    if code == 0 and not all(s.complete for s in sinks):
        code = 1
    out = {**outcome_json, "exit_code": code}
    if len(sinks) > 1:  # one sink: the JSON of old, unchanged
        out["sinks"] = [s.as_json() for s in sinks]
    if alerts is not None:
        out["alerts"] = dict(alerts)
    if len(sinks) > 1:
        summary += "; per sink: " + "; ".join(s.summary() for s in sinks)
    if alerts is not None:
        summary += f"; alerts: {alerts['raised']} raised, {alerts['cleared']} cleared"
    return out, summary, code
