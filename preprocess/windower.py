"""One device's raw, label and status messages in; aligned, filtered, quality-tagged windows out.

Theory of operation.

*Grid.* Every modality of a device shares one time grid: sample slot ``n`` of a modality at
rate ``fs`` is the instant ``n / fs`` (Unix seconds), and a sample with timestamp ``t`` goes to
slot ``round(t * fs)``, whatever order it arrives in. Windows start on multiples of the hop
(``k * hop_s``), so devices and replays agree on where windows fall; the first window of a
stretch of data is the first grid window that starts at or after its first sample. With
``stagger`` each device's grid is shifted by its own phase (``k * hop_s + phase``, the phase a
whole number of 0.25 s below the hop, from a CRC of the device id, so every process and replay
finds the same one): wristbands on one clock then close their windows spread over the hop
instead of all at the same instant, and a fleet's windows reach inference as a steady stream,
not one burst every hop (the burst is what the last window of it waits for).

*Buffers.* Per modality a buffer holds, by slot, the raw value, flag bits (measured, invalid,
late, duplicate, timing) and the filtered value. Only what the next window still needs is kept.

*Filters run behind the data.* The causal filters of :mod:`preprocess.filters` consume slots in
order, only when a window is emitted, up to the window end plus the FIR delay; the outputs are
shifted back by that delay, so a filtered sample keeps the timestamp of the input at the
FIR's centre. Because filtering waits for emission, chunks that arrive out of order before
then are filtered as if they had come in order. Holes are bridged by holding the last
measured value (so the filter state stays continuous) for up to ``max_gap_s``; after a longer
hole the filter restarts at the next sample's level.

*Emission and latency.* Window ``[s, s + 20)`` is emitted as soon as every modality has all
its samples, without a hole, up to ``s + 20`` plus its FIR delay (0.25 s BVP, 1 s EDA/TEMP,
0 ACC), i.e. about 1 s after its end plus the time the wristband takes to send the packet
(EDA packets cover 1.5 s); or, when some modality lags, has lost a packet or is absent, once
any modality is ``late_s`` past the window end (the latency of a window with a hole). A
sample arriving after the filter has passed its slot is *late*: counted, marked in the
quality of windows still to come, and not used. Emitting only on these conditions makes the
windows independent of how the stream was cut into chunks and of reordering, as long as no
chunk is later than ``late_s``.

*Breaks.* Data more than ``max_gap_s`` after everything seen so far (device off, clock jump
forward), or that far before the next window or the newest data (clock jump back), ends the current stretch: its
windows are flushed (all that end by its last sample; none reaches past it) and the filters and
grid start again.

Bad input (NaN/inf samples, negative EDA, a header rate that disagrees with the nominal rate
or with where the previous chunk ended, malformed shapes) is counted in ``counters`` and
flagged in the quality of the windows it touches; it never raises. A chunk whose rate is more
than a factor ``e4.RATE_FACTOR`` off the nominal one, or that holds more than ``MAX_MESSAGE_WINDOWS``
windows' worth of samples, is dropped whole (``bad_rate``, ``oversized``).
"""

from __future__ import annotations

import math
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from operator import itemgetter

import numpy as np

from bus import LABEL, RAW, STATUS, Message
from common.jsonvalues import is_finite_number
from e4 import rate_is_plausible
from preprocess.filters import FILTERS, StreamingFilter
from preprocess.quality import QualityRules, assess
from preprocess.window import LABEL_CLASSES, MODALITIES, RATES_HZ, SIZES, WIDTHS, WINDOW_S, Window

# flag bits per slot
_MEASURED = 1  # a valid sample arrived
_INVALID = 2  # a sample arrived but was NaN/inf/negative EDA
_LATE = 4  # a sample arrived after the filter had passed this slot
_DUP = 8  # a second sample arrived for this slot (the first one is kept)
_TIMING = 16  # placed from a chunk whose rate or start disagreed with the clock

