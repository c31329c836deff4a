"""Storage: affect predictions, device status and 1 Hz physiology into SQLite or InfluxDB.

Bus messages become typed records (:class:`RecordBuilder`, pure); a :class:`Sink`
stores them (:class:`SqliteSink`, :class:`InfluxSink`); :class:`StoreNode` is the async
shell between the bus and a sink; :func:`read_affect` reads the timeline back.

Names load on first use (PEP 562), so that ``m3sense --help``, which imports
``storage.cli``, does not pay for influxdb-client and scipy.
"""

from common.lazy import lazy_surface

__all__, __getattr__, __dir__ = lazy_surface(
    __name__,
    {
        "default_spool_dir": "connect",
        "open_sink": "connect",
        "read_affect": "connect",
        "InfluxSink": "influx",
        "influxql": "influx",
        "to_lines": "influx",
        "PREFIXES": "node",
        "StoreNode": "node",
        "device_topics": "node",
        "SIGNALS": "physio",
        "BeatRate": "physio",
        "MeanBinner": "physio",
        "PhysioDownsampler": "physio",
        "SOURCES": "records",
        "AffectRecord": "records",
        "PhysioRecord": "records",
        "Record": "records",
        "RecordBuilder": "records",
        "StatusRecord": "records",
        "affect_records": "records",
        "Sink": "sink",
        "SinkCounters": "sink",
        "SqliteSink": "sqlite",
        "TOKEN_ENV": "target",
        "InfluxTarget": "target",
        "SqliteTarget": "target",
        "parse_sink": "target",
        "read_token": "target",
        "as_json": "timeline",
        "json_lines": "timeline",
        "parse_since": "timeline",
        "plot_timeline": "timeline",
    },
)
