"""From a SINK address to a sink, a reader, and the spool folder it uses."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path

from common.errors import UserError
from storage import influx, sqlite
from storage.records import AffectRecord, AlertRecord
from storage.sink import Sink
from storage.target import InfluxTarget, MqttTarget, SqliteTarget, Target


def default_spool_dir(target: InfluxTarget, environ: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_STATE_HOME/m3sense/spool/<host-port-bucket>-<hash>``: one spool per target,
    so points spooled for one server are never sent to another."""
    state = Path(environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    ident = f"{target.url}|{target.bucket}"
    name = re.sub(r"[^A-Za-z0-9]+", "-", ident.split("://", 1)[1]).strip("-")[:60]
    return state / "m3sense" / "spool" / f"{name}-{hashlib.sha256(ident.encode()).hexdigest()[:8]}"


def open_sink(target: Target, *, spool_dir: Path | None = None, **options: int) -> Sink:
    """The sink for a target (use it with ``async with``); ``options`` go to its constructor."""
    if isinstance(target, SqliteTarget):
        return sqlite.SqliteSink(target.path, **options)
    if isinstance(target, MqttTarget):
        from storage.mqtt import MqttSink  # aiomqtt loads only for an MQTT sink

        return MqttSink(target, **options)
    return influx.InfluxSink(target, spool_dir=spool_dir or default_spool_dir(target), **options)


def read_affect(target: Target, *, device: str | None = None, since_s: float | None = None) -> list[AffectRecord]:
    """The stored affect records in time order (then device, task)."""
    readable = _readable(target)
    if isinstance(readable, SqliteTarget):
        return sqlite.read_affect(readable.path, device=device, since_s=since_s)
    return influx.read_affect(readable, device=device, since_s=since_s)


def read_alerts(target: Target, *, device: str | None = None, since_s: float | None = None) -> list[AlertRecord]:
    """The stored alert events in time order (then device, rule)."""
    readable = _readable(target)
    if isinstance(readable, SqliteTarget):
        return sqlite.read_alerts(readable.path, device=device, since_s=since_s)
    return influx.read_alerts(readable, device=device, since_s=since_s)


def _readable(target: Target) -> SqliteTarget | InfluxTarget:
    """The target, if it keeps history to read back."""
    if isinstance(target, MqttTarget):
        raise UserError(
            f"{target.address}: MQTT keeps only the latest state; read history from a sqlite: or influx:// sink"
        )
    return target
