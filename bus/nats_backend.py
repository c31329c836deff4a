"""The bus on NATS JetStream: the same Publisher / Subscriber interface, chosen by ``--bus nats://HOST:PORT``.

Theory of operation. Every message goes into one JetStream stream (:data:`STREAM`, subjects
``m3s.>``, with declared limits on age and size, created if absent). A topic maps to a subject
segment by segment behind its device's partition (``raw/bvp/S2/`` -> ``m3s.07.raw.bvp.S2``, see
:mod:`bus.partitions`: a worker group's consumer takes one partition, :mod:`bus.shards`); ``.``
and ``%`` in a device id are percent-escaped, so the mapping reverses exactly. The payload holds
the codec's frames after the topic (header, samples, arrays) behind a small length prefix, so
:func:`bus.message.decode` checks every bound it checks on ZeroMQ.

- A :class:`NatsPublisher` publishes asynchronously and keeps each JetStream acknowledgement's
  future; :meth:`NatsPublisher.flush` waits for all of them and says how many the server refused.
- A :class:`NatsSubscriber` given a consumer name (``--consumer NAME``, by default the command's
  name) is a *durable pull consumer*: the stream keeps what is sent while the stage is away, and a
  restarted stage resumes where its last acknowledgement left it. A message is acknowledged only
  once it has been handled: by default when the stage asks for the next one; with
  ``acks="explicit"`` when the stage calls :meth:`NatsSubscriber.done` (inference: after the
  answer is published), fetching a model batch's worth at a time; ``acks="flushed"`` the same
  with full fetches (the store: at its next sink flush, for everything it handled). Either way
  the acknowledgement waits until the JetStream server has acknowledged everything this process
  published before it, so a kill -9 at any point leaves the message to be delivered again. At
  least once, then; the store's unique keys make it exactly once.
- Without a consumer name (``tap``, ``run``'s own watcher, benches) a subscriber is a plain core
  NATS subscription: it sees what flows from now on and holds nothing on the server, as on ZeroMQ.

Readiness: the stream keeps messages for a durable consumer from the moment it exists, so
:meth:`NatsPublisher.wait_for_subscribers` returns once, for each topic, a consumer exists whose
topic prefixes (kept in its description) cover it. NATS 2.9 filters a consumer on one subject, so
a stage with several prefixes gets the narrowest subject that covers them all and the subscriber
drops (and acknowledges) the rest.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import struct
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import nats
import nats.errors
import nats.js.errors
from nats.js import api

from bus.endpoints import nats_servers
from bus.message import MalformedMessage, Message, decode, encode
from bus.partitions import is_token, partition_of, token
from bus.security import BusSecurity, BusSecurityError, check_address, current
from bus.sequence import BusStats, GapTracker
from bus.sockets import Publisher
from common.errors import UserError

log = logging.getLogger(__name__)
T = TypeVar("T")

STREAM = "M3SENSE"
SUBJECT_ROOT = "m3s"
STREAM_MAX_AGE_S = 24 * 3600.0  # a day: long enough for any stage to come back, short enough to bound the disk
STREAM_MAX_BYTES = 8 * 1024**3  # 8 GiB, about two days of 1,000 wristbands' raw signals
ACK_WAIT_S = float(os.environ.get("M3SENSE_NATS_ACK_WAIT_S", "30"))  # unacknowledged -> delivered again after this
FETCH_BATCH = 256
#: the longest a batch fetch lingers while messages flow (whether a lingering batch request returns
#: with its first messages or only when full differs between server and client versions: this
#: bounds the wait either way)
FETCH_WAIT_S = 0.025
#: the longest an idle consumer's single-message poll waits (it returns with the first message)
IDLE_POLL_S = 5.0
FETCH_BATCH_EXPLICIT = 32  # explicit acks wait for the work (a model batch): fetch no more than that holds
RESEND_AFTER_S = 5.0  # a publication unanswered this long is sent again (same message id)
ACK_EVERY = 64  # handled messages acknowledged together (or sooner when idle)
MAX_FRAMES = 64  # header + samples + named arrays; a real message has at most 8
_FRAMING = struct.Struct("<I")
_DESCRIPTION = "m3sense prefixes "
_SHARD_DESCRIPTION = "m3sense shard "
_CONNECT_TIMEOUT_S = 3.0

#: the consumer name this process's subscribers take when none is given (``bus.cli`` sets it per command)
_default_consumer: str | None = None
#: this process's live publishers: a subscriber acknowledges only after their publications are stored
_publishers: weakref.WeakSet = weakref.WeakSet()


class NatsUnreachable(UserError):
    """The NATS server could not be reached, has no JetStream, or holds a clashing consumer: one line, exit 2."""


def configure_consumer(name: str | None) -> None:
    """The durable consumer name of this process's subscribers (None: live core subscriptions)."""
    global _default_consumer
    _default_consumer = name


