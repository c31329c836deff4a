"""The store node: bus in, sink out (the thin async shell around :class:`RecordBuilder`).

It subscribes to ``affect/``, ``status/`` and the raw streams it downsamples, hands the
records to the sink as they come (plus a ``bus_gap`` status record wherever sequence
numbers show that messages were lost on the way) and asks the sink to flush every ``flush_interval_s``
(the sink batches; flushing on a timer bounds how stale the store can be). Stopping
(``stop`` event, SIGINT/SIGTERM in the CLI) first drains what already reached the
socket, until ``drain_s`` passes without a message, then closes the open physiology
bins and flushes the sink, so a clean shutdown loses nothing. An end marker on
``affect/<device>/`` (meta ``{"event": "end"}``, sent by the inference node after a
device's last window) flushes the sink, is reported through ``on_device_end`` and is
answered on the bus with ``stored/<device>/`` (meta ``{"event": "end"}``): that is how
``m3sense run`` knows a device is completely stored, on ZeroMQ and NATS alike.

Losses before the store are counted in windows by a :class:`WindowLedger` (see
:mod:`storage.positions`) and stored as ``bus_gap`` status records with ``detail``
``{"topic": "affect/<device>/", "unit": "windows", "by": ...}`` and the count as value; the
ledger is saved after every flush, so a restarted store counts what it had not flushed.

On a NATS bus the store's durable consumer acknowledges a message only after the flush that put
its records in the sink (``acks="flushed"``): a store killed with ``-9`` gets what it had not
flushed again from the stream, and the sink's keys keep one row per record. (What a message
added to a physiology bin still open at the kill, at most one second of 1 Hz physiology, is not
rebuilt.)

With ``group`` (``store --workers-group NAME``, NATS only) the store is one worker of a group that
shares the devices partition by partition (:mod:`bus.shards`): a worker that dies or leaves hands
its partitions to the others, which take them from the last acknowledgement (what it had not
flushed comes again) and its window ledger from the group's bucket (:mod:`storage.group_ledger`),
so they count no window lost that the dead one stored. A partition given up takes its unflushed
messages, ledger positions and open physiology bins with it: the next owner redoes them, and the
sink's keys keep one row each.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from bus import AFFECT, RAW, STATUS, Message, Publisher, Subscriber, topic_for
from bus.partitions import partition_of
from bus.topics import STORED
from common.aio import OnReady
from storage.positions import LedgerFile, WindowLedger, has_lineage
from storage.records import RecordBuilder
from storage.sink import Sink

if TYPE_CHECKING:
    from bus.shards import ShardedSubscriber, ShardSpec
    from storage.group_ledger import PartitionLedgers

log = logging.getLogger(__name__)

RAW_MODALITIES = ("bvp", "eda", "temp", "hr")
PREFIXES = (f"{AFFECT}/", f"{STATUS}/", *(f"{RAW}/{m}/" for m in RAW_MODALITIES))
#: how long the store's last bus flush (of its ``stored/`` answers) may take: a store whose
#: hub is gone (``run`` died) must still exit promptly once its sink is flushed
ANNOUNCE_FLUSH_S = 2.0


def device_topics(device: str) -> list[str]:
    """The topics of one device that the store subscribes to (for readiness handshakes)."""
    return [topic_for(AFFECT, device), topic_for(STATUS, device), *(topic_for(RAW, device, m) for m in RAW_MODALITIES)]


class StoreNode:
    """``await node.run(stop)``; ``processed`` counts bus messages turned into records."""

    def __init__(
        self,
        bus: str,
        sink: Sink,
        *,
        flush_interval_s: float = 1.0,
        drain_s: float = 0.5,
        builder: RecordBuilder | None = None,
        on_device_end: Callable[[str], None] | None = None,
        ledger_file: LedgerFile | None = None,
        metrics=None,
        group: ShardSpec | None = None,
        on_owned: Callable[[set[int]], None] | None = None,
    ) -> None:
        self.bus = bus
        self.sink = sink
        self.flush_interval_s = flush_interval_s
        self.drain_s = drain_s
        self.builder = builder or RecordBuilder()
        self.processed = 0
        self.records = 0
        self.subscriber: Subscriber | None = None
        self._announcer: Publisher | None = None
        self._progress = asyncio.Event()
        self._gaps: dict[str, int] = {}  # sequence gaps per topic already recorded
        self.on_device_end = on_device_end
        self.ledger_file = ledger_file or LedgerFile(None)
        self.ledger: WindowLedger = self.ledger_file.load()
        self.metrics = metrics  # a bus.metrics.StageMetrics, or None
        #: handled messages whose records are not yet known to be in the sink: acknowledged (on a
        #: NATS durable consumer) only after the flush that commits them, so a store killed before
        #: it gets them again and its keys keep one row each
        self._unacked: list[Message] = []
        self.group, self.on_owned = group, on_owned
        self._ledgers: PartitionLedgers | None = None  # a worker group's ledger bucket
        self._moved: set[int] = set()  # partitions whose positions moved since they were last saved
        self._flushing = asyncio.Lock()

    @property
    def lost_windows(self) -> int:
        """Windows that never reached this store (counted from their lineage, stored as bus_gap)."""
        return sum(self.ledger.lost.values())

    def _taken(self) -> int:
        """Records the sink has taken off its buffer (stored, spooled or lost), to see it commit a batch."""
        c = self.sink.counters
        return c.written + c.spooled + c.dropped + c.rejected

    async def _flush(self) -> None:
        async with self._flushing:  # one at a time: a later snapshot must not be saved before an earlier one
            await self._flush_once()

    async def _flush_once(self) -> None:
        snapshot = self.ledger.to_json()  # what was handed to the sink before this flush
        by_partition = self._partition_snapshots()
        held, self._unacked = self._unacked, []  # their records were handed to the sink before it too
        await self.sink.flush()
        self.ledger_file.save(snapshot)
        if self._ledgers is not None:
            for p, text in by_partition.items():
                await self._ledgers.save(p, text)
        if self.subscriber is not None:
            for msg in held:
                self.subscriber.done(msg)

    def _partition_snapshots(self) -> dict[int, str]:
        """The positions of each owned partition that moved since its last save (a group worker)."""
        if self._ledgers is None:
            return {}
        moved, self._moved = self._moved, set()
        devices: dict[int, list[str]] = {}
        for d in self.ledger.devices():
            if (p := partition_of(d)) in moved:
                devices.setdefault(p, []).append(d)
        return {p: self.ledger.to_json(devices.get(p, ())) for p in moved if self._ledgers.loaded(p)}

    async def _adopt(self, p: int) -> None:
        """Before the first message of a partition this worker took: its last owner's positions."""
        assert self._ledgers is not None
        text = await self._ledgers.load(p)
        if p not in cast("ShardedSubscriber", self.subscriber).owned:  # given up while it was read
            self._ledgers.release(p)
            return
        if text:
            self.ledger.adopt(text)

    def _release(self, p: int) -> None:
        """Partition ``p`` is another worker's now: what this one holds of it is redone there."""
        devices = [d for d in self.ledger.devices() if partition_of(d) == p]
        self.ledger.forget(devices)
        self.builder.forget(lambda d: partition_of(d) == p)
        if self._ledgers is not None:
            self._ledgers.release(p)
        self._moved.discard(p)
        sub = cast("ShardedSubscriber", self.subscriber)  # only a group's worker gives partitions up
        keep = []
        for msg in self._unacked:
            if partition_of(msg.device) == p:
                sub.forget(msg)
            else:
                keep.append(msg)
        self._unacked = keep

    def malformed(self) -> Counter:
        """Messages dropped as malformed, by kind: by the bus decoder, then by the record builders."""
        bus = self.subscriber.stats.malformed if self.subscriber is not None else Counter()
        return bus + self.builder.rejected

    async def wait_processed(self, n: int, timeout_s: float) -> None:
        """Return once ``n`` messages have been processed (a handshake for tests and ``run``)."""

        async def _wait() -> None:
            while self.processed < n:
                self._progress.clear()
                await self._progress.wait()

        await asyncio.wait_for(_wait(), timeout_s)

    def _window_loss(self, msg: Message) -> list:
        if self._ledgers is not None:
            self._moved.add(partition_of(msg.device))
        end = msg.meta.get("event") == "end"
        t_start = msg.meta.get("t_start", msg.t0_s)
        loss = self.ledger.observe(msg.device, msg.meta, t_start if isinstance(t_start, float) else msg.t0_s, end=end)
        if loss is None:
            return []
        log.warning(
            "store: %d window(s) of %s never arrived before %.0f (counted by %s); stored as bus_gap",
            loss.windows,
            msg.device,
            loss.time_s,
            loss.by,
        )
        return [self.builder.bus_gap(msg, loss.windows, unit="windows", by=loss.by)]

    async def _handle(self, sub: Subscriber, msg: Message) -> None:
        if self._ledgers is not None and not self._ledgers.loaded(p := partition_of(msg.device)):
            await self._adopt(p)
        if msg.kind == AFFECT and msg.meta.get("event") == "end":
            # the inference node's end marker: everything of this device before it is in the sink
            if gap := self._window_loss(msg):
                await self.sink.write(gap)
                self.records += len(gap)
            await self._flush()
            if self.on_device_end is not None:
                self.on_device_end(msg.device)
            if self._announcer is not None:  # everything of this device before its end is in the sink
                await self._announcer.publish(
                    STORED, msg.device, STORED, t0_s=msg.t0_s, fs_hz=0.0, meta={"event": "end"}
                )
            self._unacked.append(msg)  # acknowledged at the next flush, after the announcement
            self.processed += 1
            self._progress.set()
            return
        records = self.builder.push(msg)
        lineage = msg.kind == AFFECT and has_lineage(msg.meta)
        if lineage:  # counted in windows, whichever stage lost them
            records += self._window_loss(msg)
        missed = sub.stats.gaps_by_topic[msg.topic] - self._gaps.get(msg.topic, 0)
        if missed and lineage:
            self._gaps[msg.topic] = sub.stats.gaps_by_topic[msg.topic]
        elif missed:
            self._gaps[msg.topic] = sub.stats.gaps_by_topic[msg.topic]
            records.append(self.builder.bus_gap(msg, missed))
        if records:
            taken = self._taken()
            await self.sink.write(records)
            self.records += len(records)
            if self._taken() != taken:  # the sink committed a full batch by itself, these records included
                self.ledger_file.save(self.ledger.to_json())
        self._unacked.append(msg)  # after its records were handed to the sink: the next flush covers them
        self.processed += 1
        self._progress.set()

    async def run(self, stop: asyncio.Event, on_ready: OnReady | None = None) -> None:
        """Store until ``stop`` is set, then drain and flush; ``on_ready(bus)`` once subscribed."""
        async with (
            self._subscriber() as sub,
            Publisher(self.bus, flush_timeout_s=ANNOUNCE_FLUSH_S) as announcer,
        ):
            self.subscriber, self._announcer = sub, announcer
            if self.group is not None:
                from storage.group_ledger import PartitionLedgers

                self._ledgers = await PartitionLedgers.open(sub._js, sub._nc, self.group.bucket)
            if on_ready is not None:
                on_ready(self.bus)
            if self.metrics is not None:
                from bus.metrics import bus_snapshot

                self.metrics.watch(
                    lambda: bus_snapshot(
                        sub.stats,
                        drops=dict(self.builder.rejected),
                        published=self.records,
                        queue_depth=self.sink.counters.pending,
                        lost_windows=dict(self.ledger.lost),
                    )
                )
            flusher = asyncio.create_task(self._flush_periodically())
            try:
                async for msg in sub.until(stop):
                    started = time.perf_counter()
                    await self._handle(sub, msg)
                    if self.metrics is not None:
                        self.metrics.observe(time.perf_counter() - started)
                while True:  # drain what is already on its way
                    try:
                        msg = await sub.recv(self.drain_s)
                    except TimeoutError:
                        break
                    await self._handle(sub, msg)
            finally:
                flusher.cancel()
                tail = self.builder.flush()
                if tail:
                    await self.sink.write(tail)
                    self.records += len(tail)
                await self._flush()
                log.info(
                    "store: %d messages, %d records, bus %s, sink %s, rejected %s",
                    self.processed,
                    self.records,
                    sub.stats.as_dict(),
                    self.sink.counters.as_dict(),
                    dict(self.builder.rejected),
                )

    def _subscriber(self) -> Any:
        if self.group is None:
            return Subscriber(self.bus, PREFIXES, acks="flushed")
        from bus.shards import ShardedSubscriber

        return ShardedSubscriber(
            self.bus, PREFIXES, spec=self.group, acks="flushed", on_owned=self.on_owned, on_release=self._release
        )

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval_s)
            await self._flush()
