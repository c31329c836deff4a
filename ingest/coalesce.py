"""One wristband's packets -> fewer, larger bus messages (pure: no I/O, no clock of its own).

A gateway relaying many wristbands pays per bus message, not per sample: ``replay --packet-s``
cut NATS CPU per wristband-hour by a third. :class:`Coalescer` does the same for the live path
(``ble stream --packet-s``): per periodic stream (bvp, eda, temp, acc) of ONE device it gathers
consecutive chunks and hands them out as one message once it holds about ``packet_s`` seconds
(at least ``round(packet_s * fs)`` samples, and whole packets, so never less than one packet:
the rule of :func:`replay.chunks.packet_samples`). Each sample then waits up to the span of its
message (``packet_s`` rounded up to whole packets) before it is sent.

A message carries exactly what its packets would have carried one by one: the first packet's
``t0_s``, the common ``fs_hz`` and ``meta``, the samples concatenated. A packet joins only if it
continues the held samples on the sample grid: its ``t0_s`` within half a sample period of where
they end AND the same grid slot (``round(t * fs)``, where preprocess places a chunk's first
sample) as that end, with the same rate, meta, dtype and sample shape. So every sample lands in
the slot it would have had on its own. Anything else is a break: what is held goes out first,
then a new run starts. One break needs more: preprocess marks EVERY sample of a message whose first
slot is 1 or 2 off where its stream ended as mistimed (the drift slew of the live stamps does that
now and then, a sample overlapped or skipped), so such a packet goes out alone, as it would have
without coalescing; gathering the packets after it would spread the mark into the next window.
With that, preprocess cuts the same windows, with the same quality, from either.

Order: hr, ibi, battery and tag pass straight through. A status event (gap, on_wrist, battery,
disconnected, end, ...) first hands out everything held, so a status never overtakes a sample
pushed before it (an ``end`` follows every sample of the device). :meth:`flush` hands out the
rest (link lost, stop). Downstream only orders messages per topic and against status, so handing
out one stream's run while another is still held reorders nothing it relies on.

Keep ``packet_s`` well below preprocess's ``late_s`` (4 s): a sample held longer than that
behind the other streams arrives after its window has been cut and is dropped as late. EDA
packets span 1.5 s, so ``packet_s`` 2 makes 3 s EDA messages; ``ble stream`` accepts at most
:data:`MAX_LIVE_PACKET_S`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ingest.device import Emit

#: the streams that are gathered (periodic); every other message passes through at once
PERIODIC = frozenset({"bvp", "eda", "temp", "acc"})
#: the most seconds per message the live path accepts (preprocess drops samples later than 4 s)
MAX_LIVE_PACKET_S = 2.0
#: a message starting this many grid slots (or fewer, but not 0) off its stream's end is marked
#: mistimed whole by preprocess (preprocess/windower.py, ``DeviceWindower._raw``)
MISTIMED_SLOTS = 2


@dataclass(slots=True)
class _Run:
    """Consecutive chunks of one stream, not yet handed out."""

    first: Emit
    slot0: int  # grid slot of the first sample: round(t0 * fs)
    parts: list[np.ndarray] = field(default_factory=list)
    n: int = 0

    def add(self, chunk: Emit) -> None:
        self.parts.append(chunk.samples)
        self.n += int(chunk.samples.shape[0])

    def continues(self, chunk: Emit) -> bool:
        """Does ``chunk`` carry on exactly where the held samples end?"""
        head, fs = self.first, self.first.fs_hz
        if chunk.fs_hz != fs or chunk.meta != head.meta:
            return False
        held = self.parts[0]
        if chunk.samples.dtype != held.dtype or chunk.samples.shape[1:] != held.shape[1:]:
            return False
        end_s = head.t0_s + self.n / fs
        return abs(chunk.t0_s - end_s) <= 0.5 / fs and round(chunk.t0_s * fs) == self.slot0 + self.n

    def message(self) -> Emit:
        samples = self.parts[0] if len(self.parts) == 1 else np.concatenate(self.parts)
        h = self.first
        return Emit(kind=h.kind, modality=h.modality, t0_s=h.t0_s, fs_hz=h.fs_hz, samples=samples, meta=h.meta)


def is_periodic(emit: Emit) -> bool:
    """A chunk the coalescer gathers: raw samples of bvp/eda/temp/acc at a positive rate."""
    return (
        emit.kind == "raw"
        and emit.modality in PERIODIC
        and emit.fs_hz > 0
        and emit.samples.ndim >= 1
        and emit.samples.shape[0] > 0
    )


class Coalescer:
    """Feed it a device's messages in order with :meth:`push`; publish what it returns, in
    order; call :meth:`flush` when the link drops and at the end. ``packets`` counts the periodic
    chunks taken in, ``messages`` the periodic messages handed out."""

    def __init__(self, packet_s: float) -> None:
        if not packet_s > 0:
            raise ValueError(f"packet_s must be positive, got {packet_s}")
        self.packet_s = packet_s
        self._runs: dict[tuple[str, str], _Run] = {}
        self._ends: dict[tuple[str, str], int] = {}  # grid slot after each stream's last packet
        self.packets = 0
        self.messages = 0

    def target(self, fs_hz: float) -> int:
        """Samples a message holds before it is handed out."""
        return max(1, round(self.packet_s * fs_hz))

    def held(self) -> int:
        """Samples held back right now (all streams)."""
        return sum(r.n for r in self._runs.values())

    def push(self, emit: Emit) -> list[Emit]:
        """The messages to publish now, in order (possibly none: ``emit`` is being held)."""
        if not is_periodic(emit):
            if emit.kind == "status":
                return [*self.flush(), emit]
            return [emit]
        self.packets += 1
        key = (emit.kind, emit.modality)
        out: list[Emit] = []
        slot = round(emit.t0_s * emit.fs_hz)
        prev_end = self._ends.get(key)
        self._ends[key] = slot + int(emit.samples.shape[0])
        run = self._runs.get(key)
        if run is not None and not run.continues(emit):
            out.append(self._take(key))
            run = None
        if prev_end is not None and 0 < abs(slot - prev_end) <= MISTIMED_SLOTS:
            self.messages += 1  # alone: preprocess marks all of it, so nothing else may share it
            out.append(emit)
            return out
        if run is None:
            run = self._runs[key] = _Run(first=emit, slot0=round(emit.t0_s * emit.fs_hz))
        run.add(emit)
        if run.n >= self.target(emit.fs_hz):
            out.append(self._take(key))
        return out

    def flush(self) -> list[Emit]:
        """Everything held, one message per stream."""
        return [self._take(key) for key in list(self._runs)]

    def _take(self, key: tuple[str, str]) -> Emit:
        self.messages += 1
        return self._runs.pop(key).message()