# -- subjects ----------------------------------------------------------------------------------


def _escape(segment: str) -> str:
    return segment.replace("%", "%25").replace(".", "%2E")


def _unescape(token: str) -> str:
    return token.replace("%2E", ".").replace("%25", "%")


def subject_for(topic: str) -> str:
    """``raw/bvp/S2/`` -> ``m3s.NN.raw.bvp.S2``, ``NN`` the device's partition (the topic's last
    segment, see :mod:`bus.partitions`); a segment's ``.`` and ``%`` are escaped."""
    parts = topic.split("/")
    if parts[-1] != "" or len(parts) < 2 or not all(parts[:-1]):
        raise ValueError(f"topic {topic!r} must be non-empty segments each ending in '/'")
    return ".".join([SUBJECT_ROOT, token(partition_of(parts[-2])), *(_escape(p) for p in parts[:-1])])


def topic_of(subject: str) -> str:
    """The inverse of :func:`subject_for` (a subject without a partition token reads too)."""
    tokens = subject.split(".")
    if len(tokens) > 2 and is_token(tokens[1]):
        tokens = [tokens[0], *tokens[2:]]
    if len(tokens) < 2 or tokens[0] != SUBJECT_ROOT:
        raise MalformedMessage("subject", f"subject {subject[:80]!r} is not under {SUBJECT_ROOT}.")
    return "".join(_unescape(t) + "/" for t in tokens[1:])


def filter_for(prefixes: Sequence[str], partition: int | None = None) -> str:
    """The narrowest subject filter covering every topic prefix (a prefix is whole segments,
    ``''`` for everything) in one partition (None: all): the longest run of segments they all
    share, then ``>``."""
    split = [[s for s in p.split("/")[:-1]] if p else [] for p in prefixes] or [[]]
    common: list[str] = []
    for segs in zip(*split):
        if len(set(segs)) != 1:
            break
        common.append(segs[0])
    if partition is None and not common:
        return f"{SUBJECT_ROOT}.>"
    part = "*" if partition is None else token(partition)
    # a prefix that names a whole topic (e.g. window/S2/) still needs '>' to match only itself and below
    return ".".join([SUBJECT_ROOT, part, *(_escape(s) for s in common), ">"])


def _prefix_of_filter(subject: str) -> str:
    """A consumer made by another tool: its filter as a topic prefix (``m3s.*.window.>`` ->
    ``window/``); a filter that is not a plain prefix covers nothing."""
    tokens = subject.split(".")
    if len(tokens) > 2 and tokens[1] == "*":
        tokens = [tokens[0], *tokens[2:]]
    if len(tokens) < 2 or tokens[0] != SUBJECT_ROOT or tokens[-1] != ">" or "*" in tokens or ">" in tokens[1:-1]:
        return "\x00"
    return "".join(_unescape(t) + "/" for t in tokens[1:-1])


def _covers(prefixes: Sequence[str], topic: str) -> bool:
    return any(topic.startswith(p) for p in prefixes)


# -- payload framing ---------------------------------------------------------------------------


