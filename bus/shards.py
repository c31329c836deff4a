"""Worker groups on NATS JetStream: N workers of one stage share the devices, partition by partition.

Theory of operation. A device's messages carry its partition in the subject
(``m3s.<NN>.raw.bvp.<device>``, :mod:`bus.partitions`), so each partition is one ordered
sequence in the stream and one durable pull consumer per (stage, group, partition) holds a
worker's place in it (``preprocess-pre-07``). The workers of a group find each other through a
JetStream key-value bucket (``m3sense-<stage>-<group>``) whose entries live ``lease_ttl_s``:

- every worker puts its membership record ``m.<worker>`` each third of the TTL;
- from the members it sees, every worker computes the same split (:func:`bus.partitions.assigned`)
  and holds a lease ``p.<NN>`` for each partition it owns: created only if absent (so two workers
  never own one partition), renewed with the revision it last wrote (a lease it lost is dropped
  at once, its work left unacknowledged);
- a worker that dies stops renewing: after the TTL its records vanish, the others see one member
  fewer, take its partitions, and resume each consumer at its **ack floor** (the consumer is
  made again from the first unacknowledged message), so what the dead worker had not finished
  comes again, in order; a worker that stops cleanly deletes its records, handing over at once.

Why this and not a shared consumer (JetStream handing each message to any worker): a device's
filter and window state lives in one process, so its messages must all reach that process, in
order. Why leases in KV and not a coordinator: the workers share nothing but the NATS address,
and the bucket is replicated like the stream, so there is nothing else to run or to lose.

Acknowledgement is the stage's business, as on :class:`bus.nats_backend.NatsSubscriber`: with
``acks="next"`` a message is handled when the next one is asked for; with ``acks="explicit"``
when the stage calls :meth:`ShardedSubscriber.done` (inference after publishing the answer,
preprocess once every window the message fed is published); ``acks="flushed"`` the same with
full fetches (the store, at its sink flush). Either way only after the server has stored what
this process published before.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors
from nats.js import api

from bus.message import Message
from bus.nats_backend import (
    ACK_EVERY,
    FETCH_BATCH,
    FETCH_BATCH_EXPLICIT,
    Fetcher,
    _check_security,
    _publications_stored,
    _replicas,
    accept_delivery,
    connect,
    ensure_stream,
    filter_for,
    open_durable,
    shard_description,
    while_electing,
)
from bus.partitions import PARTITIONS, assigned, check_group, describe, partition_of, token
from bus.security import BusSecurity, current
from bus.sequence import BusStats, GapTracker

log = logging.getLogger(__name__)

LEASE_TTL_S = 10.0
#: held (unacknowledged) messages a partition's consumer may have out: preprocess holds a
#: window's worth of every device of the partition until the window is published
MAX_ACK_PENDING = 200_000
_QUEUE = 4 * FETCH_BATCH


@dataclass(frozen=True, slots=True)
class ShardSpec:
    """Which group a stage's workers form: ``stage`` names the consumers and the bucket."""

    stage: str
    group: str
    lease_ttl_s: float = LEASE_TTL_S

    def __post_init__(self) -> None:
        check_group(self.group)
        check_group(self.stage)
        if not 1.0 <= self.lease_ttl_s <= 3600:
            raise ValueError(f"lease TTL must be 1 to 3600 s, got {self.lease_ttl_s:g}")

    @property
    def bucket(self) -> str:
        return f"m3sense-{self.stage}-{self.group}"

    def consumer(self, partition: int) -> str:
        return f"{self.stage}-{self.group}-{token(partition)}"


_default: ShardSpec | None = None
_on_owned: Callable[[set[int]], None] | None = None


def configure(spec: ShardSpec | None, on_owned: Callable[[set[int]], None] | None = None) -> None:
    """Make this process's durable subscribers workers of ``spec``'s group (None: plain consumers);
    ``on_owned`` hears what they own whenever it changes."""
    global _default, _on_owned
    _default, _on_owned = spec, on_owned


def configured() -> ShardSpec | None:
    return _default


def default_subscriber(bus: str, prefixes: Iterable[str], **kwargs: Any) -> ShardedSubscriber:
    """The configured group's subscriber, for a stage that asks for a plain durable one."""
    assert _default is not None
    return ShardedSubscriber(bus, prefixes, spec=_default, on_owned=_on_owned, **kwargs)


