"""InfluxDB: records as points, a durable writer, and InfluxQL reads.

Schema (the same on 1.x, 2.x and 3.x; time precision µs):

- ``affect``: tags ``device``, ``task``, ``source``, ``model``; fields ``label`` (string,
  absent for a low-quality window), ``confidence``, ``p_<class>`` (floats), ``status``,
  ``state`` (strings; ``state`` is the label or why there is none, for state timelines),
  ``off_wrist``, ``motion`` (booleans), ``missing_fraction``, ``t_start_s`` (floats),
  ``true_label`` (string, replays only). Time = window end.
- ``physio``: tags ``device``, ``source``; one field per point among ``eda_us``,
  ``temp_c``, ``hr_bpm``, ``hr_device_bpm``. Time = end of the 1 s bin.
- ``device_status``: tags ``device``, ``source``, ``event``; fields ``value`` (float, if
  any), ``detail`` (JSON string).

Series = devices × (3 tasks × sources × models + sources + sources × events): bounded.

Writes go through influxdb-client's v2 write API (1.8+, 2.x, 3.x), synchronous mode, or,
for InfluxDB 1.x, through its own ``POST /write?db=&rp=&precision=u`` (1.x before 1.8 has
no v2 API), in a worker thread. The target says which API; when it does not, a 404 from
``/api/v2/write`` with a 1.x version on ``/ping`` switches to ``/write`` once, for good.
The client itself keeps failed batches in memory and drops them after its retries, so
:class:`InfluxSink` keeps its own bounded queue and a disk :class:`~storage.spool.Spool`:
while the server is unreachable every batch goes to disk, and the spool is replayed,
oldest first, once a write succeeds again. Writes are idempotent (a point's identity is
measurement + tags + time), so a batch sent twice after an ambiguous failure is harmless.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import logging
import re
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from influxdb_client import InfluxDBClient, Point, WritePrecision
from influxdb_client.client.exceptions import InfluxDBError
from influxdb_client.client.write_api import SYNCHRONOUS
from urllib3.exceptions import HTTPError as Urllib3Error

from common.errors import UserError
from storage.records import AffectRecord, AlertRecord, PhysioRecord, Record
from storage.sink import SinkCounters
from storage.spool import Spool
from storage.states import window_state
from storage.target import InfluxTarget

log = logging.getLogger(__name__)

AFFECT_MEASUREMENT = "affect"
PHYSIO_MEASUREMENT = "physio"
STATUS_MEASUREMENT = "device_status"
ALERT_MEASUREMENT = "alerts"  # tags device, task, rule; fields event, confidence, text (Grafana annotations)
_REJECTED_STATUS = (400, 413, 422)  # the batch itself is bad: sending it again cannot help
_AUTH_STATUS = (401, 403)
_NO_ANSWER = (urllib.error.URLError, OSError, http.client.HTTPException)


def _us(time_s: float) -> int:
    return round(time_s * 1_000_000)


def to_point(r: Record) -> Point:
    """The InfluxDB point of a record (see the schema above)."""
    if isinstance(r, AffectRecord):
        p = (
            Point(AFFECT_MEASUREMENT)
            .tag("device", r.device)
            .tag("task", r.task)
            .tag("source", r.source)
            .tag("model", r.model)
            .field("status", r.status)
            .field("t_start_s", float(r.t_start_s))
            .field("state", window_state(r.label, r.status, r.off_wrist))
        )
        if r.label is not None:
            p.field("label", r.label)
        if r.confidence is not None:
            p.field("confidence", float(r.confidence))
        for cls, prob in r.probs:
            p.field(f"p_{cls}", float(prob))
        if r.off_wrist is not None:
            p.field("off_wrist", r.off_wrist)
        if r.motion is not None:
            p.field("motion", r.motion)
        if r.missing_fraction is not None:
            p.field("missing_fraction", float(r.missing_fraction))
        if r.true_label is not None:
            p.field("true_label", r.true_label)
        if r.calibration is not None:
            p.field("calibration", r.calibration)
    elif isinstance(r, AlertRecord):
        p = (
            Point(ALERT_MEASUREMENT)
            .tag("device", r.device)
            .tag("task", r.task)
            .tag("rule", r.rule)
            .field("event", r.event)
            .field("confidence", float(r.confidence))
            .field("text", r.text)
        )
    elif isinstance(r, PhysioRecord):
        p = Point(PHYSIO_MEASUREMENT).tag("device", r.device).tag("source", r.source).field(r.signal, float(r.value))
    else:
        p = (
            Point(STATUS_MEASUREMENT)
            .tag("device", r.device)
            .tag("source", r.source)
            .tag("event", r.event)
            .field("detail", r.detail)
        )
        if r.value is not None:
            p.field("value", float(r.value))
    return p.time(_us(r.time_s), WritePrecision.US)


def to_lines(records: Sequence[Record]) -> list[str]:
    return [to_point(r).to_line_protocol() for r in records]


def refused_points(message: str, n: int) -> int:
    """How many of a refused batch of ``n`` points the server did not store: a 1.x partial
    write stores the good points and names the others (``dropped=K``); otherwise all ``n``."""
    m = re.search(r"\bdropped=(\d+)", message)
    return min(n, int(m.group(1))) if m else n


def is_1x(version: str | None) -> bool:
    """Whether ``/ping``'s X-Influxdb-Version (``1.6.7~rc0``, ``v2.7.1``) is InfluxDB 1.x."""
    return bool(version and re.match(r"v?1\.", version))


