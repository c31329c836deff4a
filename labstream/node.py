"""The LSL node: bus in, LSL outlets out (the thin async shell around :mod:`labstream.streams`)."""

from __future__ import annotations

import asyncio
import logging

from bus import AFFECT, RAW, STATUS, Subscriber
from common.aio import OnReady
from labstream.outlets import Outlets
from labstream.streams import chunks_of

log = logging.getLogger(__name__)

PREFIXES = (f"{RAW}/", f"{AFFECT}/", f"{STATUS}/")


class LslNode:
    """``await node.run(stop)``: every raw sample and affect window of every device goes to
    its outlet until ``stop`` is set; then what already reached the socket is drained
    (until ``drain_s`` passes without a message). ``messages`` counts bus messages taken."""

    def __init__(self, bus: str, outlets: Outlets, *, drain_s: float = 0.5) -> None:
        self.bus = bus
        self.outlets = outlets
        self.drain_s = drain_s
        self.messages = 0
        self.ended: list[str] = []
        self.subscriber: Subscriber | None = None

    def _handle(self, msg) -> None:
        self.messages += 1
        if msg.kind == STATUS and msg.meta.get("event") == "end":
            self.ended.append(msg.device)
            log.info("lsl: end of device %s", msg.device)
        for chunk in chunks_of(msg):
            self.outlets.push(chunk)

    async def run(self, stop: asyncio.Event, on_ready: OnReady | None = None) -> None:
        async with Subscriber(self.bus, PREFIXES) as sub:
            self.subscriber = sub
            if on_ready is not None:
                on_ready(self.bus)
            async for msg in sub.until(stop):
                self._handle(msg)
            while True:
                try:
                    msg = await sub.recv(self.drain_s)
                except TimeoutError:
                    break
                self._handle(msg)