def pack(frames: Sequence[Any]) -> bytes:
    """The frames after the topic as one payload: count, each length, then the bytes."""
    views = [memoryview(f).cast("B") if not isinstance(f, bytes) else f for f in frames]
    head = _FRAMING.pack(len(views)) + b"".join(_FRAMING.pack(len(v)) for v in views)
    return head + b"".join(bytes(v) if not isinstance(v, bytes) else v for v in views)


class _Frame:
    """A slice of a payload where the codec reads a received frame (``.buffer``): no copy."""

    __slots__ = ("buffer",)

    def __init__(self, buffer: memoryview) -> None:
        self.buffer = buffer


def unpack(payload: bytes) -> list[Any]:
    """The inverse of :func:`pack`; raises MalformedMessage on a count or length that does not fit."""
    data = memoryview(payload)
    if len(data) < 4:
        raise MalformedMessage("framing", f"{len(data)}-byte payload has no frame count")
    (count,) = _FRAMING.unpack_from(data, 0)
    if not 1 <= count <= MAX_FRAMES or len(data) < 4 + 4 * count:
        raise MalformedMessage("framing", f"frame count {count} (at most {MAX_FRAMES}) does not fit {len(data)} bytes")
    lengths = struct.unpack_from(f"<{count}I", data, 4)
    at = 4 + 4 * count
    if at + sum(lengths) != len(data):
        raise MalformedMessage("framing", f"frame lengths sum to {sum(lengths)}, payload holds {len(data) - at}")
    frames = []
    for n in lengths:
        frames.append(_Frame(data[at : at + n]))
        at += n
    return frames


def decode_nats(subject: str, payload: bytes) -> Message:
    return decode([topic_of(subject).encode(), *unpack(payload)])


# -- connection --------------------------------------------------------------------------------


def _check_security(bus: str, security: BusSecurity) -> list[str]:
    servers = nats_servers(bus)
    if security.curve:
        raise BusSecurityError(
            "--bus-keys holds CURVE keys for the ZeroMQ bus; a nats:// bus has no TLS or "
            "NATS credentials support yet: use a loopback NATS server, or --insecure"
        )
    for server in servers:
        check_address(server, security)
    return servers


async def connect(bus: str, servers: list[str]) -> Any:
    """A NATS connection with JetStream, or :class:`NatsUnreachable` in one line."""

    async def quiet(_exc: Exception) -> None:  # nats-py would log every failed attempt at length
        return None

    # nats-py retries a first connection forever when reconnecting is allowed: probe the servers first
    for server in servers:
        parts = urlsplit(server)
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, parts.port), _CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError):
            continue
        writer.close()
        break
    else:
        raise NatsUnreachable(
            f"NATS server at {bus} is unreachable (no answer on {', '.join(servers)}); "
            f"start one with: nats-server -js -p PORT -sd DIR"
        )
    try:
        nc = await nats.connect(
            servers=servers,
            connect_timeout=_CONNECT_TIMEOUT_S,
            max_reconnect_attempts=-1,
            allow_reconnect=True,
            error_cb=quiet,
        )
    except (nats.errors.NoServersError, OSError, TimeoutError) as exc:
        raise NatsUnreachable(
            f"NATS server at {bus} is unreachable ({type(exc).__name__}: {exc}); "
            f"start one with: nats-server -js -p PORT -sd DIR"
        ) from None
    return nc


def _replicas(nc: Any) -> int:
    """Copies of the stream: one per server of a cluster, up to 3 (a single server: 1)."""
    info = getattr(nc, "_server_info", None) or {}
    return max(1, min(3, len(info.get("connect_urls") or []))) if info.get("cluster") else 1


async def ensure_stream(js: Any, bus: str, replicas: int = 1) -> None:
    """Create the stream with its limits if absent (on a cluster, kept on up to 3 servers, so one
    can die); a stream already there is used as it is."""
    try:
        await js.stream_info(STREAM)
        return
    except nats.js.errors.NotFoundError:
        pass
    except nats.errors.NoRespondersError:
        raise NatsUnreachable(f"NATS server at {bus} has no JetStream (start it with -js)") from None
    try:
        await js.add_stream(
            api.StreamConfig(
                name=STREAM,
                subjects=[f"{SUBJECT_ROOT}.>"],
                retention=api.RetentionPolicy.LIMITS,
                max_age=STREAM_MAX_AGE_S,
                max_bytes=STREAM_MAX_BYTES,
                storage=api.StorageType.FILE,
                discard=api.DiscardPolicy.OLD,
                num_replicas=replicas,
            )
        )
    except nats.js.errors.BadRequestError:  # another process created it meanwhile
        await js.stream_info(STREAM)


