"""The MQTT sink: live state for Home Assistant and anything else that speaks MQTT.

MQTT holds *current state*, not history: every record becomes part of a retained message
(topics and payloads in :mod:`storage.mqtt_topics`), published with QoS 1 by one
background task that owns the connection (aiomqtt). Why it is built this way:

- ``write`` never waits on the network: messages go into a bounded in-memory buffer
  (``max_pending`` messages). While the broker is away the buffer fills; past its bound the
  oldest data message is dropped and its records are counted in ``dropped`` (discovery and
  availability messages are never dropped: they are few and idempotent). So nothing is lost
  silently, and a store never blocks the bus because a broker is down.
- A message leaves the buffer only when the broker acknowledged it (PUBACK); one in flight
  when the connection breaks is sent again after the reconnect (at least once; every
  topic is a state, so a duplicate is harmless).
- Reconnects back off from ``retry_min_s`` to ``retry_max_s``. After every (re)connect the
  store says ``online``, then republishes the latest retained message of every topic it has
  published, so a broker that restarted without persistence has every state again.
- The store's availability topic is its MQTT Last Will (``offline``): a store that is
  killed shows offline; one that stops cleanly sets its devices and itself offline.
- A broker that refuses the login at start is a :class:`UserError` (bad input: exit 2);
  one that cannot be reached at start is not: the store buffers and retries.
- What is still buffered when the store stops and the broker stays away for ``close_timeout_s``
  is lost (memory, not disk) and counted in ``dropped``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections import deque
from collections.abc import Sequence

import aiomqtt
from aiomqtt.exceptions import MqttConnectError

from common.errors import UserError
from storage.mqtt_topics import OFFLINE, ONLINE, Layout, MessageBuilder, Outgoing
from storage.records import Record
from storage.sink import SinkCounters
from storage.target import MqttTarget

log = logging.getLogger(__name__)
#: aiomqtt's own log: it warns whenever more than 10 publishes await their PUBACK, which is how
#: this sink keeps the link busy (``inflight``), so only its errors are shown
_client_log = logging.getLogger(__name__ + ".client")
_client_log.setLevel(logging.ERROR)

QOS = 1
_AUTH_CODES = {4, 5, 134, 135}  # CONNACK: bad user name or password, not authorised (3.1.1 and 5)


def _refused_login(exc: BaseException) -> bool:
    """A CONNACK that refuses the credentials (not a lost connection, whose code may also be 4)."""
    return isinstance(exc, MqttConnectError) and getattr(exc.rc, "value", exc.rc) in _AUTH_CODES


class MqttSink:
    """``async with MqttSink(target) as sink: await sink.write(records)``; see the module doc."""

    def __init__(
        self,
        target: MqttTarget,
        *,
        max_pending: int = 100_000,
        inflight: int = 50,
        retry_min_s: float = 0.5,
        retry_max_s: float = 30.0,
        connect_timeout_s: float = 10.0,
        close_timeout_s: float = 10.0,
        keepalive_s: int = 30,
    ) -> None:
        self.target = target
        self.layout = Layout(prefix=target.prefix, discovery=target.discovery)
        self.max_pending = max_pending
        self.inflight = inflight
        self.retry_min_s, self.retry_max_s = retry_min_s, retry_max_s
        self.connect_timeout_s = connect_timeout_s
        self.close_timeout_s = close_timeout_s
        self.keepalive_s = keepalive_s
        self.counters = SinkCounters()
        self.last_error: str | None = None
        self.connected = False
        self.connects = 0  # successful (re)connects, for tests and logs
        self._builder = MessageBuilder(self.layout)
        self._queue: deque[Outgoing] = deque()
        self._latest: dict[str, Outgoing] = {}  # acknowledged retained messages, by topic
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._first_attempt = asyncio.Event()
        self._refused: str | None = None
        self._closing = False
        self._task: asyncio.Task | None = None

    def __repr__(self) -> str:
        return f"MqttSink({self.target.address!r})"

    # --- the Sink port -----------------------------------------------------------------

    async def __aenter__(self) -> MqttSink:
        self._task = asyncio.create_task(self._run(), name="mqtt-sink")
        await self._first_attempt.wait()
        if self._refused is not None:
            await self._stop_task()
            raise UserError(self._refused)
        if not self.connected:
            log.warning(
                "MQTT broker %s not reachable (%s); buffering and retrying", self.target.address, self.last_error
            )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def write(self, records: Sequence[Record]) -> None:
        self._enqueue(self._builder.messages(records))

    async def flush(self) -> None:
        """Return once the buffer is empty, or at once while the broker is away (the buffer
        then holds what waits; ``pending`` says how much)."""
        while self._queue and self.connected and self._task is not None and not self._task.done():
            self._progress.clear()
            await self._progress.wait()

    async def close(self) -> None:
        if self._task is None:
            return
        self._enqueue(self._builder.offline())
        self._closing = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), self.close_timeout_s)
        except TimeoutError:
            pass
        await self._stop_task()
        lost = sum(m.records for m in self._queue)
        if lost:
            self.counters.dropped += lost
            self.last_error = f"{lost} records still buffered when the store stopped: {self.last_error}"
        self._queue.clear()
        self._update_pending()

    # --- the buffer --------------------------------------------------------------------

    def _update_pending(self) -> None:
        self.counters.pending = sum(m.records for m in self._queue)
        self.counters.changed()

    def _enqueue(self, messages: list[Outgoing]) -> None:
        for m in messages:
            self._queue.append(m)
        excess = sum(not m.control for m in self._queue) - self.max_pending
        if excess > 0:  # drop the oldest data messages, never silently
            kept: deque[Outgoing] = deque()
            for i, m in enumerate(self._queue):  # the head (up to ``inflight``) may be on its way: kept
                if excess > 0 and not m.control and i >= self.inflight:
                    excess -= 1
                    self.counters.dropped += m.records
                else:
                    kept.append(m)
            self._queue = kept
            log.warning(
                "MQTT buffer full (%d messages): %d records dropped so far", self.max_pending, self.counters.dropped
            )
        self._update_pending()
        self._wake.set()

    # --- the connection ------------------------------------------------------------------

    def _client(self) -> aiomqtt.Client:
        t = self.target
        tls = ssl.create_default_context(cafile=str(t.ca_file) if t.ca_file else None) if t.tls else None
        return aiomqtt.Client(
            t.host,
            t.port,
            username=t.username,
            password=t.password,
            identifier=t.client_id,
            will=aiomqtt.Will(self.layout.store_availability, OFFLINE, qos=QOS, retain=True),
            tls_context=tls,
            keepalive=self.keepalive_s,
            logger=_client_log,
            timeout=self.connect_timeout_s,
            max_inflight_messages=self.inflight,
            # small messages, each awaited: without this, Nagle and delayed ACKs cost ~40 ms a batch
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )

    async def _stop_task(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        backoff = self.retry_min_s
        while True:
            try:
                async with self._client() as client:
                    self.connected = True
                    self.connects += 1
                    self._first_attempt.set()
                    backoff = self.retry_min_s
                    await self._session(client)
                    return  # closing, and everything went out
            except aiomqtt.MqttError as exc:
                was_connected, self.connected = self.connected, False
                self.last_error = f"MQTT broker {self.target.address}: {exc}"
                self.counters.failures += 1
                self.counters.changed()
                self._progress.set()
                if _refused_login(exc):
                    user = self.target.username or "(none)"
                    self._refused = (
                        f"MQTT broker {self.target.address} refused the login of user {user}: {exc} "
                        "(check user= or $MQTT_USERNAME, and $MQTT_PASSWORD or --mqtt-password-file)"
                    )
                    if not self._first_attempt.is_set():
                        self._first_attempt.set()
                        return
                    log.error("%s", self._refused)
                self._first_attempt.set()
                if was_connected:
                    log.warning("%s; reconnecting", self.last_error)
                if self._closing and not self._queue:
                    return
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.retry_max_s)

    async def _publish(self, client: aiomqtt.Client, messages: Sequence[Outgoing]) -> None:
        """Publish and await every PUBACK; a broken connection fails it at once, not on a time-out."""
        sends = asyncio.gather(*(client.publish(m.topic, m.payload, qos=QOS, retain=m.retain) for m in messages))
        lost = getattr(client, "_disconnected", None)  # aiomqtt's own future (a private name, used if present)
        if isinstance(lost, asyncio.Future):
            done, _ = await asyncio.wait([sends, lost], return_when=asyncio.FIRST_COMPLETED)
            if sends not in done:
                sends.cancel()
                await asyncio.gather(sends, return_exceptions=True)
                exc = lost.exception() if not lost.cancelled() else None
                raise aiomqtt.MqttError(f"connection lost ({exc})" if exc else "connection lost")
        await sends

    async def _idle(self, client: aiomqtt.Client) -> None:
        """Wait for something to send; a connection lost meanwhile raises at once, so that
        ``connected`` is true only while it is (and flush does not wait on a dead one)."""
        lost = getattr(client, "_disconnected", None)  # aiomqtt's own future (a private name, used if present)
        if not isinstance(lost, asyncio.Future):
            await self._wake.wait()
            return
        wake = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait([wake, lost], return_when=asyncio.FIRST_COMPLETED)
        finally:
            wake.cancel()
        if lost.done():
            exc = lost.exception() if not lost.cancelled() else None
            raise aiomqtt.MqttError(f"connection lost ({exc})" if exc else "connection lost")

    async def _session(self, client: aiomqtt.Client) -> None:
        """One connection: say online, restore every retained state, then drain the buffer."""
        await client.publish(self.layout.store_availability, ONLINE, qos=QOS, retain=True)
        if self._latest:
            await self._publish(client, [m for m in self._latest.values()])
        while True:
            if not self._queue:
                self._progress.set()
                if self._closing:
                    await client.publish(self.layout.store_availability, OFFLINE, qos=QOS, retain=True)
                    return
                self._wake.clear()
                await self._idle(client)
                continue
            batch = [self._queue[i] for i in range(min(self.inflight, len(self._queue)))]
            await self._publish(client, batch)
            for m in batch:  # the head is never dropped (see _enqueue), so it is still this batch
                self._queue.popleft()
                if m.retain:
                    self._latest[m.topic] = m
                self.counters.written += m.records
                self.counters.affect_written += m.affect
            self._update_pending()
            self._progress.set()
