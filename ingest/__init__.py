"""Live sources: the E4 over BLE (bleak), a virtual E4, and the E4 streaming-server protocol.

The pure cores (packet codec, stream timestamps, beat detection, the per-device pipeline,
the streaming-server line protocol) do no I/O; :mod:`ingest.ble`, :mod:`ingest.e4server`
and :mod:`ingest.virtual` are the asyncio and bleak edges around them.

Names load on first use (PEP 562), so ``m3sense --help`` does not pay for bleak and
scipy.signal when it imports ``ingest.cli``.
"""

from common.lazy import lazy_surface

_EXPORTS = {
    "beats": ("Beat", "BeatDetector", "BeatOutput", "HeartRate"),
    "ble": (
        "PLATFORM",
        "BleBackend",
        "Link",
        "LinkConfig",
        "LinkStats",
        "RawLog",
        "RawRecord",
        "Wristband",
        "backoff_s",
        "device_id",
        "read_raw_log",
        "replay_raw_log",
        "scan",
        "stream",
    ),
    "clocks": ("ScaledClock", "SystemClock"),
    "codec": (
        "CHARACTERISTICS",
        "DEFAULT_LAYOUT",
        "DEVICE_NAME",
        "PERIODIC_RATES_HZ",
        "STREAMS",
        "BvpIntegrator",
        "DecodeError",
        "Layout",
        "Packet",
        "decode",
        "start_command",
    ),
    "device": ("DeviceIngest", "Emit", "IngestStats"),
    "e4server": ("E4ServerSession", "E4ServerSource", "LineParser", "data_lines", "serve"),
    "timing": ("Stamp", "StreamClock"),
    "virtual": (
        "Faults",
        "VirtualBleakClient",
        "VirtualBleakScanner",
        "VirtualE4",
        "VirtualRadio",
        "VirtualStats",
        "virtual_address",
        "virtual_recordings",
    ),
}
__all__, __getattr__, __dir__ = lazy_surface(
    __name__, {name: module for module, names in _EXPORTS.items() for name in names}
)
