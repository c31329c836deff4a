"""The hub: an XSUB/XPUB forwarder every stage connects to.

Publishers connect to its XSUB side, subscribers to its XPUB side (see
:mod:`bus.endpoints`). Subscriptions travel upstream through it, which is what
lets a publisher wait for its subscribers instead of sleeping. ``XPUB_NODROP``
makes a slow subscriber push back on publishers rather than lose messages
silently; the high-water marks bound the memory that push-back may hold.

With keys (:mod:`bus.security`) both sides are CURVE servers behind a ZAP allow-list, on a
context of the hub's own: ZAP is per context, and one context holds one ZAP handler.
"""

from __future__ import annotations

import struct
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import zmq

if TYPE_CHECKING:
    from zmq.auth.thread import ThreadAuthenticator

from bus.endpoints import hub_endpoints
from bus.security import (
    AllowList,
    BusSecurity,
    check_address,
    current,
    secure_server,
    start_authenticator,
    watch_handshakes,
)

HWM = 100_000  # messages per pipe before back-pressure
_STATS_WAIT_MS = 1000  # longest stop() waits for the proxy's counts before it stops it anyway


@dataclass(frozen=True, slots=True)
class Forwarded:
    """What libzmq's proxy counted from publishers to the subscriber side: frames (one bus
    message is several: topic, header, samples, ...) and their bytes. libzmq counts frames,
    not messages, so frames is what is said; a frame goes out once however many subscribers
    take it."""

    frames: int
    bytes: int
    uptime_s: float


class Hub:
    """Runs ``zmq.proxy_steerable`` in a thread; ``stop()`` ends it promptly.

    Usable as a context manager in tests and in ``m3sense run``; ``m3sense hub`` runs
    it in the foreground.
    """

    def __init__(
        self, address: str, context: zmq.Context | None = None, *, security: BusSecurity | None = None
    ) -> None:
        self.address = address
        self.endpoints = hub_endpoints(address)
        self.security = security or current()
        check_address(address, self.security)
        self._given_ctx = context
        self._own_ctx = False
        self._ctx = context or zmq.Context.instance()
        self._auth: ThreadAuthenticator | None = None
        self.allow_list: AllowList | None = None  # with keys: the ZAP allow-list, whose ``refused`` counts unknown keys
        self.refused_plain = 0  # with keys: handshakes that failed for want of CURVE (clients without keys)
        self._control_addr = f"inproc://hub-control-{id(self)}"
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._started_at: float | None = None
        #: set by :meth:`stop`: what passed through, or None if the proxy did not say (it died)
        self.forwarded: Forwarded | None = None

    def _serve(self) -> None:
        xsub = self._ctx.socket(zmq.XSUB)
        xpub = self._ctx.socket(zmq.XPUB)
        control = self._ctx.socket(zmq.PAIR)
        try:
            for s in (xsub, xpub, control):
                s.setsockopt(zmq.LINGER, 0)
            xsub.setsockopt(zmq.RCVHWM, HWM)
            xpub.setsockopt(zmq.SNDHWM, HWM)
            xpub.setsockopt(zmq.XPUB_NODROP, 1)
            xpub.setsockopt(zmq.XPUB_VERBOSE, 1)
            for s in (xsub, xpub):
                secure_server(s, self.security)
                if self.security.curve:
                    watch_handshakes(s, self._count_plain, once=False)
            xsub.bind(self.endpoints.publishers)
            xpub.bind(self.endpoints.subscribers)
            control.bind(self._control_addr)
        except zmq.ZMQError as exc:
            self._error = exc
            for s in (xsub, xpub, control):
                s.close(linger=0)
            self._ready.set()
            return
        self._ready.set()
        try:
            zmq.proxy_steerable(xsub, xpub, None, control)
        except zmq.ContextTerminated:
            pass
        finally:
            for s in (xsub, xpub, control):
                s.close(linger=0)

    def start(self) -> Hub:
        if self.security.curve and self._auth is None:
            if self._given_ctx is None:
                self._ctx, self._own_ctx = zmq.Context(), True
            self._auth, self.allow_list = start_authenticator(self._ctx, self.security)  # before any bind
        self._thread = threading.Thread(target=self._serve, name="m3sense-hub", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._stop_auth()
            raise OSError(f"hub cannot bind {self.address}: {self._error}") from self._error
        self._started_at = time.monotonic()
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        ctl = self._ctx.socket(zmq.PAIR)
        ctl.setsockopt(zmq.LINGER, 0)
        ctl.connect(self._control_addr)
        self.forwarded = self._statistics(ctl)
        ctl.send(b"TERMINATE")
        self._thread.join(timeout=5)
        ctl.close(linger=0)
        self._thread = None
        self._stop_auth()

    def _statistics(self, ctl: zmq.Socket) -> Forwarded | None:
        """Ask the proxy for its counts (libzmq's STATISTICS: eight uint64 in host order, the
        publisher side's frames and bytes in and out, then the subscriber side's); None if no
        answer comes, e.g. from a proxy that already ended."""
        uptime_s = time.monotonic() - self._started_at if self._started_at is not None else 0.0
        try:
            ctl.send(b"STATISTICS", zmq.NOBLOCK)
            if not ctl.poll(_STATS_WAIT_MS):
                return None
            frames = ctl.recv_multipart()
        except zmq.ZMQError:
            return None
        if len(frames) != 8 or any(len(f) != 8 for f in frames):
            return None
        counts = [struct.unpack("=Q", f)[0] for f in frames]
        return Forwarded(frames=counts[0], bytes=counts[1], uptime_s=uptime_s)

    def _count_plain(self, event: int, endpoint: str) -> None:
        if event != zmq.EVENT_HANDSHAKE_FAILED_AUTH:  # those the allow-list counts
            self.refused_plain += 1

    def _stop_auth(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._own_ctx:
            self._ctx.term()
            self._own_ctx = False

    def __enter__(self) -> Hub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
