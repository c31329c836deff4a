"""Live E4s over BLE: scan, connect, stream to the bus, reconnect (the asyncio shell).

Theory of operation. One supervisor per wristband loops: find the device by address,
connect, enable notifications, write the start command, then wait for whichever comes
first of an unsolicited disconnect, the data watchdog, or shutdown; then disconnect
(always, so nothing leaks), and try again after an exponential backoff with jitter, so a
room of wristbands that lost the adapter together does not reconnect in lockstep.

The watchdog exists because BlueZ can keep reporting a link as connected while no
notification arrives and no disconnect callback fires (bleak-retry-connector#228); the
E4 streams continuously, so ``watchdog_s`` without a BVP or ACC packet forces a reconnect.

Notification callbacks only stamp the arrival on the host clock and queue the bytes; one
consumer task per device runs the pure :class:`~ingest.device.DeviceIngest` and
publishes. With ``LinkConfig.packet_s`` a :class:`~ingest.coalesce.Coalescer` between the two
gathers each signal into messages of about that many seconds (fewer bus messages per wristband);
it is flushed before every status event, when a link drops, on reconnect and at stop, so nothing
is held back across a break and no status overtakes the samples before it.

The ``backend`` mapping passes straight through to ``BleakScanner`` and ``BleakClient``: empty
for the platform's radio, or the virtual E4's backends.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bleak import BleakClient, BleakScanner
from bleak.exc import BleakError

from bus import Publisher
from bus.message import MAX_TIME_S
from ingest import codec
from ingest.clocks import SystemClock
from ingest.coalesce import Coalescer
from ingest.device import DeviceIngest, Emit, IngestStats, status

log = logging.getLogger(__name__)

WATCHED = frozenset({"bvp", "acc"})
DRAIN_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkConfig:
    """How a link behaves. Its own timers (scan, connect, watchdog, backoff) run on the
    event loop's real clock, whatever clock stamps the samples."""

    layout: codec.Layout = codec.DEFAULT_LAYOUT
    scan_timeout_s: float = 10.0
    connect_timeout_s: float = 20.0
    watchdog_s: float = 5.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    derive_heart: bool = True
    #: put the wristband's address and advertised name (which may hold its serial) in its status
    #: events; off by default, so nothing downstream of ingest learns them (see ingest.pseudonym)
    store_address: bool = False
    #: publish about this many seconds of each periodic signal per message (None: one message per
    #: packet, as the wristband sends them); see ingest.coalesce
    packet_s: float | None = None


def backoff_s(attempt: int, config: LinkConfig, rng: random.Random) -> float:
    """Wait before reconnect attempt ``attempt`` (0 after a link that worked): exponential,
    capped, and jittered over [0.5, 1] of it so wristbands that dropped together spread out."""
    return min(config.backoff_max_s, config.backoff_initial_s * 2.0 ** min(attempt, 62)) * rng.uniform(0.5, 1.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class BleBackend:
    """Extra keyword arguments for ``BleakScanner`` and ``BleakClient``: empty for the
    platform's radio; a custom backend (``backend=...`` and its own options) otherwise."""

    scanner: Mapping[str, Any] = field(default_factory=dict)
    client: Mapping[str, Any] = field(default_factory=dict)


PLATFORM = BleBackend()


@dataclass(frozen=True, slots=True, kw_only=True)
class Wristband:
    address: str
    device: str  # the bus device id: a pseudonym (ingest.pseudonym) unless the user named it


def device_id(address: str) -> str:
    """The address's hex digits, lower case (``e40000000001``): not pseudonymous, so only for
    tests and benchmarks; ``ble stream`` names wristbands with :func:`ingest.pseudonym.pseudonym`."""
    return "".join(ch for ch in address.lower() if ch.isalnum())


@dataclass(slots=True)
class LinkStats:
    connects: int = 0
    connect_failures: int = 0
    disconnects: int = 0
    watchdog_trips: int = 0
    ingest: IngestStats = field(default_factory=IngestStats)
    #: raw messages published, per modality (with packet_s fewer than the packets decoded)
    messages: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "connects": self.connects,
            "connect_failures": self.connect_failures,
            "disconnects": self.disconnects,
            "watchdog_trips": self.watchdog_trips,
            **self.ingest.as_dict(),
            "messages": dict(self.messages),
        }


class RawLog:
    """Every notification with its arrival time, one JSON object a line (replayable)."""

    def __init__(self, path: Path) -> None:
        # owner-only, like every file of physiology m3sense writes (the notifications are raw signals)
        self._fh: IO[str] = os.fdopen(
            os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "a", encoding="utf-8"
        )

    def write(self, device: str, char: str, data: bytes, arrival_s: float) -> None:
        self._fh.write(json.dumps({"t": arrival_s, "device": device, "char": char, "data": data.hex()}) + "\n")

    def close(self) -> None:
        self._fh.close()


@dataclass(frozen=True, slots=True, kw_only=True)
class RawRecord:
    t_s: float
    device: str
    char: str
    data: bytes


