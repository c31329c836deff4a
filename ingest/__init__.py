"""Live sources: the E4 over BLE (bleak), a virtual E4, and the E4 streaming-server protocol.

The pure cores (packet codec, stream timestamps, beat detection, the per-device pipeline,
the streaming-server line protocol) do no I/O; :mod:`ingest.ble`, :mod:`ingest.e4server`
and :mod:`ingest.virtual` are the asyncio and bleak edges around them.

Names load on first use (PEP 562), so ``m3sense --help`` does not pay for bleak and
scipy.signal when it imports ``ingest.cli``.
"""

from typing import TYPE_CHECKING

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

if TYPE_CHECKING:  # the same names, for the type checker (at run time they load on first use)
    from ingest.beats import (
        Beat as Beat,
        BeatDetector as BeatDetector,
        BeatOutput as BeatOutput,
        HeartRate as HeartRate,
    )
    from ingest.ble import (
        PLATFORM as PLATFORM,
        BleBackend as BleBackend,
        Link as Link,
        LinkConfig as LinkConfig,
        LinkStats as LinkStats,
        RawLog as RawLog,
        RawRecord as RawRecord,
        Wristband as Wristband,
        backoff_s as backoff_s,
        device_id as device_id,
        read_raw_log as read_raw_log,
        replay_raw_log as replay_raw_log,
        scan as scan,
        stream as stream,
    )
    from ingest.clocks import ScaledClock as ScaledClock, SystemClock as SystemClock
    from ingest.codec import (
        CHARACTERISTICS as CHARACTERISTICS,
        DEFAULT_LAYOUT as DEFAULT_LAYOUT,
        DEVICE_NAME as DEVICE_NAME,
        PERIODIC_RATES_HZ as PERIODIC_RATES_HZ,
        STREAMS as STREAMS,
        BvpIntegrator as BvpIntegrator,
        DecodeError as DecodeError,
        Layout as Layout,
        Packet as Packet,
        decode as decode,
        start_command as start_command,
    )
    from ingest.device import DeviceIngest as DeviceIngest, Emit as Emit, IngestStats as IngestStats
    from ingest.e4server import (
        E4ServerSession as E4ServerSession,
        E4ServerSource as E4ServerSource,
        LineParser as LineParser,
        data_lines as data_lines,
        serve as serve,
    )
    from ingest.timing import Stamp as Stamp, StreamClock as StreamClock
    from ingest.virtual import (
        Faults as Faults,
        VirtualBleakClient as VirtualBleakClient,
        VirtualBleakScanner as VirtualBleakScanner,
        VirtualE4 as VirtualE4,
        VirtualRadio as VirtualRadio,
        VirtualStats as VirtualStats,
        virtual_address as virtual_address,
        virtual_recordings as virtual_recordings,
    )