def _prefixes_of(info: Any) -> list[str] | None:
    desc = getattr(info.config, "description", None) or ""
    if desc.startswith(_SHARD_DESCRIPTION):  # "m3sense shard NN [prefixes]"
        desc = _DESCRIPTION + desc[len(_SHARD_DESCRIPTION) :].partition(" ")[2]
    if desc.startswith(_DESCRIPTION):
        try:
            found = json.loads(desc[len(_DESCRIPTION) :])
        except ValueError:
            return None
        return [p for p in found if isinstance(p, str)] if isinstance(found, list) else None
    return None


def _partition_of_consumer(info: Any) -> int | None:
    """The one partition a worker group's consumer holds (None: every partition)."""
    desc = getattr(info.config, "description", None) or ""
    if desc.startswith(_SHARD_DESCRIPTION):
        head = desc[len(_SHARD_DESCRIPTION) :].split(" ", 1)[0]
        return int(head) if is_token(head) else -1
    return None


def shard_description(partition: int, prefixes: Sequence[str]) -> str:
    """What a worker group's consumer says it holds: its partition and its topic prefixes."""
    return f"{_SHARD_DESCRIPTION}{token(partition)} {json.dumps(list(prefixes))}"


def _consumer_covers(info: Any, topic: str) -> bool:
    prefixes = _prefixes_of(info) or [_prefix_of_filter(info.config.filter_subject or "")]
    partition = _partition_of_consumer(info)
    if partition is not None and partition != partition_of(topic.split("/")[-2]):
        return False
    return _covers(prefixes, topic)


# -- publisher ---------------------------------------------------------------------------------


#: what a request to a stream or key-value bucket with no leader yet (just made on a cluster, or its
#: server died) answers: no responders, no response from the stream, or nothing in time
LEADERLESS = (nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError, TimeoutError)