_GRID_QUANTUM_S = 0.25  # hops must be whole numbers of the 4 Hz sample period
_MAX_PENDING_TAGS = 64  # button presses not yet inside a window; more is no person pressing
_SAMPLE_KEYS = {m: f"samples_{m}" for m in MODALITIES}
#: The most samples one message may carry, in windows' worth (15: 5 minutes). A wristband packet
#: holds at most 1.5 s, a whole test recording a few minutes; one message of days would become
#: thousands of windows at once.
MAX_MESSAGE_WINDOWS = 15


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowConfig:
    """How windows are cut.

    ``hop_s`` defaults to 5 s: a fresh estimate every 5 s follows stress responses (which
    build over tens of seconds) without flooding the bus, and four overlapping windows per
    20 s keep a short artefact from blanking the timeline. Training can use ``hop_s=20``
    for non-overlapping windows.
    """

    hop_s: float = 5.0
    late_s: float = 4.0
    max_gap_s: float = 30.0
    min_present_fraction: float = 0.5
    #: shift each device's grid by its own :func:`grid_phase_s` (see the module's *Grid*)
    stagger: bool = False
    rules: QualityRules = field(default_factory=QualityRules)

    def __post_init__(self) -> None:
        steps = self.hop_s / _GRID_QUANTUM_S
        if not (0 < self.hop_s <= WINDOW_S and abs(steps - round(steps)) < 1e-9):
            raise ValueError(f"hop_s must be a multiple of {_GRID_QUANTUM_S} s in (0, {WINDOW_S}], got {self.hop_s}")
        longest_delay = max(FILTERS[m].delay_samples / FILTERS[m].fs_hz for m in FILTERS)
        if not self.late_s > longest_delay:
            raise ValueError(f"late_s must exceed the longest filter delay ({longest_delay} s), got {self.late_s}")
        if not self.max_gap_s > 0 or not 0 <= self.min_present_fraction <= 1:
            raise ValueError("max_gap_s must be > 0 and min_present_fraction in [0, 1]")


def grid_phase_s(device: str, hop_s: float) -> float:
    """A device's staggered grid phase in [0, hop_s): a whole number of grid quanta picked by
    CRC-32 of its id (stable across processes and Python runs, unlike ``hash``)."""
    steps = round(hop_s / _GRID_QUANTUM_S)
    return (zlib.crc32(device.encode("utf-8", "surrogatepass")) % steps) * _GRID_QUANTUM_S


