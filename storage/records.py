"""What the store keeps: typed records made from bus messages (pure, no I/O).

One :class:`AffectRecord` per window and task (timestamp = the window's end), one
:class:`PhysioRecord` per device, signal and second (downsampled raw physiology for
dashboards), one :class:`StatusRecord` per status event, one :class:`AlertRecord` per alert
event (made by :mod:`storage.alerts` from affect records, not from the bus). Every record carries
``source`` (``live``, ``replay`` or ``unknown``): replayed data never shares a series
with live data, so it cannot overwrite it in InfluxDB, where a point's identity is
measurement + tags + time.

Everything that becomes an InfluxDB tag is bounded here (device ids are bus topic
segments, tasks and sources come from short lists, names are checked), so a bad
message cannot blow up series cardinality; what fails a check is counted in
:attr:`RecordBuilder.rejected` and dropped, never raised.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, overload

from bus import AFFECT, RAW, STATUS, Message
from bus.message import MAX_TIME_S
from common.jsonvalues import mapping_or_empty
from e4 import RATES_HZ, rate_is_plausible
from storage.physio import PhysioDownsampler

SOURCES = ("live", "replay", "unknown")
TASKS = ("stress", "anxiety", "emotion")
#: the classes of each task in their natural order (for display; other names are stored too)
CLASSES = {"stress": ("baseline", "amusement", "stress"), "anxiety": ("low", "high"), "emotion": ("low", "high")}
_CALIBRATION = re.compile(r"^[a-z]{1,16}@[0-9]{1,12}-[0-9]{1,12}$")  # inference.calibration.Reference.id
_NAME = re.compile(r"^[A-Za-z0-9_]{1,32}$")  # class names, status events: tag and field-name safe


@dataclass(frozen=True, slots=True, kw_only=True)
class AffectRecord:
    """One task's prediction for one window. ``probs`` is sorted by class name."""

    time_s: float  # window end (Unix s, UTC)
    t_start_s: float  # window start
    device: str
    task: str
    source: str
    model: str
    label: str | None  # None for a low-quality window
    confidence: float | None
    probs: tuple[tuple[str, float], ...]
    status: str  # "ok" | "low_quality"
    off_wrist: bool | None
    motion: bool | None
    missing_fraction: float | None
    true_label: str | None = None  # ground truth a replay attached to the window
    calibration: str | None = None  # the wearer reference the answer used ("calm@T0-T1", "tag@..."), if any


@dataclass(frozen=True, slots=True, kw_only=True)
class PhysioRecord:
    """One downsampled value: ``signal`` is ``eda_us``, ``temp_c``, ``hr_bpm`` (from BVP
    beats) or ``hr_device_bpm`` (the device's own HR stream); ``time_s`` is the end of the
    second it summarises."""

    time_s: float
    device: str
    source: str
    signal: str
    value: float


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusRecord:
    """A device status event. ``value`` holds the event's number where it has one
    (battery fraction, gap length in s); ``detail`` the rest of its meta as JSON."""

    time_s: float
    device: str
    source: str
    event: str
    value: float | None
    detail: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertRecord:
    """An alert rule deciding at a window's end: ``event`` is ``raise`` or ``clear``;
    ``confidence`` the mean probability of the rule's label over the dwell that decided it."""

    time_s: float  # the end of the window that decided it
    device: str
    task: str
    rule: str
    event: str  # "raise" | "clear"
    confidence: float
    text: str


Record = AffectRecord | PhysioRecord | StatusRecord | AlertRecord

#: meta keys of a status event that may carry its number, in order of preference.
_STATUS_VALUE_KEYS = ("value", "fraction", "battery", "gap_s", "duration_s", "missing_s")