def _worker_id() -> str:
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40]
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass(slots=True)
class _Owned:
    """One partition this worker owns: its lease revision, its consumer, where its stream stands."""

    generation: int
    revision: int
    renewed: float  # loop time of the last renewal the server accepted
    sub: Any = None
    task: asyncio.Task | None = None
    high: int = 0  # highest stream sequence taken: a lower one is a redelivery of a held message


class ShardedSubscriber:
    """Decoded messages of the partitions this worker owns; ``stats``, ``recv``, ``done`` and
    ``until`` as on :class:`bus.nats_backend.NatsSubscriber`. ``on_owned(owned)`` is called
    whenever the owned set changes; ``on_release(partition)`` before a partition is given up (its
    held work must be forgotten: the next owner does it again from the ack floor)."""

    def __init__(
        self,
        bus: str,
        prefixes: Iterable[str] = ("",),
        *,
        spec: ShardSpec,
        security: BusSecurity | None = None,
        acks: str = "next",
        on_owned: Callable[[set[int]], None] | None = None,
        on_release: Callable[[int], None] | None = None,
        hwm: int = 0,
    ) -> None:
        if acks not in ("next", "explicit", "flushed"):
            raise ValueError(f"acks must be 'next', 'explicit' or 'flushed', not {acks!r}")
        self.bus = bus
        self.security = security or current()
        self.servers = _check_security(bus, self.security)
        self.prefixes = list(prefixes)
        self.spec = spec
        self.acks = acks
        self.worker = _worker_id()
        self.on_owned = on_owned
        self.on_release = on_release
        self.stats = BusStats()
        self.gaps = GapTracker(self.stats)
        self.owned: dict[int, _Owned] = {}
        self.takeovers = 0  # partitions resumed from an ack floor (a worker died or handed over)
        self._generation = 0
        self._queue: asyncio.Queue[tuple[int, int, Any]] = asyncio.Queue(_QUEUE)
        self._delivered: dict[int, tuple[int, int, Any]] = {}
        self._handled: list[tuple[int, int, Any]] = []
        self._last: tuple[int, int, Any] | None = None
        self._waiting: tuple[int, int, Any] | None = None
        self._logged: set[str] = set()
        self._nc: Any = None
        self._js: Any = None
        self._kv: Any = None
        self._keeper: asyncio.Task | None = None
        self._yield_at = 0.0
        self.endpoints = None

    # -- membership and leases -----------------------------------------------------------------

    async def __aenter__(self) -> ShardedSubscriber:
        self._nc = await connect(self.bus, self.servers)
        try:
            self._js = self._nc.jetstream()
            await ensure_stream(self._js, self.bus, _replicas(self._nc))
            self._kv = await self._bucket()
            await while_electing(self._round)  # a bucket just made on a cluster: no leader for a moment
        except BaseException:
            await self._nc.close()
            raise
        self._keeper = asyncio.get_running_loop().create_task(self._keep())
        return self

    async def _bucket(self) -> Any:
        config = api.KeyValueConfig(
            bucket=self.spec.bucket, ttl=self.spec.lease_ttl_s, history=1, replicas=_replicas(self._nc)
        )
        try:
            return await self._js.create_key_value(config=config)
        except nats.js.errors.BadRequestError:  # there already, perhaps with another TTL: use it as it is
            kv = await self._js.key_value(self.spec.bucket)
            log.warning("group %s: bucket %s exists with other settings; using them", self.spec.group, self.spec.bucket)
            return kv

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self.spec.lease_ttl_s / 4)
            try:
                await self._round()
            except Exception as exc:  # the keeper must outlive any one round: a dead keeper is a stuck worker
                if "lease" not in self._logged:
                    self._logged.add("lease")
                    log.warning("group %s: could not renew leases on %s (%r)", self.spec.group, self.bus, exc)

    async def _round(self) -> None:
        """Say I am alive, renew what I own, give up what is no longer mine, take what is."""
        kv = self._kv
        await kv.put(f"m.{self.worker}", b"1")
        try:
            keys = await kv.keys()
        except nats.js.errors.NoKeysError:
            keys = []
        members = [k[2:] for k in keys if k.startswith("m.")]
        want = assigned(members, self.worker)
        before = set(self.owned)
        for p in sorted(self.owned):
            if p not in want:
                await self._give_up(p, delete=True)
                continue
            try:
                self.owned[p].revision = await kv.update(
                    f"p.{token(p)}", self.worker.encode(), last=self.owned[p].revision
                )
                self.owned[p].renewed = asyncio.get_running_loop().time()
            except nats.js.errors.KeyWrongLastSequenceError:
                log.warning("group %s: lost the lease of partition %d (renewed too late)", self.spec.group, p)
                await self._give_up(p, delete=False)
        for p in sorted(want - set(self.owned)):
            try:
                revision = await kv.create(f"p.{token(p)}", self.worker.encode())
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # its owner has not let go yet (it will, or its lease runs out)
            await self._take(p, revision)
        if set(self.owned) != before and self.on_owned is not None:
            self.on_owned(set(self.owned))

    async def _take(self, p: int, revision: int) -> None:
        sub, resumed = await open_durable(
            self._js,
            self.spec.consumer(p),
            filter_for(self.prefixes, p),
            shard_description(p, self.prefixes),
            max_ack_pending=MAX_ACK_PENDING,
            rename_hint=f"give --workers-group another name on {self.bus}",
        )
        if resumed is not None:  # its last owner left work unacknowledged: it comes again, in order
            self.takeovers += 1
            log.info("group %s: partition %d resumes at stream sequence %d", self.spec.group, p, resumed)
        self._generation += 1
        owned = _Owned(self._generation, revision, asyncio.get_running_loop().time())
        owned.sub = sub
        owned.task = asyncio.get_running_loop().create_task(self._fetch(p, owned))
        self.owned[p] = owned

    async def _give_up(self, p: int, *, delete: bool) -> None:
        owned = self.owned.pop(p)
        if owned.task is not None:
            owned.task.cancel()
        if self.on_release is not None:
            self.on_release(p)
        try:
            await owned.sub.unsubscribe()
        except (nats.errors.Error, TimeoutError):
            pass
        if delete:
            await self._kv.delete(f"p.{token(p)}")

    async def _fetch(self, p: int, owned: _Owned) -> None:
        fetcher = Fetcher(owned.sub, FETCH_BATCH_EXPLICIT if self.acks == "explicit" else FETCH_BATCH)
        while True:
            try:
                msgs = await fetcher.next()
            except TimeoutError:
                continue
            except nats.errors.Error:
                await asyncio.sleep(0.5)  # reconnecting, or a leader being elected
                continue
            for m in msgs:
                await self._queue.put((p, owned.generation, m))

    # -- messages --------------------------------------------------------------------------------

    def _current(self, entry: tuple[int, int, Any]) -> bool:
        owned = self.owned.get(entry[0])
        return owned is not None and owned.generation == entry[1]

    def done(self, msg: Message) -> None:
        """``msg`` is handled (``acks="explicit"``): acknowledged once this process's publications
        so far are stored; nothing if its partition has been given up meanwhile."""
        entry = self._delivered.pop(id(msg), None)
        if entry is not None and self._current(entry):
            self._handled.append(entry)

    def forget(self, msg: Message) -> None:
        """Drop ``msg`` without acknowledging it (its partition's next owner gets it again)."""
        self._delivered.pop(id(msg), None)

    async def _ack_handled(self, force: bool = False) -> None:
        if not self._handled or not (force or len(self._handled) >= ACK_EVERY or self._queue.empty()):
            return
        if not await _publications_stored():
            return
        handled, self._handled = self._handled, []
        for entry in handled:
            if not self._current(entry):
                continue
            try:
                await entry[2].ack()
            except nats.errors.Error as exc:
                log.warning("could not acknowledge a message on %s: %s", self.bus, exc)

    def _accept(self, nmsg: Any) -> Message | None:
        return accept_delivery(self, nmsg)

    async def recv(self, timeout_s: float | None = None) -> Message:
        """The next valid message of an owned partition; TimeoutError if none arrives in time."""
        assert self._nc is not None, "use 'async with ShardedSubscriber(...)'"
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        while True:
            if self._last is not None:
                self._handled.append(self._last)
                self._last = None
            await self._ack_handled()
            if self._queue.empty():
                await self._ack_handled(force=True)
            wait = None if deadline is None else max(0.0, deadline - loop.time())
            if self._waiting is not None:  # the entry a deadline interrupted while its lease was late
                entry, self._waiting = self._waiting, None
            else:
                try:
                    entry = self._queue.get_nowait()  # no wait_for when there is work: 3.11's can swallow a cancel
                except asyncio.QueueEmpty:
                    entry = await asyncio.wait_for(self._queue.get(), wait)
            if loop.time() >= self._yield_at:  # a backlog never suspends recv: let the lease keeper run
                await asyncio.sleep(0)
                self._yield_at = loop.time() + 0.02
            owned = await self._lease_for(entry, deadline)
            if owned is None or not self._current(entry):
                continue  # its partition was given up
            seq = entry[2].metadata.sequence.stream
            if seq <= owned.high:
                continue  # the ack wait ran out on a message this worker still holds: it acks the first copy
            owned.high = seq
            msg = self._accept(entry[2])
            if msg is None or self.acks == "next":
                self._last = entry
                if msg is None:
                    continue
                return msg
            self._delivered[id(msg)] = entry
            return msg

    async def _lease_for(self, entry: tuple[int, int, Any], deadline: float | None) -> _Owned | None:
        """The owned partition of ``entry`` once its lease is fresh; None if it is no longer ours.

        No work is done on a lease past half its TTL until the keeper renews it; one past its
        whole TTL may already be another worker's, so it is given up (the keeper failing round
        after round must not leave ``recv`` waiting for ever). TimeoutError at ``deadline``,
        keeping ``entry`` for the next call, so that a stage polling its stop event stops."""
        loop = asyncio.get_running_loop()
        owned = self.owned.get(entry[0])
        while owned is not None and loop.time() - owned.renewed > self.spec.lease_ttl_s / 2:
            if loop.time() - owned.renewed > self.spec.lease_ttl_s:
                log.warning("group %s: the lease of partition %d ran out unrenewed", self.spec.group, entry[0])
                await self._give_up(entry[0], delete=False)
                if self.on_owned is not None:
                    self.on_owned(set(self.owned))
                return None
            if deadline is not None and loop.time() >= deadline:
                self._waiting = entry
                raise TimeoutError
            await asyncio.sleep(0.05)
            owned = self.owned.get(entry[0])
        return owned

    async def __aiter__(self) -> AsyncIterator[Message]:
        while True:
            yield await self.recv()

    async def until(self, stop: asyncio.Event, poll_s: float = 0.2) -> AsyncIterator[Message]:
        while not stop.is_set():
            try:
                yield await self.recv(poll_s)
            except TimeoutError:
                pass

    async def __aexit__(self, *_: Any) -> None:
        """Acknowledge what is handled, then hand every partition over at once (no waiting for the
        TTL); a hand-over that takes longer than the TTL is left to the leases running out."""
        try:
            if self._keeper is not None:
                self._keeper.cancel()
            if self._nc is not None:
                await asyncio.wait_for(self._hand_over(), self.spec.lease_ttl_s)
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning(
                "group %s: could not hand over cleanly (%s); the leases run out in %.0f s",
                self.spec.group,
                exc or "timed out",
                self.spec.lease_ttl_s,
            )
        finally:
            await self.aclose()

    async def _hand_over(self) -> None:
        if self._last is not None and self.acks == "next":
            self._handled.append(self._last)
            self._last = None
        await self._ack_handled(force=True)
        for p in sorted(self.owned):
            await self._give_up(p, delete=True)
        await self._kv.delete(f"m.{self.worker}")

    async def aclose(self) -> None:
        if self._nc is not None:
            nc, self._nc = self._nc, None
            await nc.close()


