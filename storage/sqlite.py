"""The embedded store: one SQLite file, WAL mode, batched inserts.

Schema (``PRAGMA user_version = 3``); times are Unix seconds (UTC, REAL):

- ``affect``: one row per window and task, ``time_s`` = window end. Primary key
  (device, task, source, model, time_s): writing the same window again replaces it, the
  same rule as an InfluxDB point, so SQLite and InfluxDB hold the same thing.
- ``physio``: one row per device, source, signal and second (``time_s`` = end of it).
- ``device_status``: one row per status event.
- ``alerts``: one row per alert event (``raise`` or ``clear``) of a rule, ``t_s`` = the end
  of the window that decided it (:mod:`storage.alerts`).

WAL lets ``m3sense timeline`` and dashboards read while the store writes. Inserts run
in a worker thread, a batch per transaction, so the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from storage.records import AffectRecord, AlertRecord, PhysioRecord, Record, StatusRecord
from storage.sink import SinkCounters

SCHEMA_VERSION = 3  # 2: affect.calibration; 3: the alerts table (older files are migrated in place)

SCHEMA = """
CREATE TABLE IF NOT EXISTS affect (
    time_s            REAL    NOT NULL,  -- window end, Unix s UTC
    t_start_s         REAL    NOT NULL,  -- window start
    device            TEXT    NOT NULL,
    task              TEXT    NOT NULL,  -- stress | anxiety | emotion
    source            TEXT    NOT NULL,  -- live | replay | unknown
    model             TEXT    NOT NULL,  -- model id
    label             TEXT,              -- NULL for a low-quality window
    confidence        REAL,              -- probability of label, 0..1
    status            TEXT    NOT NULL,  -- ok | low_quality
    probs_json        TEXT    NOT NULL,  -- {"class": probability, ...}
    off_wrist         INTEGER,           -- 0/1, NULL if the window did not say
    motion            INTEGER,
    missing_fraction  REAL,              -- 0..1 of the window's samples missing
    true_label        TEXT,              -- ground truth carried by a replay, else NULL
    calibration       TEXT,              -- the wearer reference the answer used, NULL if none
    PRIMARY KEY (device, task, source, model, time_s)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS affect_time ON affect (time_s);
CREATE TABLE IF NOT EXISTS physio (
    time_s   REAL NOT NULL,   -- end of the 1 s bin
    device   TEXT NOT NULL,
    source   TEXT NOT NULL,
    signal   TEXT NOT NULL,   -- eda_us | temp_c | hr_bpm | hr_device_bpm
    value    REAL NOT NULL,
    PRIMARY KEY (device, source, signal, time_s)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS device_status (
    time_s   REAL NOT NULL,
    device   TEXT NOT NULL,
    source   TEXT NOT NULL,
    event    TEXT NOT NULL,   -- start | end | connected | disconnected | gap | battery | ...
    value    REAL,            -- the event's number (battery fraction, gap s), if any
    detail   TEXT NOT NULL,   -- the rest of the event's meta, JSON
    PRIMARY KEY (device, source, event, time_s)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS alerts (
    t_s        REAL NOT NULL,   -- end of the window that decided it, Unix s UTC
    device     TEXT NOT NULL,
    task       TEXT NOT NULL,
    rule       TEXT NOT NULL,   -- the rule's name in the rules file
    event      TEXT NOT NULL,   -- raise | clear
    confidence REAL NOT NULL,   -- mean p(label) over the dwell that decided it
    text       TEXT NOT NULL,
    PRIMARY KEY (device, rule, t_s)
) WITHOUT ROWID;
"""

_INSERT = {
    AffectRecord: (
        "INSERT OR REPLACE INTO affect VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        lambda r: (
            r.time_s,
            r.t_start_s,
            r.device,
            r.task,
            r.source,
            r.model,
            r.label,
            r.confidence,
            r.status,
            json.dumps(dict(r.probs), separators=(",", ":")),
            r.off_wrist,
            r.motion,
            r.missing_fraction,
            r.true_label,
            r.calibration,
        ),
    ),
    PhysioRecord: (
        "INSERT OR REPLACE INTO physio VALUES (?,?,?,?,?)",
        lambda r: (r.time_s, r.device, r.source, r.signal, r.value),
    ),
    StatusRecord: (
        "INSERT OR REPLACE INTO device_status VALUES (?,?,?,?,?,?)",
        lambda r: (r.time_s, r.device, r.source, r.event, r.value, r.detail),
    ),
    AlertRecord: (
        "INSERT OR REPLACE INTO alerts VALUES (?,?,?,?,?,?,?)",
        lambda r: (r.time_s, r.device, r.task, r.rule, r.event, r.confidence, r.text),
    ),
}


T = TypeVar("T")

LOCK_TIMEOUT_S = 30.0  # how long a store waits for another one writing the same file


def _retry_locked(step: Callable[[], T]) -> T:
    """``step()``, again while another connection holds the file (several stores on one file: the
    switch to WAL and the schema set-up can fail at once with "locked" instead of waiting)."""
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    while True:
        try:
            return step()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _set_up(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across crashes of the process
    if conn.execute("PRAGMA user_version").fetchone()[0] == 1:  # version 2 added a column, in place
        try:
            conn.execute("ALTER TABLE affect ADD COLUMN calibration TEXT")
        except sqlite3.OperationalError as exc:  # another store migrated it a moment ago
            if "duplicate column" not in str(exc):
                raise
    conn.executescript(SCHEMA)  # version 3 added a table: CREATE ... IF NOT EXISTS adds it in place
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    conn.commit()


def connect(path: Path, *, create: bool = True) -> sqlite3.Connection:
    """Open (and with ``create`` set up) a store; refuses a file of another schema version."""
    if not create and not path.exists():
        raise FileNotFoundError(f"{path}: no such store")
    if create:  # health data: a new store is the owner's alone (SQLite gives its -wal and -shm the same mode)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    conn = sqlite3.connect(path, check_same_thread=False, timeout=LOCK_TIMEOUT_S)
    try:
        version = _retry_locked(lambda: conn.execute("PRAGMA user_version").fetchone()[0])
        if version not in (0, 1, 2, SCHEMA_VERSION):
            raise ValueError(f"{path}: store schema version {version}, this code reads {SCHEMA_VERSION}")
        if create:
            _retry_locked(lambda: _set_up(conn))
    except BaseException:
        conn.close()
        raise
    return conn


class SqliteSink:
    """Buffers records and inserts them ``batch_size`` at a time (or on ``flush``)."""

    last_error: str | None = None  # a failed insert raises instead

    def __init__(self, path: Path, *, batch_size: int = 1000) -> None:
        self.path = path
        self.batch_size = batch_size
        self.counters = SinkCounters()
        self._buf: list[Record] = []
        self._conn: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"SqliteSink({str(self.path)!r})"

    async def __aenter__(self) -> SqliteSink:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._conn = await asyncio.to_thread(connect, self.path)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _insert(self, batch: Sequence[Record]) -> None:
        assert self._conn is not None
        groups: dict[type, list[tuple]] = {}
        for r in batch:
            groups.setdefault(type(r), []).append(_INSERT[type(r)][1](r))
        with self._conn:  # one transaction per batch
            for kind, rows in groups.items():
                self._conn.executemany(_INSERT[kind][0], rows)

    async def write(self, records: Sequence[Record]) -> None:
        self._buf.extend(records)
        self.counters.pending = len(self._buf)
        if len(self._buf) >= self.batch_size:
            await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            batch, self._buf = self._buf, []
            if batch:
                await asyncio.to_thread(self._insert, batch)
                self.counters.written += len(batch)
                self.counters.affect_written += sum(isinstance(r, AffectRecord) for r in batch)
            self.counters.pending = len(self._buf)
            self.counters.changed()

    async def close(self) -> None:
        if self._conn is None:
            return
        await self.flush()
        conn, self._conn = self._conn, None
        await asyncio.to_thread(conn.close)


def _select(
    conn: sqlite3.Connection, select: str, time_column: str, order: str, device: str | None, since_s: float | None
) -> list[tuple]:
    """The rows of ``select`` (``SELECT ... FROM table``) from ``since_s`` on (all when None), of
    one device when given, in ``order``: the one filter both readers apply."""
    sql = f"{select} WHERE {time_column} >= ?"
    args: list = [since_s if since_s is not None else float("-inf")]
    if device is not None:
        sql += " AND device = ?"
        args.append(device)
    return conn.execute(f"{sql} ORDER BY {order}", args).fetchall()


def read_affect(path: Path, *, device: str | None = None, since_s: float | None = None) -> list[AffectRecord]:
    """Affect records of a store in time order, optionally of one device and from a time on."""
    conn = connect(path, create=False)
    try:
        rows = _select(conn, "SELECT * FROM affect", "time_s", "time_s, device, task", device, since_s)
    finally:
        conn.close()
    return [
        AffectRecord(
            time_s=r[0],
            t_start_s=r[1],
            device=r[2],
            task=r[3],
            source=r[4],
            model=r[5],
            label=r[6],
            confidence=r[7],
            status=r[8],
            probs=tuple(sorted(json.loads(r[9]).items())),
            off_wrist=None if r[10] is None else bool(r[10]),
            motion=None if r[11] is None else bool(r[11]),
            missing_fraction=r[12],
            true_label=r[13],
            calibration=r[14] if len(r) > 14 else None,
        )
        for r in rows
    ]


def read_alerts(path: Path, *, device: str | None = None, since_s: float | None = None) -> list[AlertRecord]:
    """Alert events of a store in time order (then device, rule); none in a store without the table."""
    conn = connect(path, create=False)
    try:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alerts'").fetchone():
            return []
        select = "SELECT t_s, device, task, rule, event, confidence, text FROM alerts"
        rows = _select(conn, select, "t_s", "t_s, device, rule", device, since_s)
    finally:
        conn.close()
    return [
        AlertRecord(time_s=r[0], device=r[1], task=r[2], rule=r[3], event=r[4], confidence=r[5], text=r[6])
        for r in rows
    ]
