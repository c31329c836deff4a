"""The preprocess node: a thin asyncio shell around :class:`Preprocessor`.

Subscribes ``raw/``, ``label/`` and ``status/``, publishes each finished window on
``window/<device>/``, and after a device's last window its end marker (meta
``{"event": "end"}``) on the same topic. Devices are expired on the event loop's clock. The
``stop`` event (SIGINT, SIGTERM through :func:`common.aio.run_until_signal`), or cancellation,
flushes every device's pending windows onto the bus before the sockets close.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Callable

from bus import LABEL, RAW, STATUS, WINDOW, Publisher, Subscriber, topic_for
from common.aio import STOP_POLL_S, OnReady
from preprocess.preprocessor import Preprocessor
from preprocess.window import Window
from preprocess.windower import WindowConfig

log = logging.getLogger(__name__)

SUBSCRIPTIONS = (f"{RAW}/", f"{LABEL}/", f"{STATUS}/")
#: how long a device's end marker waits for a subscriber (an inference node being restarted):
#: without it, everything downstream would wait for an end that was never delivered
END_WAIT_S = 60.0
#: the counters that are data the stage refused (served as m3sense_drops_total{kind})
DROPS = (
    "bad_rate",
    "oversized",
    "malformed",
    "bad_labels",
    "bad_tags",
    "invalid_samples",
    "negative_eda",
    "dropped_samples",
)


async def _publish(pub: Publisher, pre: Preprocessor, windows: list[Window], end_wait_s: float = END_WAIT_S) -> None:
    """The windows, then the end markers of the devices that closed (a device's end always
    follows its last window: both go out in order on its one topic). Each says the hop of its
    grid, so a store can count the windows lost across a restart of this stage."""
    for window in windows:
        msg = window.to_message(seq=pub.next_seq(topic_for(WINDOW, window.device)))
        await pub.send(dataclasses.replace(msg, meta={**msg.meta, "hop_s": pre.config.hop_s}))
    for end in pre.take_ended():
        topic = topic_for(WINDOW, end.device)
        if await pub.wait_for_subscribers([topic], end_wait_s):
            log.warning("no subscriber for %s after %.0f s: its end marker is lost", topic, end_wait_s)
        await pub.send(end.to_message(seq=pub.next_seq(topic)))


async def serve(
    bus: str,
    config: WindowConfig | None = None,
    *,
    device_timeout_s: float = 120.0,
    report_every_s: float = 30.0,
    on_ready: OnReady | None = None,
    report: Callable[[Counter], None] | None = None,
    metrics=None,
    stop: asyncio.Event | None = None,
) -> int:
    """Run until ``stop`` is set or the task is cancelled (the windows still pending are
    published first either way); returns 0.

    ``on_ready(bus)`` is called once the sockets are connected and subscribed; ``report`` gets
    the counters (bus gaps and malformed messages included) every ``report_every_s`` and at
    the end; ``metrics`` (a :class:`bus.metrics.StageMetrics`) serves them to Prometheus.
    """
    pre = Preprocessor(config, device_timeout_s=device_timeout_s)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    tick_s = min(1.0, device_timeout_s / 4)

    def totals(sub: Subscriber) -> Counter:
        c = pre.counters()
        c["bus_received"] = sub.stats.received
        c["bus_missing"] = sub.stats.gaps
        c["bus_malformed"] = sum(sub.stats.malformed.values())
        c.update({f"bus_malformed_{k}": v for k, v in sub.stats.malformed.items()})
        c["devices_open"] = len(pre.devices)
        return c

    async with Publisher(bus) as pub, Subscriber(bus, SUBSCRIPTIONS) as sub:
        if metrics is not None:
            from bus.metrics import bus_snapshot

            metrics.watch(
                lambda: bus_snapshot(
                    sub.stats,
                    drops={k: v for k, v in pre.counters().items() if k in DROPS},
                    published=pub.sent,
                    queue_depth=pre.nbytes(),
                )
            )
        if on_ready is not None:
            on_ready(bus)
        next_expire = loop.time() + tick_s
        next_report = loop.time() + report_every_s
        try:
            while not stop.is_set():
                try:
                    msg = await sub.recv(min(STOP_POLL_S, max(0.0, next_expire - loop.time())))
                except TimeoutError:
                    msg = None
                now = loop.time()
                if msg is not None:
                    started = time.perf_counter()
                    await _publish(pub, pre, pre.push(msg, now_s=now))
                    if metrics is not None:
                        metrics.observe(time.perf_counter() - started)
                if now >= next_expire:
                    await _publish(pub, pre, pre.expire(now))
                    next_expire = now + tick_s
                if report is not None and now >= next_report:
                    report(totals(sub))
                    next_report = now + report_every_s
        finally:
            # runs on cancellation too: the pending windows still reach the bus (the
            # publisher only flushes by itself on a normal exit)
            await _publish(pub, pre, pre.flush(), end_wait_s=0)  # stopping: no waiting for anyone
            await pub.flush()
            if report is not None:
                report(totals(sub))
        return 0
