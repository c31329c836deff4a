"""The Sink port: where records go. SQLite and InfluxDB implement it.

A sink is an async context manager with ``write(records)`` (cheap: it buffers),
``flush()`` (returns once what was written before is stored, or safely spooled when the
server is down) and ``close()``. Its :class:`SinkCounters` say what became of every
record, so loss is never silent; :meth:`SinkCounters.wait_for` lets a caller await a
condition on them (tests use it as a handshake instead of sleeping).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Protocol

from storage.records import Record


@dataclass(slots=True, kw_only=True)
class SinkCounters:
    """Records by fate (each record is one InfluxDB point or one SQLite row).

    ``written``: stored and acknowledged. ``spooled``: put on the disk spool because the
    server was unreachable (cumulative; ``replayed`` counts those later written from it).
    ``dropped``: lost because the queue and the spool were both full. ``rejected``: refused
    by the server as invalid (HTTP 400), which retrying cannot fix. ``failures``: failed
    write attempts. ``pending``: in memory or on the spool right now. ``affect_written``:
    the part of ``written`` that is affect records (one per window and task).
    """

    written: int = 0
    affect_written: int = 0
    spooled: int = 0
    replayed: int = 0
    dropped: int = 0
    rejected: int = 0
    failures: int = 0
    pending: int = 0
    _changed: asyncio.Event | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}

    def changed(self) -> None:
        """Wake the waiters of :meth:`wait_for`; call after updating counters."""
        if self._changed is not None:
            self._changed.set()

    async def wait_for(self, predicate: Callable[[SinkCounters], bool], timeout_s: float | None) -> None:
        """Return once ``predicate(self)`` holds; raise TimeoutError after ``timeout_s`` (None: never)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        while not predicate(self):
            if self._changed is None or self._changed.is_set():
                self._changed = asyncio.Event()
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            await asyncio.wait_for(self._changed.wait(), remaining)


class Sink(Protocol):
    # read-only to users of a sink: a plain attribute or a property (the fan-out sums its sinks') both serve
    @property
    def counters(self) -> SinkCounters: ...

    @property
    def last_error(self) -> str | None: ...  # why the latest write failed, if it did (for the user's summary)

    async def __aenter__(self) -> Sink: ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def write(self, records: Sequence[Record]) -> None: ...

    async def flush(self) -> None: ...

    async def close(self) -> None: ...