def describe_failure(status: int | None, message: str, *, has_token: bool) -> str:
    """One line saying why a write failed, and for a refused login what to do about it."""
    if status is None:
        return f"no answer ({message})"
    line = f"HTTP {status}: {message}"
    if status in _AUTH_STATUS:
        return line + (
            "; the token was refused"
            if has_token
            else "; InfluxDB wants credentials: set $INFLUX_TOKEN or --token-file (1.x: user:password)"
        )
    return line


class _WriteError(Exception):
    """A write that did not go through; ``status`` is None when the server did not answer."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _error_text(body: bytes) -> str:
    """The ``error`` (1.x) or ``message`` (2.x) of an error body, else its start."""
    text = body.decode(errors="replace").strip()
    try:
        doc = json.loads(text)
    except ValueError:
        return text[:200]
    return str(doc.get("error") or doc.get("message") or text[:200]) if isinstance(doc, dict) else text[:200]


class InfluxSink:
    """Queue → InfluxDB, with a disk spool for whatever the server cannot take now.

    Theory of operation: ``write`` converts records to line protocol and appends them to a
    queue of at most ``max_queue`` points (past that, the oldest go to the spool). One
    writer task sends batches of ``batch_size``: spooled batches first, then the queue.
    A failed send (connection refused, timeout, HTTP 429/5xx, bad token) puts the batch on
    the spool and marks the server down for a back-off that doubles from ``retry_min_s``
    up to ``retry_max_s``; while it is down, the queue is moved to the spool as it fills.
    A batch the server refuses as invalid (400) is counted as ``rejected``. Only when the
    spool would grow past ``max_spool_bytes`` are points dropped, and counted.
    ``close`` sends what it can within ``close_timeout_s`` and spools the rest.
    ``last_error`` says why the latest write failed (None once one succeeds).
    """

    def __init__(
        self,
        target: InfluxTarget,
        *,
        spool_dir: Path,
        batch_size: int = 1000,
        max_queue: int = 20_000,
        max_spool_bytes: int = 512 * 2**20,
        timeout_s: float = 10.0,
        retry_min_s: float = 0.5,
        retry_max_s: float = 30.0,
        close_timeout_s: float = 30.0,
    ) -> None:
        self.target = target
        self.spool_dir = spool_dir
        self.batch_size = batch_size
        self.max_queue = max_queue
        self.max_spool_bytes = max_spool_bytes
        self.timeout_s = timeout_s
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.close_timeout_s = close_timeout_s
        self.counters = SinkCounters()
        self._queue: deque[str] = deque()
        self._spool: Spool | None = None
        self._client: InfluxDBClient | None = None
        self._write_api: Any = None
        self._wake = asyncio.Event()
        self._closing = False
        self._down_until = 0.0
        self._backoff_s = 0.0
        self._task: asyncio.Task | None = None
        self._api = target.api
        self.last_error: str | None = None

    def __repr__(self) -> str:
        return f"InfluxSink({self.target!r})"  # the target's repr leaves the token out

    async def __aenter__(self) -> InfluxSink:
        self._spool = await asyncio.to_thread(Spool, self.spool_dir, max_bytes=self.max_spool_bytes)
        if self._spool.points:
            log.info("spool %s holds %d points from before; sending them first", self.spool_dir, self._spool.points)
        self._client = InfluxDBClient(
            url=self.target.url, token=self.target.token or "", org=self.target.org, timeout=int(self.timeout_s * 1000)
        )
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)
        self._update_pending()
        self._task = asyncio.create_task(self._run(), name="influx-writer")
        self._task.add_done_callback(lambda _: self.counters.changed())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _update_pending(self) -> None:
        assert self._spool is not None
        self.counters.pending = len(self._queue) + self._spool.points
        self.counters.changed()

    async def write(self, records: Sequence[Record]) -> None:
        if not records:
            return
        self._queue.extend(to_lines(records))
        if len(self._queue) > self.max_queue:
            await self._spill(len(self._queue) - self.max_queue)
        self._update_pending()
        self._wake.set()

    async def flush(self) -> None:
        """Return once the queue is empty and the spool too, unless the server is down (then
        everything is on the spool)."""
        self._wake.set()
        loop = asyncio.get_running_loop()
        task = self._task
        await self.counters.wait_for(
            lambda c: (
                (task is None or task.done())
                or (
                    not self._queue
                    and (self._spool is None or not self._spool.points or self._down_until > loop.time())
                )
            ),
            None,
        )
        if task is not None and task.done() and not task.cancelled() and (error := task.exception()) is not None:
            raise error  # the writer died (say, the spool's disk failed): say so, loudly

    async def close(self) -> None:
        if self._task is None:
            return
        self._closing = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), self.close_timeout_s)
        except TimeoutError:
            log.warning(
                "InfluxDB did not take everything within %.0f s; the rest stays on the spool", self.close_timeout_s
            )
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._task = None
        await self._spill(len(self._queue))
        assert self._spool is not None
        if self._spool.points:
            log.warning("%d points wait in spool %s for the next start", self._spool.points, self.spool_dir)
        self._spool.close()
        if self._client is not None:
            self._client.close()

    async def _spill(self, n: int) -> None:
        """Move the oldest ``n`` queued points to the spool (or count them dropped)."""
        while n > 0 and self._queue:
            lines = [self._queue.popleft() for _ in range(min(n, self.batch_size, len(self._queue)))]
            n -= len(lines)
            await self._to_spool(lines)

    async def _to_spool(self, lines: list[str]) -> None:
        assert self._spool is not None
        if await asyncio.to_thread(self._spool.put, lines):
            self.counters.spooled += len(lines)
        else:
            self.counters.dropped += len(lines)
            log.error(
                "spool %s is full (%d bytes): dropped %d points", self.spool_dir, self.max_spool_bytes, len(lines)
            )
        self._update_pending()

    def _post(self, lines: list[str]) -> None:
        """Send one batch (blocking); raises :class:`_WriteError`."""
        body = "\n".join(lines)
        if self._api == "v1":
            return self._post_v1(body)
        try:
            self._write_api.write(
                bucket=self.target.bucket, org=self.target.org, record=body, write_precision=WritePrecision.US
            )
        except InfluxDBError as exc:
            status = getattr(exc, "status", None) or getattr(exc.response, "status", None)
            message = exc.message if isinstance(exc.message, bytes) else str(exc.message).encode()
            raise _WriteError(status, _error_text(message)) from None
        except (Urllib3Error, OSError) as exc:
            raise _WriteError(None, type(exc).__name__) from None

    def _post_v1(self, body: str) -> None:
        params = {"db": self.target.database, "precision": "u"}
        if self.target.retention_policy:
            params["rp"] = self.target.retention_policy
        req = urllib.request.Request(
            f"{self.target.url}/write?{urllib.parse.urlencode(params)}",
            data=body.encode(),
            headers={"Content-Type": "text/plain; charset=utf-8", **_auth_header(self.target.token)},
        )
        try:
            urllib.request.urlopen(req, timeout=self.timeout_s).close()
        except urllib.error.HTTPError as exc:
            raise _WriteError(exc.code, _error_text(exc.read())) from None
        except _NO_ANSWER as exc:
            raise _WriteError(None, str(getattr(exc, "reason", None) or type(exc).__name__)) from None

    def _found_v1(self) -> bool:
        """After a 404 from ``/api/v2/write``: ask ``/ping`` which InfluxDB this is, and settle
        the API for good (1.x before 1.8 has only ``/write``). False if nobody answers."""
        req = urllib.request.Request(f"{self.target.url}/ping", headers=_auth_header(self.target.token))
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                version = resp.headers.get("X-Influxdb-Version")
        except urllib.error.HTTPError as exc:
            version = exc.headers.get("X-Influxdb-Version")
        except _NO_ANSWER:
            return False
        self._api = "v1" if is_1x(version) else "v2"
        if self._api == "v1":
            log.warning(
                "InfluxDB %s at %s has no /api/v2/write: writing with the 1.x /write API instead "
                "(?db=%s in the sink says so up front)",
                version,
                self.target.url,
                self.target.database,
            )
        return self._api == "v1"

    def _count_written(self, n: int, lines: list[str], path: Path | None) -> None:
        self.counters.written += n
        # a lower bound after a partial write, which does not say which points it refused
        self.counters.affect_written += max(
            0, sum(x.startswith(f"{AFFECT_MEASUREMENT},") for x in lines) - (len(lines) - n)
        )
        if path is not None:
            self.counters.replayed += n

    async def _wait_wake(self, timeout_s: float | None) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), timeout_s)
        except TimeoutError:
            pass
        self._wake.clear()

    async def _run(self) -> None:
        assert self._spool is not None
        loop = asyncio.get_running_loop()
        while True:
            down_for = self._down_until - loop.time()
            if down_for > 0:
                await self._spill(len(self._queue))
                if self._closing:
                    return
                await self._wait_wake(down_for)
                continue
            spooled = await asyncio.to_thread(self._spool.oldest)
            if spooled is not None:
                path, lines = spooled
            elif self._queue:
                path, lines = None, [self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))]
            else:
                self._update_pending()
                if self._closing:
                    return
                await self._wait_wake(None)
                continue
            try:
                await asyncio.to_thread(self._post, lines)
            except _WriteError as exc:
                if exc.status == 404 and self._api is None and await asyncio.to_thread(self._found_v1):
                    if path is None:
                        self._queue.extendleft(reversed(lines))
                    continue  # the same batch again, through /write
                if exc.status not in _REJECTED_STATUS:
                    await self._failed(exc, path, lines)
                    continue
                refused = refused_points(exc.message, len(lines))
                self._count_written(len(lines) - refused, lines, path)
                self.counters.rejected += refused
                self.last_error = f"refused {refused} points: HTTP {exc.status}: {exc.message}"
                log.error(
                    "InfluxDB refused %d of a batch of %d points (HTTP %s: %s); they are not retried",
                    refused,
                    len(lines),
                    exc.status,
                    exc.message,
                )
            except asyncio.CancelledError:
                if path is None:  # cut short mid-send: keep it (a duplicate write is harmless)
                    self._queue.extendleft(reversed(lines))
                raise
            else:
                self._count_written(len(lines), lines, path)
                self._api = self._api or "v2"
                self.last_error = None
                if self._backoff_s:
                    log.warning("InfluxDB at %s is back", self.target.url)
                self._backoff_s = 0.0
            if path is not None:
                await asyncio.to_thread(self._spool.remove, path)
            self._update_pending()

    async def _failed(self, exc: _WriteError, path: Path | None, lines: list[str]) -> None:
        """A send that may work later: spool the batch, back off, and say why (once per outage)."""
        self.counters.failures += 1
        self._backoff_s = min(self.retry_max_s, max(self.retry_min_s, 2 * self._backoff_s))
        self._down_until = asyncio.get_running_loop().time() + self._backoff_s
        self.last_error = describe_failure(exc.status, exc.message, has_token=bool(self.target.token))
        if self._backoff_s == self.retry_min_s:
            log.log(
                logging.ERROR if exc.status in _AUTH_STATUS else logging.WARNING,
                "InfluxDB at %s does not take writes (%s); spooling to %s",
                self.target.url,
                self.last_error,
                self.spool_dir,
            )
        if path is None:
            await self._to_spool(lines)
        self._update_pending()


def _auth_header(token: str | None) -> dict[str, str]:
    """1.x credentials (``user:password``) go as Basic auth, 2.x/3.x tokens as ``Token``."""
    if not token:
        return {}
    if ":" in token:
        return {"Authorization": "Basic " + base64.b64encode(token.encode()).decode()}
    return {"Authorization": f"Token {token}"}


def influxql(target: InfluxTarget, query: str, *, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """Run InfluxQL over HTTP ``/query`` (1.x, 2.x via DBRP, 3.x); times in µs since the epoch.

    Returns the ``series`` of the first statement's result (``name``, ``tags``,
    ``columns``, ``values``); raises :class:`UserError` for an unreachable server or a
    query the server refuses.
    """
    params = {"db": target.database, "q": query, "epoch": "u"}
    if target.retention_policy:
        params["rp"] = target.retention_policy
    req = urllib.request.Request(
        f"{target.url}/query",
        data=urllib.parse.urlencode(params).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded", **_auth_header(target.token)},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as exc:
        raise UserError(f"InfluxDB at {target.url}: HTTP {exc.code} {exc.read()[:200]!r}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise UserError(f"InfluxDB at {target.url}: {getattr(exc, 'reason', exc)}") from None
    results = body.get("results") or [{}]
    if "error" in results[0] or "error" in body:
        raise UserError(f"InfluxDB at {target.url}: {results[0].get('error') or body.get('error')}")
    return results[0].get("series", [])


def _literal(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _float(v: Any) -> float | None:
    return None if v is None else float(v)  # InfluxDB's JSON writes 0.0 as 0


def _points(
    target: InfluxTarget, measurement: str, device: str | None, since_s: float | None
) -> Iterator[dict[str, Any]]:
    """Every point of ``measurement`` from ``since_s`` on (all when None), of one device when
    given, as a column -> value dict (``time`` in µs): the one query both readers share."""
    where = [f"time >= {_us(since_s) if since_s is not None else 0}u"]
    if device is not None:
        where.append(f'"device" = {_literal(device)}')
    for series in influxql(target, f'SELECT * FROM "{measurement}" WHERE {" AND ".join(where)}'):
        cols = series["columns"]
        for values in series["values"]:
            yield dict(zip(cols, values))


def read_affect(target: InfluxTarget, *, device: str | None = None, since_s: float | None = None) -> list[AffectRecord]:
    """Affect records back from InfluxDB, in the order of :func:`storage.sqlite.read_affect`."""
    out = [
        AffectRecord(
            time_s=row["time"] / 1e6,
            t_start_s=float(row["t_start_s"]),  # written with every affect point
            device=row["device"],
            task=row["task"],
            source=row["source"],
            model=row["model"],
            label=row.get("label"),
            confidence=_float(row.get("confidence")),
            probs=tuple(sorted((c[2:], float(v)) for c, v in row.items() if c.startswith("p_") and v is not None)),
            status=str(row["status"]),  # written with every affect point
            off_wrist=row.get("off_wrist"),
            motion=row.get("motion"),
            missing_fraction=_float(row.get("missing_fraction")),
            true_label=row.get("true_label"),
            calibration=row.get("calibration"),
        )
        for row in _points(target, AFFECT_MEASUREMENT, device, since_s)
    ]
    return sorted(out, key=lambda r: (r.time_s, r.device, r.task))


def read_alerts(target: InfluxTarget, *, device: str | None = None, since_s: float | None = None) -> list[AlertRecord]:
    """Alert events back from InfluxDB, in the order of :func:`storage.sqlite.read_alerts`."""
    out = [
        AlertRecord(
            time_s=row["time"] / 1e6,
            device=row["device"],
            task=row["task"],
            rule=row["rule"],
            event=row["event"],
            confidence=float(row["confidence"]),
            text=row.get("text") or "",
        )
        for row in _points(target, ALERT_MEASUREMENT, device, since_s)
    ]
    return sorted(out, key=lambda r: (r.time_s, r.device, r.rule))