async def while_electing(step: Callable[[], Awaitable[T]], timeout_s: float = 30.0) -> T:
    """``await step()``, again (every 0.25 s, up to ``timeout_s``) while what it asks has no leader:
    a bucket made a moment ago on a 3-server cluster refuses its first writes until one is elected."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            return await step()
        except LEADERLESS:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.25)


def _lost_on_the_way(fut: asyncio.Future) -> bool:
    """An answer that says the publication may not have reached a stream leader (a server died,
    a leader is being elected: no responders, no response from the stream, no answer in time):
    worth sending again with the same message id, unlike a refusal by the stream itself."""
    return not fut.cancelled() and isinstance(fut.exception(), LEADERLESS)


class NatsPublisher(Publisher):
    """:class:`bus.sockets.Publisher` on JetStream: numbering and ``publish`` are the same."""

    def __init__(self, bus: str, *, flush_timeout_s: float = 30.0, security: BusSecurity | None = None) -> None:
        self.bus = bus
        self.security = security or current()
        self.servers = _check_security(bus, self.security)
        from bus.sequence import SequenceCounter, new_incarnation

        self._seq = SequenceCounter()
        self.incarnation = new_incarnation()
        self._flush_timeout_s = flush_timeout_s
        self._nc: Any = None
        self._js: Any = None
        #: (acknowledgement, subject, payload, message id) of each publication not yet acknowledged
        self._acks: deque[tuple[asyncio.Future, str, bytes, str]] = deque()
        self._consumers_seen: set[str] | None = None
        self._arrived_names: set[str] = set()  # consumer names (the ZeroMQ publisher's are prefixes)
        self._watch: asyncio.Task | None = None
        self.sent = 0
        #: publications the server refused or never acknowledged (flush says so)
        self.refused = 0
        self.endpoints = None  # type: ignore[assignment]  # a NATS bus has no hub endpoints

    async def __aenter__(self) -> NatsPublisher:
        self._nc = await connect(self.bus, self.servers)
        self._js = self._nc.jetstream()
        try:
            await ensure_stream(self._js, self.bus, _replicas(self._nc))
        except BaseException:
            await self._nc.close()
            raise
        _publishers.add(self)
        return self

    async def __aexit__(self, exc_type: Any, *_: Any) -> None:
        try:
            if exc_type is None:
                await self.flush()
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        _publishers.discard(self)
        if self._watch is not None:
            self._watch.cancel()
        if self._nc is not None:
            nc, self._nc = self._nc, None
            await nc.close()

    def close(self) -> None:
        if self._nc is not None:
            asyncio.get_running_loop().create_task(self.aclose())

    async def send(self, msg: Message) -> None:
        assert self._js is not None, "use 'async with Publisher(...)'"
        frames = encode(msg, self.incarnation if not msg.incarnation else None)
        topic = bytes(frames[0]).decode()
        subject, payload = subject_for(topic), pack(frames[1:])
        msg_id = f"{self.incarnation:x}-{topic}{msg.seq}"  # JetStream drops a re-sent copy (2-minute window)
        fut = await self._js.publish_async(subject, payload, headers={"Nats-Msg-Id": msg_id})
        self._acks.append((fut, subject, payload, msg_id))
        while self._acks and self._acks[0][0].done() and not _lost_on_the_way(self._acks[0][0]):
            self._settle(self._acks.popleft()[0])
        self.sent += 1

    def _settle(self, fut: asyncio.Future) -> None:
        if fut.cancelled() or fut.exception() is not None:
            self.refused += 1
            if self.refused == 1:
                log.warning(
                    "NATS refused a publication on %s (%s); further ones are only counted",
                    self.bus,
                    "cancelled" if fut.cancelled() else fut.exception(),
                )

    async def stored(self, timeout_s: float) -> bool:
        """Wait until the server has acknowledged every publication so far; False at the time-out.

        Publications without an answer after :data:`RESEND_AFTER_S` are sent again, in order, with
        the same message id: written into the socket of a server that has just died, they were lost
        on the way (the client notices a dead server only later), and the stream keeps one copy."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        pending = list(self._acks)
        self._acks.clear()
        while pending:
            wait = min(RESEND_AFTER_S, max(0.0, deadline - loop.time()))
            await asyncio.wait([p[0] for p in pending], timeout=wait)
            late = []
            for entry in pending:
                if entry[0].done() and not _lost_on_the_way(entry[0]):
                    self._settle(entry[0])
                else:
                    late.append(entry)
            if late and loop.time() >= deadline:
                self.refused += len(late)
                for entry in late:
                    entry[0].cancel()
                log.warning(
                    "%d publication(s) to %s had no JetStream acknowledgement after %.0f s",
                    len(late),
                    self.bus,
                    timeout_s,
                )
                return False
            pending = []
            if late and not any(not e[0].done() for e in late):
                await asyncio.sleep(min(0.5, max(0.0, deadline - loop.time())))  # no responders: let a leader come
            for fut, subject, payload, msg_id in late:
                fut.cancel()
                again = await self._js.publish_async(subject, payload, headers={"Nats-Msg-Id": msg_id})
                pending.append((again, subject, payload, msg_id))
            if pending:
                log.info("sent %d unacknowledged publication(s) to %s again", len(pending), self.bus)
        return True

    async def flush(self) -> bool:
        """True once JetStream has stored everything sent so far; False (with a warning) if it
        refused or did not acknowledge some of it within the flush time-out."""
        before = self.refused
        return await self.stored(self._flush_timeout_s) and self.refused == before

    async def _consumers(self) -> list[Any]:
        infos, offset = [], 0
        while True:
            page = await self._js.consumers_info(STREAM, offset=offset)
            infos += page
            if len(page) < 256:
                return infos
            offset += len(page)

    async def wait_for_subscribers(self, topics: Iterable[str], timeout_s: float | None = None) -> list[str]:
        """Topics for which no durable consumer exists yet, after waiting up to ``timeout_s``
        (None: forever). A consumer that exists has the stream hold its messages, so that is
        the honest "subscriber ready" of a broker that stores."""
        pending = list(topics)
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None or math.isinf(timeout_s) else loop.time() + timeout_s
        while True:
            infos = await self._consumers()
            pending = [t for t in pending if not any(_consumer_covers(c, t) for c in infos)]
            if not pending:
                return []
            if deadline is not None and loop.time() >= deadline:
                return pending
            await asyncio.sleep(0.1 if deadline is None else max(0.0, min(0.1, deadline - loop.time())))

    async def _watch_consumers(self) -> None:
        while True:
            try:
                infos = await self._consumers()
            except (nats.errors.Error, TimeoutError):
                infos = None
            if infos is not None:
                names = {c.name: c for c in infos}
                if self._consumers_seen is not None:
                    for name in names.keys() - self._consumers_seen:
                        self._arrived_names.update(_prefixes_of(names[name]) or [""])
                self._consumers_seen = set(names) | (self._consumers_seen or set())
            await asyncio.sleep(0.5)

    def new_subscriptions(self) -> list[str]:
        """Prefixes of durable consumers created since the last call. A consumer that resumes is
        not news: the stream kept its messages, announcements included."""
        if self._watch is None:
            self._watch = asyncio.get_running_loop().create_task(self._watch_consumers())
        arrived, self._arrived_names = self._arrived_names, set()
        return sorted(arrived)


