"""Preprocess as one worker of a group (``--workers-group``, NATS only): the devices of the
partitions it owns, each message acknowledged only once every window it fed is published.

Why acknowledgements wait: a device's filter and window state lives in this process only. When
the process dies, the partition's next owner resumes at the consumer's ack floor (see
:mod:`bus.shards`); for it to cut every window the dead worker had not published, every sample
those windows need must still be unacknowledged. A sample at ``t`` belongs to the windows that
start in ``(t - 20 s, t]``; they are all out once a window starting at or after the hop before
``t`` is, so a message is held until its device has published a window with ``t_start + hop > t``
(:func:`needed_until` says ``t`` for each kind), and everything of a device is released once
its end marker is out. The next owner's filters start cold at the first unacknowledged sample, so
its first windows may differ slightly in value from the ones the dead worker would have cut; it may
also cut again windows already published (the floor is the oldest unacknowledged message of the
whole partition): the store's keys keep one row per window either way.

A device's source (``replay`` or ``live``, from its ``start`` status) is not in the data the next
owner reads again, so each worker records it in a key-value bucket (``m3sense-sources``) and a
worker that meets a device without its start reads it from there.

State per partition (one :class:`Preprocessor` each), so a partition given up is forgotten whole.
Stopping hands the partitions over without flushing: the windows not yet cut are the next owner's.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import nats.errors
import nats.js.errors
from nats.js import api

from bus import LABEL, RAW, STATUS, Message, Publisher
from bus.nats_backend import STREAM_MAX_AGE_S, _replicas
from bus.partitions import partition_of
from bus.shards import ShardedSubscriber, ShardSpec
from common.aio import STOP_POLL_S
from common.jsonvalues import is_finite_number
from preprocess.node import DROPS, SUBSCRIPTIONS, _publish
from preprocess.preprocessor import Preprocessor
from preprocess.window import Window
from preprocess.windower import WindowConfig

log = logging.getLogger(__name__)

SOURCES_BUCKET = "m3sense-sources"


def needed_until(msg: Message) -> float | None:
    """The last instant whose windows ``msg`` can still change (None: nothing to wait for;
    ``inf``: until its device closes)."""
    if msg.kind == RAW:
        if msg.fs_hz > 0 and msg.n > 1:
            return msg.t0_s + (msg.n - 1) / msg.fs_hz
        return msg.t0_s
    if msg.kind == LABEL:
        end = msg.meta.get("end_s")
        return float(end) if is_finite_number(end) else None
    if msg.kind == STATUS and msg.meta.get("event") == "end":
        return math.inf
    return None  # start/announce: their source is kept in the sources bucket


class HeldAcks:
    """Per device, the messages not yet acknowledged and the instant each waits for (pure)."""

    def __init__(self) -> None:
        self._held: dict[str, list[tuple[float, Message]]] = {}
        self._published: dict[str, float] = {}  # device -> samples before this instant are done

    def hold(self, msg: Message, until: float) -> None:
        self._held.setdefault(msg.device, []).append((until, msg))

    def published(self, window: Window, hop_s: float) -> list[Message]:
        """A window of its device is out: the messages now done."""
        done = max(self._published.get(window.device, -math.inf), window.t_start_s + hop_s)
        self._published[window.device] = done
        kept: list[tuple[float, Message]] = []
        out: list[tuple[float, Message]] = []
        for entry in self._held.get(window.device, ()):
            (out if entry[0] < done else kept).append(entry)
        if kept:
            self._held[window.device] = kept
        else:
            self._held.pop(window.device, None)
        return [m for _, m in out]

    def closed(self, device: str) -> list[Message]:
        """The device is closed (its end marker is out): all of it is done."""
        self._published.pop(device, None)
        return [m for _, m in self._held.pop(device, ())]

    def drop(self, devices: set[str]) -> list[Message]:
        """Forget these devices (their partition was given up); returns what was held."""
        out = []
        for device in devices:
            self._published.pop(device, None)
            out += [m for _, m in self._held.pop(device, ())]
        return out

    def devices(self) -> list[str]:
        return list(self._held)

    def __len__(self) -> int:
        return sum(len(v) for v in self._held.values())


class Sources:
    """Each device's source in a key-value bucket, so the next owner of its partition knows it."""

    def __init__(self, kv: Any) -> None:
        self.kv = kv
        self._known: dict[str, str] = {}

    @classmethod
    async def open(cls, js: Any, nc: Any) -> Sources:
        config = api.KeyValueConfig(bucket=SOURCES_BUCKET, ttl=STREAM_MAX_AGE_S, history=1, replicas=_replicas(nc))
        try:
            return cls(await js.create_key_value(config=config))
        except nats.js.errors.BadRequestError:
            return cls(await js.key_value(SOURCES_BUCKET))

    @staticmethod
    def _key(device: str) -> str:
        return "d." + device.encode("utf-8", "surrogatepass").hex()

    async def save(self, device: str, source: str) -> None:
        if self._known.get(device) != source:
            await self.kv.put(self._key(device), source.encode())
            self._known[device] = source

    async def lookup(self, device: str) -> str | None:
        if device in self._known:
            return self._known[device]
        try:
            entry = await self.kv.get(self._key(device))
        except nats.js.errors.KeyNotFoundError:
            return None
        source = (entry.value or b"").decode(errors="replace")
        if source in ("replay", "live"):
            self._known[device] = source
            return source
        return None


def _announce(device: str, source: str, t_s: float) -> Message:
    return Message(
        kind=STATUS,
        device=device,
        modality=STATUS,
        seq=0,
        t0_s=t_s,
        fs_hz=0.0,
        meta={"event": "announce", "source": source},
    )


