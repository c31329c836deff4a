"""Live sources: the E4 over BLE (bleak), a virtual E4, and the E4 streaming-server protocol.

The pure cores (packet codec, stream timestamps, beat detection, the per-device pipeline,
the streaming-server line protocol) do no I/O; :mod:`ingest.ble`, :mod:`ingest.e4server`
and :mod:`ingest.virtual` are the asyncio and bleak edges around them.

Names load on first use (PEP 562), so ``m3sense --help`` does not pay for bleak and
scipy.signal when it imports ``ingest.cli``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ingest.beats": ("Beat", "BeatDetector", "BeatOutput", "HeartRate"),
    "ingest.ble": ("PLATFORM", "BleBackend", "Link", "LinkConfig", "LinkStats", "RawLog", "RawRecord", "Wristband",
                   "backoff_s", "device_id", "read_raw_log", "replay_raw_log", "scan", "stream"),
    "ingest.clocks": ("ScaledClock", "SystemClock"),
    "ingest.codec": ("CHARACTERISTICS", "DEFAULT_LAYOUT", "DEVICE_NAME", "PERIODIC_RATES_HZ", "STREAMS",
                     "BvpIntegrator", "DecodeError", "Layout", "Packet", "decode", "start_command"),
    "ingest.device": ("DeviceIngest", "Emit", "IngestStats"),
    "ingest.e4server": ("E4ServerSession", "E4ServerSource", "LineParser", "data_lines", "serve"),
    "ingest.timing": ("Stamp", "StreamClock"),
    "ingest.virtual": ("Faults", "VirtualBleakClient", "VirtualBleakScanner", "VirtualE4", "VirtualRadio",
                       "VirtualStats", "virtual_address", "virtual_recordings"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'ingest' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
