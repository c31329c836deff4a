"""What each LSL outlet is and which samples go into it (pure: no pylsl, no sockets).

One outlet per device and stream. LabRecorder tells streams apart by ``source_id`` and
re-attaches to a stream that restarts with the same one, so it is fixed per device and
stream (``m3sense/<device>/<stream>``), never per process.

Bus times are Unix seconds; LSL times are on the LSL clock (``local_clock()``, seconds
since some machine-local origin). :class:`ClockMap` turns one into the other with a single
offset taken at start, so samples keep the spacing the wristband (or recording) gave them
and every stream of a device shares one mapping; the offset is written into each stream's
description, so Unix time can be recovered from an XDF file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from bus import AFFECT, RAW, Message
from common.jsonvalues import is_finite_number, mapping_or_empty
from e4 import RATES_HZ
from storage.records import CLASSES, TASKS
from storage.states import window_state

IRREGULAR = 0.0  # LSL's nominal rate for event streams


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """One kind of outlet: ``stream`` is its short name, ``lsl_type`` the LSL content type."""

    stream: str
    lsl_type: str
    channels: tuple[str, ...]
    units: tuple[str, ...]
    nominal_hz: float
    channel_format: str  # "float32" | "string"

    def name(self, device: str) -> str:
        return f"m3sense {device} {self.stream}"

    def source_id(self, device: str) -> str:
        return f"m3sense/{device}/{self.stream}"


def _spec(
    stream: str, lsl_type: str, channels: tuple[str, ...], unit: str, nominal_hz: float, channel_format: str = "float32"
) -> StreamSpec:
    return StreamSpec(stream, lsl_type, channels, (unit,) * len(channels), nominal_hz, channel_format)


#: the raw bus modality -> its outlet (rates are the E4's native ones, :data:`e4.RATES_HZ`)
RAW_SPECS: dict[str, StreamSpec] = {
    "eda": _spec("EDA", "EDA", ("eda",), "microsiemens", RATES_HZ["eda"]),
    "bvp": _spec("BVP", "PPG", ("bvp",), "a.u.", RATES_HZ["bvp"]),
    "temp": _spec("TEMP", "Temperature", ("temp",), "celsius", RATES_HZ["temp"]),
    "acc": _spec("ACC", "Accelerometer", ("acc_x", "acc_y", "acc_z"), "1/64 g", RATES_HZ["acc"]),
    "hr": _spec("HR", "HeartRate", ("hr",), "bpm", RATES_HZ["hr"]),
    "ibi": _spec("IBI", "IBI", ("ibi",), "s", IRREGULAR),
    "tag": _spec("Tags", "Markers", ("tag",), "", IRREGULAR, "string"),
}

#: per window: the state of each task (its label, or why there is none: low_quality, off_wrist, ...)
AFFECT_STATE = _spec("Affect", "Affect", TASKS, "", IRREGULAR, "string")


def _affect_number_channels() -> tuple[tuple[str, ...], tuple[str, ...]]:
    names: list[str] = []
    for task in TASKS:
        names.append(f"{task}_confidence")
        names += [f"{task}_p_{c}" for c in sorted(CLASSES[task])]
    return tuple(names), ("probability",) * len(names)


_names, _units = _affect_number_channels()
#: per window: each task's confidence and class probabilities (NaN where the window has none)
AFFECT_NUMBERS = StreamSpec("AffectProb", "AffectProbability", _names, _units, IRREGULAR, "float32")

ALL_SPECS: tuple[StreamSpec, ...] = (*RAW_SPECS.values(), AFFECT_STATE, AFFECT_NUMBERS)


@dataclass(frozen=True, slots=True)
class ClockMap:
    """Unix seconds <-> LSL clock: ``lsl = unix + offset_s`` (one offset for the whole run)."""

    offset_s: float

    def to_lsl(self, unix_s: np.ndarray | float) -> np.ndarray | float:
        return unix_s + self.offset_s


@dataclass(frozen=True, slots=True)
class Chunk:
    """Samples for one outlet: ``values`` (n, channels) or a list of string rows; ``times_s`` Unix."""

    spec: StreamSpec
    device: str
    values: np.ndarray | list[list[str]]
    times_s: np.ndarray


def chunks_of(msg: Message) -> list[Chunk]:
    """The samples a bus message contributes to LSL outlets (none for what has no outlet)."""
    if msg.kind == RAW:
        spec = RAW_SPECS.get(msg.modality)
        if spec is None:
            return []
        if spec.channel_format == "string":  # a tag: one marker at its time
            return [Chunk(spec, msg.device, [[msg.modality]], np.array([msg.t0_s]))]
        values = np.asarray(msg.samples, dtype=np.float64).reshape(-1, len(spec.channels))
        n = values.shape[0]
        if n == 0:
            return []
        step = 1.0 / msg.fs_hz if msg.fs_hz and msg.fs_hz > 0 else 0.0
        return [Chunk(spec, msg.device, values, msg.t0_s + step * np.arange(n))]
    if msg.kind == AFFECT and isinstance(msg.meta.get("tasks"), Mapping):
        meta = msg.meta
        tasks = meta["tasks"]
        quality = mapping_or_empty(meta.get("quality"))
        t_end = meta.get("t_end", msg.t0_s)
        if not isinstance(t_end, (int, float)) or not math.isfinite(t_end):
            return []
        states, numbers = [], []
        for task in TASKS:
            result = tasks.get(task)
            result = result if isinstance(result, Mapping) else {"status": "no_answer"}
            label = result.get("label") if isinstance(result.get("label"), str) else None
            states.append(
                window_state(label, str(result.get("status") or "ok"), quality.get("off_wrist"))
                if task in tasks
                else "no_answer"
            )
            probs = mapping_or_empty(result.get("probs"))
            conf = result.get("confidence")
            numbers.append(_number(conf))
            numbers += [_number(probs.get(c)) for c in sorted(CLASSES[task])]
        t = np.array([float(t_end)])
        return [Chunk(AFFECT_STATE, msg.device, [states], t), Chunk(AFFECT_NUMBERS, msg.device, np.array([numbers]), t)]
    return []


def _number(value: object) -> float:
    return float(value) if is_finite_number(value) else math.nan
