"""One store, several sinks: the :class:`Sink` port in front of a list of sinks.

Why a sink and not a change to the store node: the node already speaks the port (write,
flush, counters), so writing to SQLite and MQTT at once, and adding the alert events made
from the affect records, needs nothing of it. Every sink gets every record, in the same
order; each keeps its own counters (the store reports them per sink), and ``counters``
here is their sum, for logs. The alert engine, when there is one, sees each batch first,
and its events go out with that batch, so every sink stores or publishes them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import fields

from storage.alerts import AlertEngine
from storage.records import AffectRecord, Record
from storage.sink import Sink, SinkCounters


class FanoutSink:
    def __init__(self, sinks: Sequence[Sink], *, alerts: AlertEngine | None = None) -> None:
        if not sinks:
            raise ValueError("no sinks")
        self.sinks = list(sinks)
        self.alerts = alerts
        self._stack: AsyncExitStack | None = None

    def __repr__(self) -> str:
        return f"FanoutSink({', '.join(map(repr, self.sinks))})"

    @property
    def counters(self) -> SinkCounters:
        total = SinkCounters()
        for f in fields(SinkCounters):
            if not f.name.startswith("_"):
                setattr(total, f.name, sum(getattr(s.counters, f.name) for s in self.sinks))
        return total

    @property
    def last_error(self) -> str | None:
        return next((s.last_error for s in self.sinks if s.last_error), None)

    async def __aenter__(self) -> FanoutSink:
        async with AsyncExitStack() as stack:
            for s in self.sinks:
                await stack.enter_async_context(s)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def write(self, records: Sequence[Record]) -> None:
        if self.alerts is not None and any(isinstance(r, AffectRecord) for r in records):
            events = self.alerts.push(records)
            if events:
                records = [*records, *events]
        for s in self.sinks:
            await s.write(records)

    async def flush(self) -> None:
        await asyncio.gather(*(s.flush() for s in self.sinks))

    async def close(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