def read_raw_log(path: Path) -> Iterator[RawRecord]:
    """The notifications of a raw log; a damaged line is skipped with a warning (an arrival time
    that is not a Unix time the bus can carry is damage too: found by fuzzing, an infinite one
    became an infinite timestamp)."""
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            try:
                obj = json.loads(line)
                t_s = float(obj["t"])
                if not 0 <= t_s < MAX_TIME_S:
                    raise ValueError(f"arrival time {t_s} is not a Unix time")
                yield RawRecord(
                    t_s=t_s, device=str(obj["device"]), char=str(obj["char"]), data=bytes.fromhex(obj["data"])
                )
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("%s:%d: not a raw-log record (%s)", path, lineno, exc)


def replay_raw_log(path: Path, layout: codec.Layout = codec.DEFAULT_LAYOUT) -> Iterator[tuple[str, Emit]]:
    """Run a raw log through the decoders as the live path would: (device, message) pairs.

    A record whose char is "link" marks a reconnect (the shell writes one per connection).
    """
    ingests: dict[str, DeviceIngest] = {}
    for rec in read_raw_log(path):
        ing = ingests.setdefault(rec.device, DeviceIngest(layout=layout))
        if rec.char == "link":
            ing.relink()
            continue
        for emit in ing.packet(rec.char, rec.data, rec.t_s):
            yield rec.device, emit


async def scan(timeout_s: float, backend: BleBackend = PLATFORM) -> list[tuple[str, str, int]]:
    """E4s advertising nearby: (address, name, RSSI dBm), strongest first."""
    found = await BleakScanner.discover(timeout_s, return_adv=True, **backend.scanner)
    e4s = [
        (dev.address, adv.local_name or dev.name or "", adv.rssi)
        for dev, adv in found.values()
        if (adv.local_name or dev.name or "").startswith("Empatica")
    ]
    return sorted(e4s, key=lambda e: -e[2])


