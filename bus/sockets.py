"""asyncio publisher and subscriber for the hub.

Theory of operation. A :class:`Publisher` owns an XPUB socket connected to the hub's
XSUB side, so subscriptions made anywhere on the bus arrive at it as messages
(``\\x01prefix`` / ``\\x00prefix``). That gives two handshakes without any sleep:

- *readiness*: :meth:`Publisher.wait_for_subscribers` returns once every topic the
  caller names is covered by some live subscription prefix, so a replay started
  before its subscribers loses nothing;
- *flush*: :meth:`Publisher.flush` publishes a marker on a private topic and waits
  until its own SUB socket receives it back from the hub. The hub forwards in order,
  so every earlier message has then left the publisher, and closing with linger 0
  discards nothing.

A :class:`Subscriber` decodes, counts gaps from sequence numbers and counts (and logs
once per kind) malformed messages, which it drops without stopping.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import numpy as np
import zmq
import zmq.asyncio

from bus.endpoints import hub_endpoints, is_nats
from bus.hub import HWM
from bus.message import MalformedMessage, Message, decode, encode
from bus.security import BusSecurity, check_address, current, secure_client
from bus.sequence import BusStats, GapTracker, SequenceCounter, new_incarnation
from bus.topics import RAW, SYNC, topic_for

log = logging.getLogger(__name__)
_SYNC_PREFIX = SYNC.encode() + b"/"
_POLL_S = 0.1  # longest wait between looks at a publisher's subscriptions
_STOP_POLL_S = 0.2  # longest an idle Subscriber.until takes to notice its stop event
_FAIR_EVERY = 256  # messages a subscriber takes without waiting before it lets other tasks run
_MARKER_EVERY_S = 0.25  # a flush re-sends its marker this often until one comes back


def _context() -> zmq.asyncio.Context:
    return zmq.asyncio.Context.instance()


class Publisher:
    """Numbers and sends messages; ``async with`` it, then :meth:`publish`.

    A ``nats://`` address makes a :class:`bus.nats_backend.NatsPublisher` instead (chosen in
    ``__new__``, so every call site, ``isinstance`` and type hint stay as they are)."""

    def __new__(cls, bus: str, *args: Any, **kwargs: Any) -> Publisher:
        if cls is Publisher and is_nats(bus):
            from bus.nats_backend import NatsPublisher

            return super().__new__(NatsPublisher)
        return super().__new__(cls)

    def __init__(self, bus: str, *, flush_timeout_s: float = 30.0, security: BusSecurity | None = None) -> None:
        self.endpoints = hub_endpoints(bus)
        self.security = security or current()  # CURVE keys (bus.security); the process's unless given
        check_address(bus, self.security)
        self._ctx = _context()
        self._sock: zmq.asyncio.Socket | None = None
        self._echo: zmq.asyncio.Socket | None = None
        self._seq = SequenceCounter()
        #: stamped on every message this publisher sends: a restarted process gets a new one
        self.incarnation = new_incarnation()
        self._subs: Counter[bytes] = Counter()
        self._arrived: set[bytes] = set()
        self._now: zmq.Socket | None = None
        self._streak = 0
        self._sync_topic = f"{SYNC}/{uuid.uuid4().hex}/"
        self._flush_timeout_s = flush_timeout_s
        self.sent = 0

    async def __aenter__(self) -> Publisher:
        sock = self._ctx.socket(zmq.XPUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, HWM)
        sock.setsockopt(zmq.XPUB_NODROP, 1)  # block, never drop, when the hub pushes back
        secure_client(sock, self.security)
        sock.connect(self.endpoints.publishers)
        echo = self._ctx.socket(zmq.SUB)
        echo.setsockopt(zmq.LINGER, 0)
        secure_client(echo, self.security)
        echo.connect(self.endpoints.subscribers)
        echo.setsockopt(zmq.SUBSCRIBE, self._sync_topic.encode())
        self._sock, self._echo = sock, echo
        self._now = zmq.Socket.shadow(sock.underlying)  # sync view: sends that need no waiting skip the loop
        return self

    async def __aexit__(self, exc_type: Any, *_: Any) -> None:
        try:
            if exc_type is None:
                await self.flush()
        finally:
            self.close()

    def close(self) -> None:
        for s in (self._sock, self._echo):
            if s is not None:
                s.close(linger=0)
        self._sock = self._echo = self._now = None

    def _take_subscriptions(self) -> None:
        """Read the (un)subscriptions queued on the XPUB socket, without waiting.

        They are read here rather than by a task blocked in ``recv``: sends go through the
        sync shadow socket, and ZeroMQ's edge-triggered descriptor would not wake such a
        task for subscriptions that arrive while a send runs.
        """
        assert self._now is not None
        while True:
            try:
                frame = self._now.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if frame[:1] == b"\x01":
                self._subs[frame[1:]] += 1
                self._arrived.add(frame[1:])
            elif frame[:1] == b"\x00" and self._subs[frame[1:]] > 0:
                self._subs[frame[1:]] -= 1

    def new_subscriptions(self) -> list[str]:
        """Subscription prefixes that arrived since the last call: how a replay learns that a
        stage (re)started and must hear its devices again."""
        self._take_subscriptions()
        arrived, self._arrived = self._arrived, set()
        return sorted(p.decode(errors="replace") for p in arrived)

    def _covered(self, topic: str) -> bool:
        t = topic.encode()
        return any(n > 0 and t.startswith(p) for p, n in self._subs.items())

    async def wait_for_subscribers(self, topics: Iterable[str], timeout_s: float | None = None) -> list[str]:
        """Wait until each topic has a subscriber; returns the topics still uncovered at
        the timeout (empty when all are covered). ``timeout_s=None`` waits forever."""
        pending = list(topics)
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None or math.isinf(timeout_s) else loop.time() + timeout_s
        assert self._sock is not None, "use 'async with Publisher(...)'"
        while True:
            self._take_subscriptions()
            pending = [t for t in pending if not self._covered(t)]
            if not pending:
                return []
            remaining = _POLL_S if deadline is None else min(_POLL_S, deadline - loop.time())
            if remaining <= 0:
                return pending
            # a bounded wait: even an edge the descriptor missed is seen within _POLL_S
            await self._sock.poll(remaining * 1000)  # POLLIN, its default

    async def send(self, msg: Message) -> None:
        """Send a fully formed message (its ``seq`` as given)."""
        assert self._sock is not None and self._now is not None, "use 'async with Publisher(...)'"
        frames = encode(msg, self.incarnation if not msg.incarnation else None)
        self._streak += 1
        if self._streak >= _FAIR_EVERY:  # a long run of sends that never waited: let other tasks in
            self._streak = 0
            await asyncio.sleep(0)
        try:
            self._now.send_multipart(frames, zmq.NOBLOCK, copy=False)
        except zmq.Again:  # the hub pushes back: wait on the loop
            self._streak = 0
            await self._sock.send_multipart(frames, copy=False)
        self.sent += 1

    async def publish(
        self,
        kind: str,
        device: str,
        modality: str | None = None,
        *,
        t0_s: float,
        fs_hz: float,
        samples: np.ndarray | None = None,
        arrays: Mapping[str, np.ndarray] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> Message:
        """Number a message on its topic and send it; returns what was sent."""
        topic = topic_for(kind, device, modality if kind == RAW else None)
        msg = Message(
            kind=kind,
            device=device,
            modality=modality or kind,
            seq=self._seq.next(topic),
            t0_s=float(t0_s),
            fs_hz=float(fs_hz),
            samples=np.zeros(0) if samples is None else samples,
            arrays=arrays or {},
            meta=meta or {},
        )
        await self.send(msg)
        return msg

    def next_seq(self, topic: str) -> int:
        """Take the next sequence number of a topic (for callers that build messages)."""
        return self._seq.next(topic)

    async def flush(self) -> bool:
        """Return once everything sent so far has passed through the hub (True), or after the
        flush time-out with a warning (False).

        The marker is sent again every 0.25 s until one of this flush's markers comes back:
        after a hub restart the publisher's record of subscriptions still holds the old hub's
        echo subscription, so a first marker can go out before the new hub has asked for it
        and be dropped (which once cost every publisher a 30 s wait and a false warning)."""
        assert self._sock is not None and self._echo is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._flush_timeout_s
        # Our own echo subscription reaches us through the hub: then the path back exists.
        uncovered = await self.wait_for_subscribers([self._sync_topic], self._flush_timeout_s)
        if not uncovered:
            sent: set[bytes] = set()
            while (remaining := deadline - loop.time()) > 0:
                marker = uuid.uuid4().hex.encode()
                sent.add(marker)
                await self._sock.send_multipart([self._sync_topic.encode(), marker])
                until = loop.time() + min(_MARKER_EVERY_S, remaining)
                try:
                    while True:  # older flushes' markers are skipped
                        frames = await asyncio.wait_for(self._echo.recv_multipart(), max(0.0, until - loop.time()))
                        if frames[-1] in sent:
                            return True
                except TimeoutError:
                    continue
        log.warning(
            "bus flush timed out after %.0f s: no marker came back through the hub at %s",
            self._flush_timeout_s,
            self.endpoints.publishers,
        )
        return False


class Subscriber:
    """Decoded messages under some topic prefixes; ``stats`` says what arrived and what was lost.

    A ``nats://`` address makes a :class:`bus.nats_backend.NatsSubscriber` (a durable JetStream
    consumer) instead. ``acks`` and :meth:`done` only matter there: ZeroMQ acknowledges nothing."""

    def __new__(cls, bus: str, *args: Any, **kwargs: Any) -> Any:
        if cls is Subscriber and is_nats(bus):
            from bus.nats_backend import NatsSubscriber

            return NatsSubscriber(bus, *args, **kwargs)  # not a Subscriber: __init__ below is not called
        return super().__new__(cls)

    def __init__(
        self,
        bus: str,
        prefixes: Iterable[str] = ("",),
        *,
        hwm: int = HWM,
        security: BusSecurity | None = None,
        acks: str = "next",
    ) -> None:
        self.endpoints = hub_endpoints(bus)
        self.security = security or current()
        check_address(bus, self.security)
        self.prefixes = list(prefixes)
        self._ctx = _context()
        self._sock: zmq.asyncio.Socket | None = None
        self._hwm = hwm
        self.stats = BusStats()
        self.gaps = GapTracker(self.stats)
        self._logged: set[str] = set()
        self._streak = 0

    async def __aenter__(self) -> Subscriber:
        sock = self._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, self._hwm)
        secure_client(sock, self.security)
        sock.connect(self.endpoints.subscribers)
        for p in self.prefixes:
            sock.setsockopt(zmq.SUBSCRIBE, p.encode())
        self._sock = sock
        self._now: zmq.Socket = zmq.Socket.shadow(sock.underlying)  # sync view: take what is queued without the loop
        return self

    async def __aexit__(self, *_: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def done(self, msg: Message) -> None:
        """A handled message (``acks="explicit"`` on NATS); nothing to acknowledge on ZeroMQ."""

    def _accept(self, frames: list[Any]) -> Message | None:
        if frames[0].startswith(_SYNC_PREFIX):
            return None  # someone's flush marker under a broad subscription
        try:
            msg = decode(frames)
        except MalformedMessage as exc:
            self.stats.malformed[exc.reason] += 1
            if exc.reason not in self._logged:
                self._logged.add(exc.reason)
                log.warning("dropping malformed bus message (%s); further ones of this kind are only counted", exc)
            return None
        self.gaps.observe(msg.topic, msg.seq, msg.incarnation)
        return msg

    async def recv(self, timeout_s: float | None = None) -> Message:
        """The next valid message; raises TimeoutError if none arrives in time."""
        assert self._sock is not None, "use 'async with Subscriber(...)'"
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        while True:
            self._streak += 1
            if self._streak >= _FAIR_EVERY:  # a long run of queued messages: let other tasks in
                self._streak = 0
                await asyncio.sleep(0)
            try:
                frames = self._now.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                self._streak = 0
                remaining = None if deadline is None else max(0.0, deadline - loop.time())
                frames = await asyncio.wait_for(self._sock.recv_multipart(), remaining)
            msg = self._accept(frames)
            if msg is not None:
                return msg

    async def __aiter__(self) -> AsyncIterator[Message]:
        while True:
            yield await self.recv()

    async def until(self, stop: asyncio.Event, poll_s: float = _STOP_POLL_S) -> AsyncIterator[Message]:
        """Messages until ``stop`` is set. A bounded receive, not a task per message racing
        ``stop``: no message is abandoned between being received and being handled, and an
        idle subscriber sees ``stop`` within ``poll_s``."""
        while not stop.is_set():
            try:
                yield await self.recv(poll_s)
            except TimeoutError:
                pass
