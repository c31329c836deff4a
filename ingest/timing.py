"""Sample timestamps for a BLE stream whose packets carry no time.

Theory of operation. The E4 sends no timestamps, so the host assigns them the way
Empatica's own server did (e4-facts 1.4): the first packet of a stream is anchored at its
arrival on the host clock (its last sample just before the notification), and every later
sample advances the timeline at the nominal rate. Three things keep that timeline honest:

- *Lost notifications* are found from the packet counter where the layout has one
  (checked against the time that really passed, which also resolves a counter that wrapped
  during a long silence), otherwise from arrival times alone (exact while arrival jitter
  stays under a quarter of a packet: 250 ms for TEMP). The timeline then skips the
  missing samples and reports a gap; time is never compressed.
- *Drift* between the wristband's crystal and the host clock is corrected by slewing: the
  smallest recent arrival-minus-sample-end (the latency floor, robust to BLE jitter) should
  stay at zero; a small fraction of it is applied per packet, bounded so consecutive
  sample times stay strictly increasing.
- *Reconnects* (:meth:`StreamClock.relink`) re-anchor on arrival but snap to the old
  sample grid, so the samples lost while the link was down become a gap of whole samples.

Pure: arrival times come in as arguments; nothing here reads a clock.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True, kw_only=True)
class Stamp:
    """Where one packet's samples go. ``missing`` samples (at ``gap_start_s``, lost for
    ``cause``: "counter", "arrival", "reconnect" or "bad_packet") precede it; 0 when nothing
    was lost."""

    t0_s: float
    missing: int = 0
    gap_start_s: float = 0.0
    cause: str = ""


@dataclass(slots=True)
class ClockStats:
    packets: int = 0
    missing_samples: int = 0
    correction_s: float = 0.0
    anomalies: Counter = field(default_factory=Counter)


class StreamClock:
    """Timestamps for one periodic stream of one device.

    ``window_s``: how far back the latency floor looks; ``gain``: fraction of the floor
    corrected per packet; ``max_slew``: the most a packet's duration may stretch or shrink.
    """

    def __init__(
        self,
        *,
        fs_hz: float,
        samples_per_packet: int,
        counter_modulus: int | None = None,
        window_s: float = 30.0,
        gain: float = 0.05,
        max_slew: float = 0.005,
    ) -> None:
        if fs_hz <= 0 or samples_per_packet < 1:
            raise ValueError("a periodic stream needs fs_hz > 0 and at least one sample per packet")
        self.fs_hz = fs_hz
        self.samples_per_packet = samples_per_packet
        self.counter_modulus = counter_modulus
        self._window_s = window_s
        self._gain = gain
        self._max_slew = max_slew
        self._next_t: float | None = None
        self._relink = False
        self._last_counter: int | None = None
        # Monotonic deque for a sliding minimum: (arrival, offset + correction at the time),
        # offsets increasing from the front, so the front is the window's latency floor.
        self._floor: deque[tuple[float, float]] = deque()
        self.stats = ClockStats()

    @property
    def packet_s(self) -> float:
        return self.samples_per_packet / self.fs_hz

    @property
    def next_t_s(self) -> float | None:
        """When the next sample is due on the timeline (None before the first packet)."""
        return self._next_t

    def relink(self) -> None:
        """The link went down and came back: the next packet re-anchors on arrival."""
        if self._next_t is not None:
            self._relink = True
        self._last_counter = None
        self._floor.clear()

    def skip(self) -> Stamp | None:
        """A packet arrived damaged: its samples are lost, the timeline and the counter move
        past it (so the next good packet does not report it again). None before the first
        packet or while re-anchoring, where there is no timeline to skip on."""
        if self._next_t is None or self._relink:
            return None
        missing = self.samples_per_packet
        stamp = Stamp(t0_s=self._next_t + self.packet_s, missing=missing, gap_start_s=self._next_t, cause="bad_packet")
        self._next_t += self.packet_s
        if self._last_counter is not None and self.counter_modulus is not None:
            self._last_counter = (self._last_counter + 1) % self.counter_modulus
        self.stats.missing_samples += missing
        return stamp

    def _latency_floor(self) -> float:
        """Smallest arrival-minus-sample-end in the window, on the current timeline (s)."""
        return self._floor[0][1] - self.stats.correction_s if self._floor else 0.0

    def _lost_packets(self, arrival_s: float, duration_s: float, counter: int | None) -> tuple[int, str]:
        assert self._next_t is not None
        lateness = arrival_s - (self._next_t + duration_s + self._latency_floor())
        by_time = max(0, math.floor(lateness / self.packet_s + 0.25))
        if counter is None or self.counter_modulus is None or self._last_counter is None:
            return by_time, "arrival"
        m = self.counter_modulus
        by_counter = (counter - self._last_counter - 1) % m
        if by_counter == m - 1 and by_time < m // 2:  # the same counter again, on time: a repeat, not 63 lost
            self.stats.anomalies["counter_repeat"] += 1
            return 0, "counter"
        if by_time >= m:  # silence longer than a wrap: the counter gives the residue only
            return by_counter + m * round((by_time - by_counter) / m), "counter"
        if by_counter > by_time + 1:
            self.stats.anomalies["counter_implausible"] += 1
            return by_time, "arrival"
        return by_counter, "counter"

    def push(self, arrival_s: float, n: int, counter: int | None = None) -> Stamp:
        """Place a packet of ``n`` samples that arrived at ``arrival_s`` (host clock, s)."""
        duration = n / self.fs_hz
        self.stats.packets += 1
        if self._next_t is None:
            t0, stamp = arrival_s - duration, None
        elif self._relink:
            missing = max(0, round((arrival_s - duration - self._next_t) * self.fs_hz))
            t0 = self._next_t + missing / self.fs_hz
            stamp = Stamp(t0_s=t0, missing=missing, gap_start_s=self._next_t, cause="reconnect")
            self._relink = False
        else:
            lost, cause = self._lost_packets(arrival_s, duration, counter)
            missing = lost * self.samples_per_packet
            t0 = self._next_t + missing / self.fs_hz
            stamp = Stamp(t0_s=t0, missing=missing, gap_start_s=self._next_t, cause=cause) if missing else None
        if counter is not None:
            self._last_counter = counter
        end = t0 + duration
        value = arrival_s - end + self.stats.correction_s
        while self._floor and self._floor[-1][1] >= value:
            self._floor.pop()
        self._floor.append((arrival_s, value))
        while self._floor[0][0] < arrival_s - self._window_s:
            self._floor.popleft()
        floor = self._latency_floor()
        limit = self._max_slew * duration
        correction = max(-limit, min(limit, self._gain * floor))
        self.stats.correction_s += correction
        self._next_t = end + correction
        if stamp is None:
            return Stamp(t0_s=t0)
        self.stats.missing_samples += stamp.missing
        return stamp