class Rejected(ValueError):
    """A message that cannot become records; ``reason`` is one word for counting."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def _source(value: Any) -> str:
    return value if value in SOURCES else "unknown"


@overload
def _finite(value: Any, what: str, *, optional: Literal[False]) -> float: ...
@overload
def _finite(value: Any, what: str, *, optional: bool = True) -> float | None: ...
def _finite(value: Any, what: str, *, optional: bool = True) -> float | None:
    if value is None and optional:
        return None
    try:
        if not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value):
            return float(value)
    except OverflowError:  # an integer beyond any float
        pass
    raise Rejected("value", f"{what} is {value!r:.40}")


def _time(value: Any, what: str) -> float:
    """A Unix time the bus could carry (a window's end of 1e300 s is no time a sink can store)."""
    t = _finite(value, what, optional=False)
    if not 0 <= t < MAX_TIME_S:
        raise Rejected("time", f"{what} is {value!r}")
    return t


def _flag(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def affect_records(msg: Message) -> list[AffectRecord]:
    """The records of one affect message (see the contract in notes/interfaces.md)."""
    meta = msg.meta
    tasks = meta.get("tasks")
    if not isinstance(tasks, Mapping) or not tasks:
        raise Rejected("affect", "meta.tasks missing or empty")
    t_end = _time(meta.get("t_end", msg.t0_s), "t_end")
    t_start = _time(meta.get("t_start", t_end), "t_start")
    quality = mapping_or_empty(meta.get("quality"))
    truth = mapping_or_empty(meta.get("labels"))
    model = meta.get("model")
    if not isinstance(model, str) or not 0 < len(model) <= 64:
        raise Rejected("affect", f"model id {model!r}")
    out = []
    for task, result in tasks.items():
        if task not in TASKS or not isinstance(result, Mapping):
            raise Rejected("affect", f"task {task!r}")
        label = result.get("label")
        raw_probs = result.get("probs") or {}
        if not isinstance(raw_probs, Mapping) or not all(_NAME.match(str(c)) for c in raw_probs):
            raise Rejected("affect", f"{task} probs {raw_probs!r}")
        probs = tuple(sorted((str(c), _finite(p, f"p_{c}", optional=False)) for c, p in raw_probs.items()))
        if label is not None and (not isinstance(label, str) or not _NAME.match(label)):
            raise Rejected("affect", f"{task} label {label!r}")
        true_label = truth.get(task)
        missing = quality.get("missing_fraction")
        task_model = result.get("model", model)
        if not isinstance(task_model, str) or not 0 < len(task_model) <= 64:
            raise Rejected("affect", f"{task} model id {task_model!r}")
        calibration = result.get("calibration")
        if calibration is not None and (not isinstance(calibration, str) or not _CALIBRATION.match(calibration)):
            raise Rejected("affect", f"{task} calibration {calibration!r}")
        out.append(
            AffectRecord(
                time_s=t_end,
                t_start_s=t_start,
                device=msg.device,
                task=task,
                source=_source(meta.get("source")),
                model=task_model,
                label=label,
                confidence=_finite(result.get("confidence"), f"{task} confidence"),
                probs=probs,
                status=str(result.get("status", "ok"))[:16],
                off_wrist=_flag(quality.get("off_wrist")),
                motion=_flag(quality.get("motion")),
                missing_fraction=_finite(missing, "missing_fraction") if missing is not None else None,
                true_label=true_label if isinstance(true_label, str) and _NAME.match(true_label) else None,
                calibration=calibration,
            )
        )
    return out


def status_record(msg: Message, source: str) -> StatusRecord:
    event = msg.meta.get("event")
    if not isinstance(event, str) or not _NAME.match(event):
        raise Rejected("status", f"event {event!r}")
    value = None
    for key in _STATUS_VALUE_KEYS:
        if isinstance(msg.meta.get(key), (int, float)) and not isinstance(msg.meta.get(key), bool):
            value = _finite(msg.meta[key], key)
            break
    if value is None and msg.samples.size == 1:  # battery: samples=[fraction]
        value = _finite(float(msg.samples.reshape(-1)[0]), "sample")
    detail = {k: v for k, v in msg.meta.items() if k not in ("event", "source")}
    return StatusRecord(
        time_s=msg.t0_s,
        device=msg.device,
        source=source,
        event=event,
        value=value,
        detail=json.dumps(detail, separators=(",", ":"), sort_keys=True),
    )


class RecordBuilder:
    """Bus messages in, records out: ``push(msg) -> records``, ``flush() -> records``.

    Raw messages carry no ``source``; a device's source is the one its latest status or
    affect message named (a replay announces itself with a ``start`` status before its
    first raw message), ``unknown`` until then.
    """

    def __init__(self, *, physio_bin_s: float = 1.0, hr_window_s: float = 10.0) -> None:
        self._physio = PhysioDownsampler(bin_s=physio_bin_s, hr_window_s=hr_window_s)
        self._source: dict[str, str] = {}
        self.rejected: Counter[str] = Counter()

    def _physio_records(self, device: str, values: list[tuple[str, float, float]]) -> list[Record]:
        source = self._source.get(device, "unknown")
        return [PhysioRecord(time_s=t, device=device, source=source, signal=s, value=v) for s, t, v in values]

    def push(self, msg: Message) -> list[Record]:
        try:
            if msg.kind == AFFECT:
                records = affect_records(msg)
                self._source[msg.device] = records[0].source
                return list(records)
            if msg.kind == STATUS:
                if "source" in msg.meta:
                    self._source[msg.device] = _source(msg.meta["source"])
                out: list[Record] = []
                if msg.meta.get("event") == "end":  # the stream is over: close its open bins first
                    out += self._physio_records(msg.device, self._physio.flush_device(msg.device))
                out.append(status_record(msg, self._source.get(msg.device, "unknown")))
                return out
            if msg.kind == RAW:
                if msg.fs_hz and msg.modality in RATES_HZ and not rate_is_plausible(msg.modality, msg.fs_hz):
                    raise Rejected("rate", f"{msg.topic} at {msg.fs_hz} Hz")
                return self._physio_records(msg.device, self._physio.push(msg))
        except Rejected as exc:
            self.rejected[exc.reason] += 1
            return []
        self.rejected["kind"] += 1
        return []

    def bus_gap(self, msg: Message, missed: int, **detail: Any) -> StatusRecord:
        """A ``bus_gap`` status event: ``missed`` messages of ``msg``'s topic never reached
        the store (its sequence numbers jumped), so dashboards show the loss beside the data."""
        return StatusRecord(
            time_s=msg.t0_s,
            device=msg.device,
            source=self._source.get(msg.device, "unknown"),
            event="bus_gap",
            value=float(missed),
            detail=json.dumps({"topic": msg.topic, **detail}, separators=(",", ":")),
        )

    def forget(self, which: Callable[[str], bool]) -> None:
        """Drop the open physiology bins of the devices ``which`` picks, unwritten (another store
        took them over and rebuilds those bins from the stream)."""
        for device in self._physio.devices():
            if which(device):
                self._physio.flush_device(device)

    def flush(self) -> list[Record]:
        out: list[Record] = []
        for device in self._physio.devices():
            out += self._physio_records(device, self._physio.flush_device(device))
        return out