async def lease_holders(bus: str, spec: ShardSpec) -> dict[int, str]:
    """Partition -> the worker holding its lease now (an empty dict before the group exists)."""
    nc = await connect(bus, _check_security(bus, current()))
    try:
        try:
            kv = await nc.jetstream().key_value(spec.bucket)
            keys = await kv.keys()
        except (nats.js.errors.BucketNotFoundError, nats.js.errors.NoKeysError):
            return {}
        held = {}
        for key in (k for k in keys if k.startswith("p.")):
            try:
                held[int(key[2:])] = (await kv.get(key)).value.decode()
            except nats.js.errors.KeyNotFoundError:
                continue
        return held
    finally:
        await nc.close()


async def wait_for_workers(bus: str, spec: ShardSpec, workers: int, timeout_s: float) -> bool:
    """Wait until ``workers`` workers hold every partition between them (so a stream that starts
    now is not handed over mid-way as late workers join); False at the time-out."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    want = min(workers, PARTITIONS)
    while True:
        held = await lease_holders(bus, spec)
        if len(held) == PARTITIONS and len(set(held.values())) == want:
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.2)


def owned_line(stage: str, spec: ShardSpec, owned: set[int]) -> str:
    """The line a worker prints when what it owns changes (scripts wait for it)."""
    return f"{stage}: owns partitions {describe(owned)} of {PARTITIONS} in group {spec.group}"


__all__ = [
    "LEASE_TTL_S",
    "ShardSpec",
    "ShardedSubscriber",
    "configure",
    "configured",
    "lease_holders",
    "owned_line",
    "partition_of",
    "wait_for_workers",
]