class Link:
    """Keeps one wristband streaming to the bus until :meth:`run` is cancelled."""

    def __init__(
        self,
        band: Wristband,
        pub: Publisher,
        *,
        config: LinkConfig = LinkConfig(),
        clock: SystemClock | None = None,
        backend: BleBackend = PLATFORM,
        raw_log: RawLog | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.band = band
        self.config = config
        self.clock = clock or SystemClock()
        self._pub = pub
        self._backend = backend
        self._raw_log = raw_log
        self._rng = rng or random.Random()
        self._ingest = DeviceIngest(layout=config.layout, derive_heart=config.derive_heart)
        self.stats = LinkStats(ingest=self._ingest.stats)
        self._queue: asyncio.Queue[tuple[str, bytes, float]] = asyncio.Queue()
        self._last_data = 0.0
        self._coalescer = Coalescer(config.packet_s) if config.packet_s is not None else None
        # the consumer and the status reports both publish: one at a time, so what the coalescer
        # hands out goes onto the bus in the order it was handed out
        self._emitting = asyncio.Lock()

    async def _publish(self, emit: Emit) -> None:
        await self._pub.publish(
            emit.kind,
            self.band.device,
            emit.modality,
            t0_s=emit.t0_s,
            fs_hz=emit.fs_hz,
            samples=emit.samples,
            meta=emit.meta,
        )
        if emit.kind == "raw":
            self.stats.messages[emit.modality] += 1

    async def _emit(self, emit: Emit) -> None:
        """Publish ``emit``, or hand it to the coalescer and publish what that hands out."""
        if self._coalescer is None:
            await self._publish(emit)
            return
        async with self._emitting:
            for out in self._coalescer.push(emit):
                await self._publish(out)

    async def _flush(self) -> None:
        """Publish what the coalescer holds (a break: the link dropped, came back, or stopped)."""
        if self._coalescer is None:
            return
        async with self._emitting:
            for out in self._coalescer.flush():
                await self._publish(out)

    async def report(self, event: str, **meta: Any) -> None:
        """Publish a status event of this wristband (with its address only if the config says so);
        it follows every sample published or held before it."""
        if self.config.store_address:
            meta = {"address": self.band.address, **meta}
        await self._emit(status(self.clock.now(), event, **meta))

    def _notify_handler(self, char: str) -> Callable[[Any, bytearray], None]:
        """bleak's callback for one characteristic (bleak passes the characteristic, then the data)."""
        return lambda _characteristic, data: self._on_notify(char, data)

    def _on_notify(self, char: str, data: bytearray) -> None:
        """bleak's callback: stamp, queue, return (nothing slow on the radio's path)."""
        if char in WATCHED:
            self._last_data = asyncio.get_running_loop().time()
        self._queue.put_nowait((char, bytes(data), self.clock.now()))

    async def _consume(self) -> None:
        while True:
            char, data, arrival = await self._queue.get()
            try:
                if self._raw_log is not None:
                    self._raw_log.write(self.band.device, char, data, arrival)
                if char == "link":
                    self._ingest.relink()
                    await self._flush()  # the new link's stamps start afresh: nothing joins across
                    continue
                for emit in self._ingest.packet(char, data, arrival):
                    await self._emit(emit)
            finally:
                self._queue.task_done()

    async def _watchdog(self) -> str:
        loop = asyncio.get_running_loop()
        self._last_data = loop.time()
        period = self.config.watchdog_s / 4
        while True:
            await asyncio.sleep(period)
            if loop.time() - self._last_data > self.config.watchdog_s:
                return "watchdog"

    async def _session(self) -> str:
        """One connection, from scan to disconnect; returns why it ended."""
        cfg = self.config
        device = await BleakScanner.find_device_by_address(
            self.band.address, cfg.scan_timeout_s, **self._backend.scanner
        )
        if device is None:
            raise BleakError(f"{self.band.address} not found in {cfg.scan_timeout_s:.0f} s")
        lost = asyncio.Event()
        client = BleakClient(
            device, disconnected_callback=lambda _c: lost.set(), timeout=cfg.connect_timeout_s, **self._backend.client
        )
        await asyncio.wait_for(client.connect(), cfg.connect_timeout_s)
        waiters: list[asyncio.Task] = []
        try:
            self._queue.put_nowait(("link", b"", self.clock.now()))
            for char in codec.STREAMS:
                await client.start_notify(codec.CHARACTERISTICS[char], self._notify_handler(char))
            await client.write_gatt_char(
                codec.CHARACTERISTICS["command"], codec.start_command(cfg.layout, self.clock.now()), response=True
            )
            self.stats.connects += 1
            await self.report("connected", **({"name": client.name} if cfg.store_address else {}))
            waiters = [asyncio.create_task(lost.wait()), asyncio.create_task(self._watchdog())]
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            return "watchdog" if waiters[1] in done else "lost"
        finally:
            for w in waiters:
                w.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
            try:
                await asyncio.wait_for(client.disconnect(), cfg.connect_timeout_s)
            except (BleakError, OSError, TimeoutError) as exc:
                log.debug("%s: disconnect failed: %s", self.band.address, exc)

    async def run(self) -> None:
        """Connect and reconnect until cancelled; shutdown is cancellation."""
        consumer = asyncio.create_task(self._consume())
        attempt = 0
        try:
            while True:
                try:
                    reason = await self._session()
                except (BleakError, OSError, TimeoutError) as exc:
                    self.stats.connect_failures += 1
                    error = str(exc) or type(exc).__name__
                    log.warning("%s: cannot connect: %s", self.band.address, error)
                    await self.report("connect_failed", error=error)
                else:
                    self.stats.disconnects += 1
                    if reason == "watchdog":
                        self.stats.watchdog_trips += 1
                    if self._coalescer is not None:
                        # the link's last notifications first: the report then flushes them, and
                        # nothing waits in the coalescer through the backoff and the next scan
                        await self._settle(consumer)
                    await self.report("disconnected", reason=reason)
                    attempt = 0
                delay = backoff_s(attempt, self.config, self._rng)
                attempt += 1
                await asyncio.sleep(delay)
        finally:
            await self._drain(consumer)
            await self._flush()

    async def _settle(self, consumer: asyncio.Task) -> None:
        """Wait (bounded) until the consumer has handled every notification received so far."""
        if consumer.done():
            return
        try:
            await asyncio.wait_for(self._queue.join(), DRAIN_TIMEOUT_S)
        except TimeoutError:
            log.warning(
                "%s: %d notifications still queued after the link dropped", self.band.address, self._queue.qsize()
            )

    async def _drain(self, consumer: asyncio.Task) -> None:
        """Publish everything received (the link is already down), then stop the consumer;
        runs during cancellation too, so a clean shutdown loses no notification."""
        try:
            if not consumer.done():
                await asyncio.wait_for(self._queue.join(), DRAIN_TIMEOUT_S)
        except TimeoutError:
            log.warning("%s: %d notifications not published at shutdown", self.band.address, self._queue.qsize())
        finally:
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)


async def stream(
    pub: Publisher,
    bands: Sequence[Wristband],
    *,
    config: LinkConfig = LinkConfig(),
    clock: SystemClock | None = None,
    backend: BleBackend = PLATFORM,
    raw_log: RawLog | None = None,
    duration_s: float | None = None,
    stop: asyncio.Event | None = None,
) -> list[Link]:
    """Stream several wristbands until ``duration_s`` (host-clock seconds) passes or ``stop``
    is set; then disconnect them all and report "end" per device. Returns the links (stats)."""
    clock = clock or SystemClock()
    links = [Link(b, pub, config=config, clock=clock, backend=backend, raw_log=raw_log) for b in bands]
    tasks = [asyncio.create_task(link.run(), name=f"ble-{link.band.device}") for link in links]
    stop = stop or asyncio.Event()
    waiter = asyncio.create_task(stop.wait())
    ender: list[asyncio.Task[Any]] = [waiter]
    if duration_s is not None:
        ender.append(asyncio.create_task(clock.sleep_until(clock.now() + duration_s)))
    try:
        done, _ = await asyncio.wait(ender + tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if t in tasks and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
    finally:
        for t in ender + tasks:
            t.cancel()
        await asyncio.gather(*ender, *tasks, return_exceptions=True)
    for link in links:
        await link.report("end", stats=link.stats.as_dict())
    return links
