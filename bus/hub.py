"""The hub: an XSUB/XPUB forwarder every stage connects to.

Publishers connect to its XSUB side, subscribers to its XPUB side (see
:mod:`bus.endpoints`). Subscriptions travel upstream through it, which is what
lets a publisher wait for its subscribers instead of sleeping. ``XPUB_NODROP``
makes a slow subscriber push back on publishers rather than lose messages
silently; the high-water marks bound the memory that push-back may hold.
"""

from __future__ import annotations

import threading

import zmq

from bus.endpoints import hub_endpoints

HWM = 100_000  # messages per pipe before back-pressure


class Hub:
    """Runs ``zmq.proxy_steerable`` in a thread; ``stop()`` ends it promptly.

    Usable as a context manager in tests and in ``m3sense run``; ``m3sense hub`` runs
    it in the foreground.
    """

    def __init__(self, address: str, context: zmq.Context | None = None) -> None:
        self.address = address
        self.endpoints = hub_endpoints(address)
        self._ctx = context or zmq.Context.instance()
        self._control_addr = f"inproc://hub-control-{id(self)}"
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

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

    def start(self) -> "Hub":
        self._thread = threading.Thread(target=self._serve, name="m3sense-hub", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise OSError(f"hub cannot bind {self.address}: {self._error}") from self._error
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        ctl = self._ctx.socket(zmq.PAIR)
        ctl.setsockopt(zmq.LINGER, 0)
        ctl.connect(self._control_addr)
        ctl.send(b"TERMINATE")
        self._thread.join(timeout=5)
        ctl.close(linger=0)
        self._thread = None

    def __enter__(self) -> "Hub":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