class _Stream:
    """One modality's buffers on the device grid (slots are absolute: round(t * fs))."""

    __slots__ = (
        "base",
        "contig",
        "delay",
        "fed",
        "filter",
        "fin",
        "flags",
        "fs",
        "has_out",
        "hi",
        "hold",
        "hold_slot",
        "keep",
        "lo",
        "next_slot",
        "out",
        "raw",
        "size",
        "width",
    )

    def __init__(self, modality: str) -> None:
        self.fs = RATES_HZ[modality]
        self.width = WIDTHS[modality]
        self.size = SIZES[modality]
        spec = FILTERS.get(modality)
        self.filter = StreamingFilter(spec) if spec else None
        self.delay = spec.delay_samples if spec else 0
        self.base: int | None = None  # slot of index 0 of the arrays
        self.raw: np.ndarray = np.zeros(0)
        self.out: np.ndarray = self.raw
        self.flags = np.zeros(0, dtype=np.uint8)
        self.has_out = np.zeros(0, dtype=bool)
        self.keep: int | None = None  # slots below are gone (their windows are out)
        self.fin: int | None = None  # next slot the filter takes
        self.fed = False  # whether the filter took the slot before fin
        self.hold: np.ndarray | None = None  # last measured value fed to the filter
        self.hold_slot = 0
        self.lo: int | None = None  # first and one-past-last slot with data
        self.hi: int | None = None
        self.contig: int | None = None  # data is complete (or given up) below this slot
        self.next_slot: int | None = None  # where the next in-order chunk should start

    def nbytes(self) -> int:
        return self.raw.nbytes + self.out.nbytes + self.flags.nbytes + self.has_out.nbytes

    def _shape(self, n: int) -> tuple[int, ...]:
        return (n,) if self.width == 1 else (n, self.width)

    def reserve(self, lo: int, hi: int) -> None:
        """Make slots [lo, hi) addressable, keeping what is stored from ``keep`` on."""
        cap = len(self.flags)
        if self.base is not None and self.base <= lo and hi <= self.base + cap:
            return
        if self.base is None:
            old_lo = new_base = lo
            old_hi = hi
        else:
            old_lo = self.base if self.keep is None else max(self.base, self.keep)
            new_base = min(lo, old_lo)
            old_hi = max(hi, self.base + cap)
        new_cap = 1 << max(8, math.ceil(math.log2(max(1, old_hi - new_base))))
        raw, out = np.zeros(self._shape(new_cap)), np.zeros(self._shape(new_cap))
        flags, has_out = np.zeros(new_cap, dtype=np.uint8), np.zeros(new_cap, dtype=bool)
        if self.base is not None:
            a, b = max(old_lo, new_base), min(self.base + cap, new_base + new_cap)
            if b > a:
                src, dst = slice(a - self.base, b - self.base), slice(a - new_base, b - new_base)
                raw[dst], out[dst], flags[dst], has_out[dst] = (
                    self.raw[src],
                    self.out[src],
                    self.flags[src],
                    self.has_out[src],
                )
        self.base, self.raw, self.out, self.flags, self.has_out = new_base, raw, out, flags, has_out

    def place_run(
        self, first: int, values: np.ndarray, valid: np.ndarray | None, timing: bool, counters: Counter
    ) -> None:
        """Store a chunk of consecutive slots from ``first`` (``valid`` None: all valid).

        The common case (a chunk in order onto empty slots ahead of the filter) is a few
        slice assignments; anything else takes :meth:`place`.
        """
        n = len(values)
        last = first + n
        if (
            self.lo is None
            or first < self.lo
            or valid is not None
            or (self.keep is not None and first < self.keep)
            or (self.fin is not None and first < self.fin)
        ):
            if valid is None:
                valid = np.ones(n, dtype=bool)
            self.place(first + np.arange(n, dtype=np.int64), values, valid, timing, counters)
            return
        self.reserve(first, last)
        assert self.base is not None and self.hi is not None and self.contig is not None  # set with lo
        i = first - self.base
        flags = self.flags[i : i + n]
        if flags.any():
            self.place(first + np.arange(n, dtype=np.int64), values, np.ones(n, dtype=bool), timing, counters)
            return
        self.raw[i : i + n] = values
        flags[:] = (_MEASURED | _TIMING) if timing else _MEASURED
        if last > self.hi:
            self.hi = last
        if first <= self.contig < last:
            if self.hi == last:
                self.contig = last
            else:
                self._extend_contig()

    def place(self, slots: np.ndarray, values: np.ndarray, valid: np.ndarray, timing: bool, counters: Counter) -> None:
        """Store one chunk's samples by slot; counts late, duplicate and invalid samples."""
        if self.keep is not None:
            gone = slots < self.keep
            if gone.any():
                counters["late_samples"] += int(gone.sum())
                keep = ~gone
                slots, values, valid = slots[keep], values[keep], valid[keep]
                if not len(slots):
                    return
        lo, hi = int(slots.min()), int(slots.max()) + 1
        self.reserve(lo, hi)
        idx = slots - self.base
        if self.fin is not None:
            passed = slots < self.fin
            if passed.any():
                # the filter has passed these slots: a resent sample is a duplicate, a new one late
                dup = passed & ((self.flags[idx] & (_MEASURED | _INVALID)) != 0)
                late = passed & ~dup
                counters["duplicate_samples"] += int(dup.sum())
                counters["late_samples"] += int(late.sum())
                self.flags[idx[dup]] |= _DUP
                self.flags[idx[late]] |= _LATE
                keep = ~passed
                idx, values, valid = idx[keep], values[keep], valid[keep]
        if self.lo is None or lo < self.lo:
            self.lo = self.contig = lo
        self.hi = hi if self.hi is None else max(self.hi, hi)
        if not len(idx):
            self._extend_contig()
            return
        first = np.ones(len(idx), dtype=bool)
        if len(idx) > 1 and not (np.diff(idx) > 0).all():  # colliding slots (a rate that disagrees)
            _, firsts = np.unique(idx, return_index=True)
            first[:] = False
            first[firsts] = True
        taken = (self.flags[idx] & (_MEASURED | _INVALID)) != 0
        dup = taken | ~first
        if dup.any():
            counters["duplicate_samples"] += int(dup.sum())
            self.flags[idx[dup]] |= _DUP
        new = ~dup
        idx, values, valid = idx[new], values[new], valid[new]
        self.raw[idx] = np.where(valid if self.width == 1 else valid[:, None], values, 0.0)
        self.flags[idx] |= np.where(valid, _MEASURED, _INVALID).astype(np.uint8) | (_TIMING if timing else 0)
        assert self.contig is not None  # set with lo
        if lo <= self.contig:
            self._extend_contig()

    def _extend_contig(self) -> None:
        """Move ``contig`` to the first slot, at or after the filter, that still waits for data."""
        assert self.base is not None and self.hi is not None and self.contig is not None  # only once data came
        start = max(self.contig, self.fin) if self.fin is not None else self.contig
        seg = self.flags[start - self.base : self.hi - self.base] & (_MEASURED | _INVALID)
        empty = np.flatnonzero(seg == 0)
        self.contig = start + (int(empty[0]) if len(empty) else len(seg))

    def complete_until(self) -> int | None:
        """Slots below this have all arrived or been given up (lost data does not hold it back
        once the filter has passed it)."""
        if self.contig is None:
            return None
        if self.fin is not None and self.fin > self.contig:
            self._extend_contig()
        return self.contig

    def advance(self, upto: int, max_gap: int) -> None:
        """Run the filter over slots [fin, upto), bridging holes up to ``max_gap`` slots."""
        if self.fin is None:
            if self.lo is None:
                return
            self.fin = self.lo
        if upto <= self.fin:
            return
        start = self.fin
        self.reserve(start, upto)
        assert self.base is not None  # set by reserve
        i0, n = start - self.base, upto - start
        measured = (self.flags[i0 : i0 + n] & _MEASURED) != 0
        pos = np.arange(n)
        last = np.maximum.accumulate(np.where(measured, pos, -1))
        if self.hold is None:
            age = np.where(last >= 0, pos - last, max_gap + 1)
        else:
            age = np.where(last >= 0, pos - last, pos + start - self.hold_slot)
        feed = age <= max_gap
        x = self.raw[i0 : i0 + n][np.maximum(last, 0)]
        if self.hold is not None:
            x[last < 0] = self.hold
        # runs of fed slots; a run that follows an unfed slot restarts the filter at its level
        edges = np.flatnonzero(np.diff(np.concatenate(([False], feed, [False])).astype(np.int8)))
        for a, b in zip(edges[::2].tolist(), edges[1::2].tolist()):
            if self.filter is not None and (a > 0 or not self.fed):
                self.filter.reset()
            y = x[a:b] if self.filter is None else self.filter.push(x[a:b])
            o0 = start + a - self.delay - self.base
            skip = max(0, -o0)
            self.out[o0 + skip : o0 + (b - a)] = y[skip:]
            self.has_out[o0 + skip : o0 + (b - a)] = True
        if measured.any():
            j = int(np.flatnonzero(measured)[-1])
            self.hold, self.hold_slot = x[j].copy(), start + j
        self.fed = bool(feed[-1])
        self.fin = upto

    def extract(self, s0: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Window slots [s0, s0 + size): (signal float32, measured mask, raw values, flag bits)."""
        n = self.size
        if self.base is None:
            zeros = np.zeros(self._shape(n))
            return zeros.astype(np.float32), np.zeros(n, dtype=bool), zeros, np.zeros(n, dtype=np.uint8)
        self.reserve(s0, s0 + n)
        sl = slice(s0 - self.base, s0 - self.base + n)
        flags = self.flags[sl].copy()
        has = self.has_out[sl]
        sig = self.out[sl].copy()
        if not has.all():
            if has.any():
                pos = np.arange(n)
                prev = np.maximum.accumulate(np.where(has, pos, -1))
                nxt = np.minimum.accumulate(np.where(has, pos, n)[::-1])[::-1]
                sig = sig[np.where(prev >= 0, prev, nxt)]
            else:
                sig[:] = 0.0
        return sig.astype(np.float32), (flags & _MEASURED) != 0, self.raw[sl].copy(), flags


class DeviceWindower:
    """``push(msg) -> [Window]`` and ``flush() -> [Window]`` for one device (pure: no I/O, no clock)."""

    def __init__(self, device: str, config: WindowConfig | None = None, *, source: str = "live") -> None:
        self.device = device
        self.config = config or WindowConfig()
        self.source = source
        self.counters: Counter[str] = Counter()
        self.last_data_s: float | None = None  # end of the newest data ever received (survives breaks)
        self._hop_slots = {m: round(self.config.hop_s * RATES_HZ[m]) for m in MODALITIES}
        #: where this device's grid starts (0 unless staggered); windows start at k * hop + phase
        self.phase_s = grid_phase_s(device, self.config.hop_s) if self.config.stagger else 0.0
        self._phase_slots = {m: round(self.phase_s * RATES_HZ[m]) for m in MODALITIES}
        self._max_gap = {m: round(self.config.max_gap_s * RATES_HZ[m]) for m in MODALITIES}
        self._labels: list[tuple[float, float, str, str]] = []
        self._tags: list[float] = []
        self._reset()

    def _reset(self) -> None:
        self._streams = {m: _Stream(m) for m in MODALITIES}
        self._next_k: int | None = None  # index of the next window (start = k * hop_s + phase_s)
        self._emitted = False
        self._newest_s: float | None = None  # end of the newest data of any modality
        self._wait: tuple[int, tuple[tuple[_Stream, int], ...], float] | None = None

    def nbytes(self) -> int:
        """Bytes held in this device's sample buffers."""
        return sum(s.nbytes() for s in self._streams.values())

    # ---- input -------------------------------------------------------------------------------

    def push(self, msg: Message) -> list[Window]:
        self.counters["messages"] += 1
        out: list[Window] = []
        if msg.kind == RAW:
            if msg.modality == "tag":
                self._tag(msg)
            elif msg.modality in self._streams:
                out = self._raw(msg)
            else:
                self.counters[f"ignored_{msg.modality}"] += 1
        elif msg.kind == LABEL:
            self._label(msg)
        elif msg.kind == STATUS:
            event = msg.meta.get("event")
            self.counters[f"status_{event}"] += 1
            if event == "start":
                out = self.flush()
                if msg.meta.get("source") in ("replay", "live"):
                    self.source = msg.meta["source"]
            elif event == "announce":  # a replay telling a (re)started stage what its start said: no reset
                if msg.meta.get("source") in ("replay", "live"):
                    self.source = msg.meta["source"]
            elif event == "end":
                out = self.flush()
        else:
            self.counters[f"ignored_{msg.kind}"] += 1
        return out + self._emit_ready()

    def _raw(self, msg: Message) -> list[Window]:
        m = msg.modality
        stream = self._streams[m]
        fs = msg.fs_hz
        samples = np.asarray(msg.samples)
        want_ndim = 1 if stream.width == 1 else 2
        if samples.ndim != want_ndim or (want_ndim == 2 and samples.shape[1] != stream.width):
            self.counters["malformed"] += 1
            return []
        n = samples.shape[0]
        if not n:
            return []
        if not rate_is_plausible(m, fs):
            self.counters["bad_rate"] += 1
            self.counters["dropped_samples"] += n
            return []
        if n > MAX_MESSAGE_WINDOWS * stream.size:
            self.counters["oversized"] += 1
            self.counters["dropped_samples"] += n
            return []
        self.counters[_SAMPLE_KEYS[m]] += n
        out: list[Window] = []
        t_first = msg.t0_s
        if self._newest_s is not None and (
            t_first > self._newest_s + self.config.max_gap_s
            or (
                self._emitted
                and self._next_k is not None
                and t_first + (n - 1) / fs < self._start_s(self._next_k) - self.config.max_gap_s
            )
            # before the first window too (found by fuzzing: a chunk at t=0 beside data of today
            # made the buffers span 54 years of slots, terabytes)
            or t_first + (n - 1) / fs < self._newest_s - WINDOW_S - self.config.late_s - self.config.max_gap_s
        ):
            self.counters["clock_jumps"] += 1
            out = self.flush()
            stream = self._streams[m]
        values = samples.astype(np.float64)
        if stream.width == 3:
            values /= 64.0  # E4 counts are 1/64 g
        valid: np.ndarray | None = None  # all valid, the common case, checked with one reduction
        if not np.isfinite(values).all() or (m == "eda" and values.min() < 0):
            valid = np.asarray(np.isfinite(values) if stream.width == 1 else np.isfinite(values).all(axis=1))
            if m == "eda":
                negative = valid & (values < 0)
                if negative.any():
                    self.counters["negative_eda"] += int(negative.sum())
                    valid &= ~negative
            self.counters["invalid_samples"] += int((~valid).sum())
        nominal = stream.fs
        if abs(fs - nominal) > 1e-3 * nominal:
            self.counters["rate_mismatch"] += 1
            slots = np.rint((t_first + np.arange(n) / fs) * nominal).astype(np.int64)
            stream.place(slots, values, np.ones(n, dtype=bool) if valid is None else valid, True, self.counters)
            last = int(slots.max()) + 1
        else:
            first = round(t_first * nominal)
            timing = stream.next_slot is not None and 0 < abs(first - stream.next_slot) <= 2
            if timing:
                self.counters["timing_mismatch"] += 1
            stream.place_run(first, values, valid, timing, self.counters)
            last = first + n
        stream.next_slot = last
        newest = last / nominal
        if self._newest_s is None or newest > self._newest_s:
            self._newest_s = newest
        if self.last_data_s is None or newest > self.last_data_s:
            self.last_data_s = newest
        return out

    def _tag(self, msg: Message) -> None:
        """A button press (its time is ``t0_s``): it rides on the windows that contain it, where
        the calibration of the model's inputs reads it as a marked rest."""
        if not math.isfinite(msg.t0_s) or len(self._tags) >= _MAX_PENDING_TAGS:
            self.counters["bad_tags"] += 1
            return
        self.counters["tags"] += 1
        self._tags.append(float(msg.t0_s))

    def _label(self, msg: Message) -> None:
        meta = msg.meta
        task, label, start, end = meta.get("task"), meta.get("label"), meta.get("start_s"), meta.get("end_s")
        if (
            not isinstance(task, str)
            or task not in LABEL_CLASSES
            or not isinstance(label, str)
            or not is_finite_number(start)
            or not is_finite_number(end)
            or not start < end
        ):
            self.counters["bad_labels"] += 1
            return
        self.counters["labels"] += 1
        interval = (float(start), float(end), task, label)
        if interval not in self._labels:  # a replay re-announcing its labels to a restarted stage
            self._labels.append(interval)

    # ---- output ------------------------------------------------------------------------------

    def _start_s(self, k: int) -> float:
        """Start of window ``k`` (exact: hop and phase are whole quarter seconds)."""
        return k * self.config.hop_s + self.phase_s

    def _first_k(self) -> int | None:
        phase, hop = self._phase_slots, self._hop_slots
        ks = [-(-(s.lo - phase[m]) // hop[m]) for m, s in self._streams.items() if s.lo is not None]
        return min(ks) if ks else None

    def _ready(self, k: int) -> bool:
        if self._wait is None or self._wait[0] != k:
            needs = tuple(
                (s, k * self._hop_slots[m] + self._phase_slots[m] + s.size + s.delay) for m, s in self._streams.items()
            )
            self._wait = (k, needs, self._start_s(k) + WINDOW_S + self.config.late_s)
        _, needs, late_at = self._wait
        if self._newest_s is not None and self._newest_s >= late_at:
            return True
        return all((c := s.complete_until()) is not None and c >= need for s, need in needs)

    def _emit_ready(self) -> list[Window]:
        out = []
        if not self._emitted:
            self._next_k = self._first_k()
        while self._next_k is not None and self._ready(self._next_k):
            out.append(self._emit(self._next_k))
        return out

    def flush(self) -> list[Window]:
        """Emit every pending window that ends by the end of the data, then start afresh (end
        of a stream). A window reaching past the last sample would be padding judged as data."""
        out = []
        if not self._emitted:
            self._next_k = self._first_k()
        until = self._newest_s
        while self._next_k is not None and until is not None and self._start_s(self._next_k) + WINDOW_S <= until:
            out.append(self._emit(self._next_k))
        self._reset()
        return out

    def _emit(self, k: int) -> Window:
        cfg = self.config
        signals, masks, raw, ok = {}, {}, {}, {}
        late = dup = invalid = 0
        timing = False
        for m, s in self._streams.items():
            s0 = k * self._hop_slots[m] + self._phase_slots[m]
            s.advance(s0 + s.size + s.delay, self._max_gap[m])
            signals[m], masks[m], raw[m], flags = s.extract(s0)
            ok[m] = masks[m]
            late += int(np.count_nonzero(flags & _LATE))
            dup += int(np.count_nonzero(flags & _DUP))
            invalid += int(np.count_nonzero(flags & _INVALID))
            timing |= bool((flags & _TIMING).any())
            s.keep = s0 + self._hop_slots[m]
        quality = assess(raw, ok, invalid=invalid, late=late, duplicates=dup, timing_mismatch=timing, rules=cfg.rules)
        t_start = self._start_s(k)
        t_end = t_start + WINDOW_S
        present = {m: bool(masks[m].mean() >= cfg.min_present_fraction) for m in MODALITIES}
        window = Window(
            device=self.device,
            t_start_s=t_start,
            t_end_s=t_end,
            signals=signals,
            masks=masks,
            present=present,
            quality=quality,
            labels=self._labels_for(t_start, t_end),
            source=self.source,
            tags_s=tuple(t for t in self._tags if t_start <= t < t_end),
        )
        self._next_k = k + 1
        self._emitted = True
        self.counters["windows"] += 1
        horizon = self._start_s(self._next_k)
        self._labels = [iv for iv in self._labels if iv[1] > horizon]
        self._tags = [t for t in self._tags if t >= horizon]
        return window

    def _labels_for(self, t_start: float, t_end: float) -> dict[str, str | None]:
        cover: dict[str, defaultdict[str, float]] = {task: defaultdict(float) for task in LABEL_CLASSES}
        for start, end, task, label in self._labels:
            overlap = min(end, t_end) - max(start, t_start)
            if overlap > 0:
                cover[task][label] += overlap
        labels: dict[str, str | None] = {}
        for task, by_label in cover.items():
            best = max(by_label.items(), key=itemgetter(1), default=None)  # the first of equals, as most_common
            ok = best is not None and best[1] > (t_end - t_start) / 2 and best[0] in LABEL_CLASSES[task]
            labels[task] = best[0] if best is not None and ok else None
        return labels
