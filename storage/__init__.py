"""Storage: affect predictions, device status and 1 Hz physiology into SQLite or InfluxDB.

Bus messages become typed records (:class:`RecordBuilder`, pure); a :class:`Sink`
stores them (:class:`SqliteSink`, :class:`InfluxSink`); :class:`StoreNode` is the async
shell between the bus and a sink; :func:`read_affect` reads the timeline back.

Names load on first use (PEP 562), so that ``m3sense --help``, which imports
``storage.cli``, does not pay for influxdb-client and scipy.
"""

from typing import TYPE_CHECKING

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

if TYPE_CHECKING:  # the same names, for the type checker (at run time they load on first use)
    from storage.connect import (
        default_spool_dir as default_spool_dir,
        open_sink as open_sink,
        read_affect as read_affect,
    )
    from storage.influx import InfluxSink as InfluxSink, influxql as influxql, to_lines as to_lines
    from storage.node import PREFIXES as PREFIXES, StoreNode as StoreNode, device_topics as device_topics
    from storage.physio import (
        SIGNALS as SIGNALS,
        BeatRate as BeatRate,
        MeanBinner as MeanBinner,
        PhysioDownsampler as PhysioDownsampler,
    )
    from storage.records import (
        SOURCES as SOURCES,
        AffectRecord as AffectRecord,
        PhysioRecord as PhysioRecord,
        Record as Record,
        RecordBuilder as RecordBuilder,
        StatusRecord as StatusRecord,
        affect_records as affect_records,
    )
    from storage.sink import Sink as Sink, SinkCounters as SinkCounters
    from storage.sqlite import SqliteSink as SqliteSink
    from storage.target import (
        TOKEN_ENV as TOKEN_ENV,
        InfluxTarget as InfluxTarget,
        SqliteTarget as SqliteTarget,
        parse_sink as parse_sink,
        read_token as read_token,
    )
    from storage.timeline import (
        as_json as as_json,
        json_lines as json_lines,
        parse_since as parse_since,
        plot_timeline as plot_timeline,
    )
