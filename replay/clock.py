"""Publishing recordings on the bus as if they were live.

Several recordings replay side by side, each shifted so that it starts when the
replay starts (their own timestamps are kept on the messages). ``speed`` scales the
clock; ``math.inf`` publishes as fast as the bus takes it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from bus import LABEL, STATUS, Message, Publisher, SequenceCounter, topic_for
from replay.chunks import announcement, recording_messages, topics_of
from replay.recording import Recording

log = logging.getLogger(__name__)
_LOOK_EVERY = 64  # messages between looks for stages that (re)subscribed mid-replay


@dataclass(slots=True)
class ReplayStats:
    messages: int = 0
    samples: int = 0
    recorded_s: float = 0.0
    wall_s: float = 0.0
    #: wall-clock time (Unix s) at which every recording's start was replayed: at speed N, a sample
    #: recorded at ``t`` went out at ``started_unix_s + (t - recording start) / N``
    started_unix_s: float = 0.0
    #: messages re-sent to stages that subscribed mid-replay (a device's source, its pending labels)
    announced: int = 0


def merged_messages(recordings: Sequence[Recording], packet_s: float | None = None) -> Iterator[tuple[float, Message]]:
    """``(offset_s, message)`` of all recordings, by offset from each recording's own start."""

    def shifted(rec: Recording) -> Iterator[tuple[float, Message]]:
        start = rec.start_s
        return ((due - start, msg) for due, msg in recording_messages(rec, packet_s=packet_s))

    return heapq.merge(*(shifted(r) for r in recordings), key=lambda e: e[0])


async def replay(
    recordings: Sequence[Recording],
    pub: Publisher,
    *,
    speed: float,
    wait_s: float | None,
    progress: Callable[[ReplayStats], None] | None = None,
    packet_s: float | None = None,
) -> ReplayStats:
    """Publish the recordings through ``pub``; returns what was sent. ``packet_s``: messages of
    about that many seconds of each signal instead of the wristband's packets (see
    :func:`replay.chunks.packet_samples`).

    Waits first (up to ``wait_s``; ``None`` forever, 0 not at all) until every topic
    has a subscriber, so that subscribers started before or just after lose nothing.
    """
    topics = [t for rec in recordings for t in topics_of(rec)]
    if wait_s != 0:
        missing = await pub.wait_for_subscribers(topics, wait_s)
        if missing:
            log.warning(
                "no subscriber for %d topic(s) after %.0f s (e.g. %s); replaying anyway",
                len(missing),
                wait_s,
                missing[0],
            )
    loop = asyncio.get_running_loop()
    stats = ReplayStats(recorded_s=max((r.duration_s for r in recordings), default=0.0))
    started = loop.time()
    stats.started_unix_s = time.time()
    next_report = started + 1.0
    pub.new_subscriptions()  # those waited for above are no news
    # status and label messages are renumbered here, so announcements can be slotted in between
    numbers = SequenceCounter()
    topics_by_device = {r.device: [*topics_of(r), topic_for(STATUS, r.device)] for r in recordings}
    for i, (offset, msg) in enumerate(merged_messages(recordings, packet_s)):
        if not math.isinf(speed):
            delay = started + offset / speed - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        if msg.kind in (STATUS, LABEL):
            msg = dataclasses.replace(msg, seq=numbers.next(msg.topic))
        await pub.send(msg)
        stats.messages += 1
        stats.samples += msg.n
        if i % _LOOK_EVERY == _LOOK_EVERY - 1 and (prefixes := pub.new_subscriptions()):
            # a stage (re)started: tell it each device's source and the labels still to come
            for rec in recordings:
                if any(t.startswith(p) for t in topics_by_device[rec.device] for p in prefixes):
                    for extra in announcement(rec, rec.start_s + offset):
                        await pub.send(dataclasses.replace(extra, seq=numbers.next(extra.topic)))
                        stats.announced += 1
        if progress is not None and loop.time() >= next_report:
            stats.wall_s = loop.time() - started
            progress(stats)
            next_report += 1.0
    stats.wall_s = loop.time() - started
    return stats
