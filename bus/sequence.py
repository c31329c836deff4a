"""Sequence numbers per (device, topic) and the receiver-side bookkeeping.

A publisher numbers each topic's messages 0, 1, 2, ...; a receiver that sees a jump
knows exactly how many messages it missed, so nothing is lost silently.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


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
    ``late`` counts messages whose sequence number was at or below one already seen."""

    received: int = 0
    gaps: int = 0
    late: int = 0
    malformed: Counter = field(default_factory=Counter)
    gaps_by_topic: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {
            "received": self.received,
            "gaps": self.gaps,
            "late": self.late,
            "malformed": dict(self.malformed),
            "gaps_by_topic": dict(self.gaps_by_topic),
        }


class GapTracker:
    """Feeds :class:`BusStats` from the sequence numbers of arriving messages.

    The first message of a topic sets its baseline whatever its number (a subscriber
    may join mid-stream); after that a jump of k counts k - 1 missing messages.
    """

    def __init__(self, stats: BusStats | None = None) -> None:
        self.stats = stats if stats is not None else BusStats()
        self._last: dict[str, int] = {}

    def observe(self, topic: str, seq: int) -> int:
        """Record one message; returns how many messages were missed just before it."""
        self.stats.received += 1
        last = self._last.get(topic)
        if last is None:
            self._last[topic] = seq
            return 0
        if seq <= last:
            self.stats.late += 1
            return 0
        missed = seq - last - 1
        self._last[topic] = seq
        if missed:
            self.stats.gaps += missed
            self.stats.gaps_by_topic[topic] += missed
        return missed

    def forget(self, topic_prefix: str) -> None:
        """Drop the state of topics under a prefix (a device that went away)."""
        for topic in [t for t in self._last if t.startswith(topic_prefix)]:
            del self._last[topic]