async def serve_sharded(
    bus: str,
    spec: ShardSpec,
    config: WindowConfig | None = None,
    *,
    device_timeout_s: float = 120.0,
    report_every_s: float = 30.0,
    on_ready: Callable[[str], None] | None = None,
    on_owned: Callable[[set[int]], None] | None = None,
    report: Callable[[Counter], None] | None = None,
    metrics: Any = None,
    stop: asyncio.Event | None = None,
) -> int:
    """Run as a worker of ``spec``'s group until ``stop`` is set or the task is cancelled (nothing
    is flushed: see the module); returns 0."""
    config = config or WindowConfig()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    tick_s = min(1.0, device_timeout_s / 4)
    pres: dict[int, Preprocessor] = {}
    held = HeldAcks()
    gone: Counter[str] = Counter()  # counters of the partitions given up, so the totals never go back

    def release(partition: int) -> None:
        pre = pres.pop(partition, None)
        if pre is not None:
            gone.update(pre.counters())
        for m in held.drop({d for d in held.devices() if partition_of(d) == partition}):
            sub.forget(m)

    def totals() -> Counter:
        c = Counter(gone)
        for pre in pres.values():
            c.update(pre.counters())
        c["bus_received"] = sub.stats.received
        c["bus_missing"] = sub.stats.gaps
        c["bus_malformed"] = sum(sub.stats.malformed.values())
        c.update({f"bus_malformed_{k}": v for k, v in sub.stats.malformed.items()})
        c["devices_open"] = sum(len(p.devices) for p in pres.values())
        c["held_messages"] = len(held)
        c["partitions_owned"] = len(sub.owned)
        c["takeovers"] = sub.takeovers
        return c

    async def out(pre: Preprocessor, windows: list[Window], devices: set[str]) -> None:
        """Publish; then acknowledge what the windows finished, and all of each of ``devices``
        that ``pre`` closed (their end markers are out)."""
        await _publish(pub, pre, windows)
        for w in windows:
            for m in held.published(w, pre.config.hop_s):
                sub.done(m)
        for device in devices - set(pre.devices):
            for m in held.closed(device):
                sub.done(m)

    sub = ShardedSubscriber(bus, SUBSCRIPTIONS, spec=spec, acks="explicit", on_owned=on_owned, on_release=release)
    async with Publisher(bus) as pub, sub:
        sources = await Sources.open(sub._js, sub._nc)
        if metrics is not None:
            from bus.metrics import bus_snapshot

            metrics.watch(
                lambda: bus_snapshot(
                    sub.stats,
                    drops={k: v for k, v in totals().items() if k in DROPS},
                    published=pub.sent,
                    queue_depth=sum(p.nbytes() for p in pres.values()),
                )
            )
        if on_ready is not None:
            on_ready(bus)
        next_expire = loop.time() + tick_s
        next_report = loop.time() + report_every_s
        try:
            while not stop.is_set():
                try:
                    msg = await sub.recv(max(0.0, min(next_expire - loop.time(), STOP_POLL_S)))
                except TimeoutError:
                    msg = None
                now = loop.time()
                if msg is not None:
                    started = time.perf_counter()
                    pre = pres.setdefault(
                        partition_of(msg.device), Preprocessor(config, device_timeout_s=device_timeout_s)
                    )
                    event = msg.meta.get("event") if msg.kind == STATUS else None
                    source = msg.meta.get("source")
                    if msg.device not in pre.devices and event not in ("start", "end"):
                        known = await sources.lookup(msg.device)  # a device met mid-stream: a takeover
                        if known is not None:
                            pre.push(_announce(msg.device, known, msg.t0_s), now_s=now)
                    if event in ("start", "announce") and source in ("replay", "live"):
                        try:
                            await sources.save(msg.device, source)
                        except (nats.errors.Error, TimeoutError) as exc:
                            log.warning("could not record the source of %s: %s", msg.device, exc)
                    windows = pre.push(msg, now_s=now)
                    until = needed_until(msg)
                    if until is None:
                        sub.done(msg)
                    else:
                        held.hold(msg, until)
                    await out(pre, windows, {msg.device})
                    if metrics is not None:
                        metrics.observe(time.perf_counter() - started)
                if now >= next_expire:
                    for pre in list(pres.values()):
                        open_before = set(pre.devices)
                        await out(pre, pre.expire(now), open_before)
                    next_expire = now + tick_s
                if report is not None and now >= next_report:
                    report(totals())
                    next_report = now + report_every_s

        finally:
            if report is not None:
                report(totals())
        return 0


def run_worker(args: Any, spec: ShardSpec) -> int:
    """``m3sense preprocess --workers-group NAME``: this worker until a stop signal."""
    import sys

    from bus.metrics import start_metrics
    from bus.shards import owned_line
    from common.aio import run_until_signal
    from preprocess.cli import format_counters, window_config

    config = window_config(args)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    async def main(stop: asyncio.Event) -> int:
        # a worker hands its partitions over unflushed when stopped: the next owner cuts what is pending
        return await serve_sharded(
            args.bus,
            spec,
            config,
            device_timeout_s=args.device_timeout,
            report_every_s=args.report_every,
            on_ready=lambda bus: say(f"preprocess: worker of group {spec.group} on {bus}"),
            on_owned=lambda owned: say(owned_line("preprocess", spec, owned)),
            report=lambda c: say(f"preprocess: {format_counters(c)}"),
            metrics=start_metrics(args, "preprocess"),
            stop=stop,
        )

    return run_until_signal(main)
