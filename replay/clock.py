"""Publishing recordings on the bus as if they were live.

Several recordings replay side by side, each shifted so that it starts when the
replay starts (their own timestamps are kept on the messages). ``speed`` scales the
clock; ``math.inf`` publishes as fast as the bus takes it.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from bus import Message, Publisher
from replay.chunks import recording_messages, topics_of
from replay.recording import Recording

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ReplayStats:
    messages: int = 0
    samples: int = 0
    recorded_s: float = 0.0
    wall_s: float = 0.0
    #: wall-clock time (Unix s) at which every recording's start was replayed: at speed N, a sample
    #: recorded at ``t`` went out at ``started_unix_s + (t - recording start) / N``
    started_unix_s: float = 0.0


def merged_messages(recordings: Sequence[Recording]) -> Iterator[tuple[float, Message]]:
    """``(offset_s, message)`` of all recordings, by offset from each recording's own start."""
    def shifted(rec: Recording) -> Iterator[tuple[float, Message]]:
        start = rec.start_s
        return ((due - start, msg) for due, msg in recording_messages(rec))
    return heapq.merge(*(shifted(r) for r in recordings), key=lambda e: e[0])


async def replay(
    recordings: Sequence[Recording],
    pub: Publisher,
    *,
    speed: float,
    wait_s: float | None,
    progress: Callable[[ReplayStats], None] | None = None,
) -> ReplayStats:
    """Publish the recordings through ``pub``; returns what was sent.

    Waits first (up to ``wait_s``; ``None`` forever, 0 not at all) until every topic
    has a subscriber, so that subscribers started before or just after lose nothing.
    """
    topics = [t for rec in recordings for t in topics_of(rec)]
    if wait_s != 0:
        missing = await pub.wait_for_subscribers(topics, wait_s)
        if missing:
            log.warning("no subscriber for %d topic(s) after %.0f s (e.g. %s); replaying anyway",
                        len(missing), wait_s, missing[0])
    loop = asyncio.get_running_loop()
    stats = ReplayStats(recorded_s=max((r.duration_s for r in recordings), default=0.0))
    started = loop.time()
    stats.started_unix_s = time.time()
    next_report = started + 1.0
    for offset, msg in merged_messages(recordings):
        if not math.isinf(speed):
            delay = started + offset / speed - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        await pub.send(msg)
        stats.messages += 1
        stats.samples += msg.n
        if progress is not None and loop.time() >= next_report:
            stats.wall_s = loop.time() - started
            progress(stats)
            next_report += 1.0
    stats.wall_s = loop.time() - started
    return stats
