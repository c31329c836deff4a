"""pylsl outlets, one per device and stream, made on demand and described so LabRecorder and
XDF readers see channel names, units, rates and the device (the I/O edge of :mod:`labstream`)."""

from __future__ import annotations

import logging
import time
from collections import Counter

import numpy as np
import pylsl

from labstream.streams import ALL_SPECS, Chunk, ClockMap, StreamSpec

log = logging.getLogger(__name__)

_FORMATS = {"float32": pylsl.cf_float32, "string": pylsl.cf_string}


def stream_info(spec: StreamSpec, device: str, clock: ClockMap) -> pylsl.StreamInfo:
    """The StreamInfo of ``spec`` for ``device``, with the XDF-style ``desc`` metadata."""
    info = pylsl.StreamInfo(
        spec.name(device),
        spec.lsl_type,
        len(spec.channels),
        spec.nominal_hz,
        _FORMATS[spec.channel_format],
        spec.source_id(device),
    )
    desc = info.desc()
    channels = desc.append_child("channels")
    for name, unit in zip(spec.channels, spec.units):
        ch = channels.append_child("channel")
        ch.append_child_value("label", name)
        ch.append_child_value("unit", unit)
        ch.append_child_value("type", spec.lsl_type)
    acq = desc.append_child("acquisition")
    acq.append_child_value("manufacturer", "Empatica")
    acq.append_child_value("model", "E4")
    ours = desc.append_child("m3sense")
    ours.append_child_value("device", device)
    ours.append_child_value("stream", spec.stream)
    # Unix time of a sample = its LSL time stamp - lsl_minus_unix_s
    ours.append_child_value("lsl_minus_unix_s", repr(clock.offset_s))
    return info


class Outlets:
    """``push(chunk)`` into the outlet of its device and stream, creating it on first use;
    ``declare(device)`` creates all of a device's outlets up front, so a recorder can pick
    them before the first sample (an LSL consumer receives only what is pushed after it connects).
    ``pushed`` counts samples per ``(device, stream)``."""

    def __init__(self, clock: ClockMap | None = None) -> None:
        self.clock = clock or ClockMap(pylsl.local_clock() - time.time())
        self._outlets: dict[tuple[str, str], pylsl.StreamOutlet] = {}
        self.pushed: Counter[tuple[str, str]] = Counter()

    def outlet(self, spec: StreamSpec, device: str) -> pylsl.StreamOutlet:
        key = (device, spec.stream)
        out = self._outlets.get(key)
        if out is None:
            out = self._outlets[key] = pylsl.StreamOutlet(stream_info(spec, device, self.clock))
            log.info("lsl: outlet %s (%s)", spec.name(device), spec.source_id(device))
        return out

    def declare(self, device: str) -> None:
        for spec in ALL_SPECS:
            self.outlet(spec, device)

    def push(self, chunk: Chunk) -> None:
        out = self.outlet(chunk.spec, chunk.device)
        stamps = np.asarray(self.clock.to_lsl(chunk.times_s), dtype=np.float64).tolist()
        out.push_chunk(chunk.values, stamps)
        self.pushed[(chunk.device, chunk.spec.stream)] += len(stamps)

    def consumers(self) -> int:
        return sum(bool(o.have_consumers()) for o in self._outlets.values())

    def close(self) -> None:
        self._outlets.clear()  # pylsl destroys each outlet when its object goes
