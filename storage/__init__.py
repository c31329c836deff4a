"""Storage: affect predictions, device status and 1 Hz physiology into SQLite or InfluxDB.

Bus messages become typed records (:class:`RecordBuilder`, pure); a :class:`Sink`
stores them (:class:`SqliteSink`, :class:`InfluxSink`); :class:`StoreNode` is the async
shell between the bus and a sink; :func:`read_affect` reads the timeline back.

Names load on first use (PEP 562), so that ``m3sense --help``, which imports
``storage.cli``, does not pay for influxdb-client and scipy.
"""

from importlib import import_module
from typing import Any

_WHERE = {
    "default_spool_dir": "connect", "open_sink": "connect", "read_affect": "connect",
    "InfluxSink": "influx", "influxql": "influx", "to_lines": "influx",
    "PREFIXES": "node", "StoreNode": "node", "device_topics": "node",
    "SIGNALS": "physio", "BeatRate": "physio", "MeanBinner": "physio", "PhysioDownsampler": "physio",
    "SOURCES": "records", "AffectRecord": "records", "PhysioRecord": "records", "Record": "records",
    "RecordBuilder": "records", "StatusRecord": "records", "affect_records": "records",
    "Sink": "sink", "SinkCounters": "sink",
    "SqliteSink": "sqlite",
    "TOKEN_ENV": "target", "InfluxTarget": "target", "SqliteTarget": "target", "parse_sink": "target",
    "read_token": "target",
    "as_json": "timeline", "json_lines": "timeline", "parse_since": "timeline", "plot_timeline": "timeline",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'storage' has no attribute {name!r}")
    value = getattr(import_module(f"storage.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
