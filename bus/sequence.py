"""Sequence numbers per (device, topic) and the receiver-side bookkeeping.

A publisher numbers each topic's messages 0, 1, 2, ...; a receiver that sees a jump
knows exactly how many messages it missed, so nothing is lost silently. A publisher that
restarts numbers from 0 again under a new incarnation (see :mod:`bus.message`): the
receiver counts that as a restart, with the new incarnation's messages it never saw
(numbers below the first one it got) as missed. What the old incarnation sent after the
last message that arrived is unknown to the bus; a stage that can count it in its own
units (windows on a time grid) does so, see :mod:`storage.positions`.
"""

from __future__ import annotations

import secrets
from collections import Counter
from dataclasses import dataclass, field


def new_incarnation() -> int:
    """A random, non-zero 63-bit incarnation id (0 means "unknown": a version-1 sender)."""
    return secrets.randbits(63) | 1


class SequenceCounter:
    """Next sequence number for each topic, starting at 0."""

    def __init__(self) -> None:
        self._next: dict[str, int] = {}

    def next(self, topic: str) -> int:
        seq = self._next.get(topic, 0)
        self._next[topic] = seq + 1
        return seq


@dataclass(slots=True)
class BusStats:
    """What a receiver saw. ``gaps`` counts missing messages (not gap events);
    ``late`` counts messages whose sequence number was at or below one already seen from
    the same incarnation; ``restarts`` counts publishers seen coming back as a new incarnation."""

    received: int = 0
    gaps: int = 0
    late: int = 0
    restarts: int = 0
    malformed: Counter = field(default_factory=Counter)
    gaps_by_topic: Counter = field(default_factory=Counter)
    restarts_by_topic: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {
            "received": self.received,
            "gaps": self.gaps,
            "late": self.late,
            "restarts": self.restarts,
            "malformed": dict(self.malformed),
            "gaps_by_topic": dict(self.gaps_by_topic),
            "restarts_by_topic": dict(self.restarts_by_topic),
        }


class GapTracker:
    """Feeds :class:`BusStats` from the sequence numbers (and incarnations) of arriving messages.

    The first message of a topic sets its baseline whatever its number (a subscriber
    may join mid-stream); after that a jump of k counts k - 1 missing messages. A message
    from another incarnation than the topic's last is a restart of its publisher: the new
    incarnation's messages numbered below it count as missing, and the baseline moves to it.
    Incarnation 0 (a version-1 sender) never counts as a restart.
    """

    def __init__(self, stats: BusStats | None = None) -> None:
        self.stats = stats if stats is not None else BusStats()
        self._last: dict[str, tuple[int, int]] = {}

    def observe(self, topic: str, seq: int, incarnation: int = 0) -> int:
        """Record one message; returns how many messages were missed just before it."""
        self.stats.received += 1
        last = self._last.get(topic)
        if last is None:
            self._last[topic] = (incarnation, seq)
            return 0
        last_inc, last_seq = last
        if incarnation != last_inc and incarnation and last_inc:
            self.stats.restarts += 1
            self.stats.restarts_by_topic[topic] += 1
            missed = seq  # 0 .. seq-1 of the new incarnation never arrived
        elif seq <= last_seq:
            self.stats.late += 1
            return 0
        else:
            missed = seq - last_seq - 1
        self._last[topic] = (incarnation, seq)
        if missed:
            self.stats.gaps += missed
            self.stats.gaps_by_topic[topic] += missed
        return missed

    def forget(self, topic_prefix: str) -> None:
        """Drop the state of topics under a prefix (a device that went away)."""
        for topic in [t for t in self._last if t.startswith(topic_prefix)]:
            del self._last[topic]