async def _publications_stored(timeout_s: float = 30.0) -> bool:
    """Wait until every live publisher of this process has its publications acknowledged."""
    ok = True
    for pub in list(_publishers):
        ok = await pub.stored(timeout_s) and ok
    return ok


# -- subscriber --------------------------------------------------------------------------------


class NatsSubscriber:
    """Decoded messages under some topic prefixes, from a durable JetStream consumer (``consumer``
    named) or a live core subscription; ``stats`` as on ZeroMQ."""

    def __new__(cls, bus: str, prefixes: Iterable[str] = ("",), **kwargs: Any) -> Any:
        """A worker of the configured group (:mod:`bus.shards`) when this process is one and no
        consumer is named; this class otherwise."""
        from bus import shards

        if cls is NatsSubscriber and kwargs.get("consumer") is None and shards.configured() is not None:
            kwargs.pop("consumer", None)
            return shards.default_subscriber(bus, prefixes, **kwargs)  # not a NatsSubscriber: no __init__
        return super().__new__(cls)

    def __init__(
        self,
        bus: str,
        prefixes: Iterable[str] = ("",),
        *,
        hwm: int = 0,
        security: BusSecurity | None = None,
        consumer: str | None = None,
        acks: str = "next",
    ) -> None:
        if acks not in ("next", "explicit", "flushed"):
            raise ValueError(f"acks must be 'next', 'explicit' or 'flushed', not {acks!r}")
        self.bus = bus
        self.security = security or current()
        self.servers = _check_security(bus, self.security)
        self.prefixes = list(prefixes)
        self.consumer = consumer if consumer is not None else _default_consumer
        self.acks = acks
        self.subject = filter_for(self.prefixes)
        self.stats = BusStats()
        self.gaps = GapTracker(self.stats)
        self._logged: set[str] = set()
        self._nc: Any = None
        self._sub: Any = None
        self._buffer: deque[Any] = deque()
        self._fetcher: Fetcher | None = None
        self._delivered: dict[int, Any] = {}  # id(Message) -> its NATS message, explicit acks only
        self._handled: list[Any] = []
        self._last: Any = None
        self.endpoints = None

    async def __aenter__(self) -> NatsSubscriber:
        self._nc = await connect(self.bus, self.servers)
        try:
            if self.consumer:
                js = self._nc.jetstream()
                await ensure_stream(js, self.bus, _replicas(self._nc))
                self._sub = await self._durable(js)
            else:
                self._sub = await self._nc.subscribe(self.subject)
        except BaseException:
            await self._nc.close()
            raise
        return self

    async def _durable(self, js: Any) -> Any:
        assert self.consumer is not None
        sub, _ = await open_durable(
            js,
            self.consumer,
            self.subject,
            _DESCRIPTION + json.dumps(self.prefixes),
            max_ack_pending=20_000,
            rename_hint=f"give --consumer another name on {self.bus}",
        )
        return sub

    async def __aexit__(self, *_: Any) -> None:
        try:
            if self._nc is not None and self.consumer and self.acks == "next" and self._last is not None:
                self._handled.append(self._last)  # the stage is leaving: the last message was handled
                self._last = None
            await self._ack_handled(force=True)
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if self._nc is not None:
            nc, self._nc = self._nc, None
            await nc.close()

    def close(self) -> None:
        if self._nc is not None:
            asyncio.get_running_loop().create_task(self.aclose())

    def done(self, msg: Message) -> None:
        """Say that ``msg`` has been handled (``acks="explicit"`` or ``"flushed"``); it is acknowledged once this
        process's publications so far are stored. A no-op for other subscribers."""
        nmsg = self._delivered.pop(id(msg), None)
        if nmsg is not None:
            self._handled.append(nmsg)

    async def _ack_handled(self, force: bool = False) -> None:
        if not self._handled or not (force or len(self._handled) >= ACK_EVERY or not self._buffer):
            return
        if not await _publications_stored():
            return  # their results may be lost: leave them to be delivered again
        handled, self._handled = self._handled, []
        for m in handled:
            try:
                await m.ack()
            except nats.errors.Error as exc:  # delivered again after ack_wait; the store's keys absorb it
                log.warning("could not acknowledge a message on %s: %s", self.bus, exc)

    def _accept(self, nmsg: Any) -> Message | None:
        return accept_delivery(self, nmsg)

    async def _fill(self, timeout_s: float | None) -> None:
        """Fetch the next messages into the buffer; TimeoutError if none came in time."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        while not self._buffer:
            remaining = 5.0 if deadline is None else deadline - loop.time()
            if remaining <= 0.001:
                raise TimeoutError
            try:
                if self.consumer:
                    if self._fetcher is None:
                        self._fetcher = Fetcher(
                            self._sub, FETCH_BATCH_EXPLICIT if self.acks == "explicit" else FETCH_BATCH
                        )
                    self._buffer.extend(await self._fetcher.next(remaining))
                else:
                    self._buffer.append(await self._sub.next_msg(timeout=min(remaining, 5.0)))
            except (nats.errors.TimeoutError, TimeoutError):
                continue

    async def recv(self, timeout_s: float | None = None) -> Message:
        """The next valid message; raises TimeoutError if none arrives in time."""
        assert self._nc is not None, "use 'async with Subscriber(...)'"
        while True:
            if self._last is not None:  # asked for the next one: the previous one was handled
                self._handled.append(self._last)
                self._last = None
            await self._ack_handled()
            if not self._buffer:
                await self._ack_handled(force=True)  # idle: nothing handled waits for its ack
                await self._fill(timeout_s)
            nmsg = self._buffer.popleft()
            msg = self._accept(nmsg)
            if not self.consumer:
                if msg is not None:
                    return msg
                continue
            if msg is None or self.acks == "next":
                self._last = nmsg  # dropped ones count as handled at once, at the next look
                if msg is not None:
                    return msg
                continue
            self._delivered[id(msg)] = nmsg
            return msg

    async def __aiter__(self):
        while True:
            yield await self.recv()

    async def until(self, stop: asyncio.Event, poll_s: float = 0.2):
        while not stop.is_set():
            try:
                yield await self.recv(poll_s)
            except TimeoutError:
                pass


async def open_durable(
    js: Any, name: str, subject: str, description: str, *, max_ack_pending: int, rename_hint: str
) -> tuple[Any, int | None]:
    """The durable pull consumer ``name`` filtering ``subject``, created if missing, bound and
    ready to fetch; with the stream sequence it resumed at (None: nothing to resume).

    A consumer whose last user left messages unacknowledged (delivered past its ack floor: the
    process died holding them) is made again at the first of them, so they come at once and in
    order, before anything newer, instead of after the ack wait and behind newer messages (a
    store's window ledger would count them lost meanwhile). A new consumer starts at the next
    published message and keeps that sequence in its config: the floor to resume from if its
    user dies before acknowledging anything (its ack floor then reads 0). One consumer, one live
    user: a worker group's leases (:mod:`bus.shards`) or one stage per ``--consumer`` name."""
    try:
        info = await js.consumer_info(STREAM, name)
    except nats.js.errors.NotFoundError:
        info = None
    if info is not None and info.config.filter_subject != subject:
        raise NatsUnreachable(
            f"consumer {name!r} filters {info.config.filter_subject}, this stage needs {subject}: "
            f"{rename_hint}, or delete it (nats consumer rm {STREAM} {name})"
        )
    last = (await js.stream_info(STREAM)).state.last_seq
    config = api.ConsumerConfig(
        durable_name=name,
        description=description,
        deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=last + 1,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT_S,
        max_ack_pending=max_ack_pending,
        filter_subject=subject,
    )
    resumed = None
    if info is not None and info.delivered.stream_seq > info.ack_floor.stream_seq:
        await js.delete_consumer(STREAM, name)
        resumed = config.opt_start_seq = max(info.ack_floor.stream_seq + 1, info.config.opt_start_seq or 1)
        info = None
        log.info("consumer %s resumes at stream sequence %d (its last user left work unacknowledged)", name, resumed)
    if info is None:
        try:
            await js.add_consumer(STREAM, config)
        except nats.js.errors.BadRequestError:  # made by another worker meanwhile: it is the same one
            pass
    return await js.pull_subscribe_bind(durable=name, stream=STREAM), resumed


class Fetcher:
    """How a pull consumer asks for its next messages, without polling an idle server and without
    a message waiting for a batch to fill, whatever the server's version does with a batch
    request that has an expiry.

    Idle, it asks for one message with a long poll (:data:`IDLE_POLL_S`): the request is
    complete with the first message published. While messages flow it asks for batches that
    linger at most :data:`FETCH_WAIT_S` (the server answers at once with what it holds). A batch
    request that finds nothing in that time makes it idle again. bench/bench_fetch.py measures it
    against the policies it replaced (a 25 ms poll: 190 requests and 8 times the server CPU of
    an idle consumer; a 5 s batch linger: the same figures as this on nats-server 2.9)."""

    def __init__(self, sub: Any, batch: int) -> None:
        self.sub = sub
        self.batch = batch
        self.flowing = False

    async def next(self, limit_s: float = IDLE_POLL_S) -> list[Any]:
        """The next messages, waiting at most about ``limit_s``; TimeoutError if none came."""
        n, wait = (self.batch, FETCH_WAIT_S) if self.flowing else (1, IDLE_POLL_S)
        try:
            msgs = await self.sub.fetch(n, timeout=max(0.01, min(limit_s, wait)))
        except (nats.errors.TimeoutError, TimeoutError):
            self.flowing = False
            raise TimeoutError from None
        self.flowing = bool(msgs)
        return msgs


def accept_delivery(sub: Any, nmsg: Any) -> Message | None:
    """A delivered NATS message as a bus message for ``sub`` (a plain or sharded subscriber: its
    ``stats``, ``_logged``, ``prefixes``, ``gaps``), or None: malformed (counted, logged once per
    kind) or outside its prefixes. Sequence gaps are observed here, once per accepted message."""
    try:
        msg = decode_nats(nmsg.subject, nmsg.data)
    except MalformedMessage as exc:
        sub.stats.malformed[exc.reason] += 1
        if exc.reason not in sub._logged:
            sub._logged.add(exc.reason)
            log.warning("dropping malformed bus message (%s); further ones of this kind are only counted", exc)
        return None
    if not _covers(sub.prefixes, msg.topic):
        return None
    sub.gaps.observe(msg.topic, msg.seq, msg.incarnation)
    return msg
