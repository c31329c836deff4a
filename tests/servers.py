"""Real InfluxDB for the storage tests and benchmarks: ``influxd`` as a subprocess, plus a
test-only proxy that turns the v2 write API into the v1 one.

Debian ships InfluxDB 1.6.7, which predates ``/api/v2/write`` (1.8+). The product writes
1.x with its own ``/write`` API, straight to ``influxd``. To test its v2 path (2.x, 3.x,
1.8+) against a real server too, :class:`V2WriteProxy` translates each
``POST /api/v2/write?org=&bucket=db[/rp]&precision=`` into ``POST /write?db=&rp=&precision=``
(ignoring the token, as 1.6 runs without auth here) and passes every other request
(``/query``, ``/ping``) through unchanged, so the real client reaches a real server.
While influxd is down the proxy answers 503, which is what a client sees behind any
reverse proxy. Everything listens on 127.0.0.1 only.

Fixtures (import them into a test module or conftest): ``influxd`` (a started server,
module scope, database ``m3sense``), ``influx_v1`` (the same server with an empty
database, written without a proxy), ``influx_proxy`` (a proxy in front of it),
``influxd_auth`` (a second server that wants credentials, module scope).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import queue
import shutil
import socket
import subprocess
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import needs, skip_or_fail

if TYPE_CHECKING:
    from storage.sink import SinkCounters
    from storage.target import InfluxTarget

INFLUXD = shutil.which("influxd")
INFLUX_CLI = shutil.which("influx")
NEEDS_INFLUXD = needs(INFLUXD is not None, reason="influxd not installed (apt-get install influxdb influxdb-client)")
DATABASE = "m3sense"

_PRECISION_V1 = {"ns": "n", "us": "u", "ms": "ms", "s": "s"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class InfluxServer:
    """``influxd`` 1.x on free loopback ports with its data in ``folder``.

    ``start()`` returns once the HTTP listener is up (it reads influxd's log for the line
    saying so, no polling); ``stop()`` ends it; ``start()`` again brings it back on the
    same port with the same data, which is how a test makes an outage. With ``auth`` it
    wants credentials: ``credentials`` (``user:password``) are an admin's, created by
    :func:`influxd_auth`.
    """

    def __init__(self, folder: Path, *, auth: bool = False) -> None:
        self.folder = folder
        self.auth = auth
        self.credentials = f"admin:{os.urandom(8).hex()}" if auth else None
        self.http_port = free_port()
        self.config = folder / "influxdb.conf"
        folder.mkdir(parents=True, exist_ok=True)
        self.config.write_text(self._config(free_port()))
        self._proc: subprocess.Popen | None = None
        self._log: list[str] = []

    def _config(self, rpc_port: int) -> str:
        d = self.folder
        return f"""
reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"
[meta]
  dir = "{d}/meta"
[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  query-log-enabled = false
[http]
  enabled = true
  bind-address = "127.0.0.1:{self.http_port}"
  auth-enabled = {str(self.auth).lower()}
  log-enabled = false
  pprof-enabled = false
[monitor]
  store-enabled = false
[subscriber]
  enabled = false
[continuous_queries]
  enabled = false
[ifql]
  enabled = false
  bind-address = "127.0.0.1:{free_port()}"
[logging]
  level = "info"
  suppress-logo = true
"""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = 60.0) -> InfluxServer:
        assert INFLUXD is not None
        proc = subprocess.Popen(
            [INFLUXD, "-config", str(self.config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self._proc = proc
        ready: queue.Queue[bool] = queue.Queue()

        stdout = proc.stdout
        assert stdout is not None, "started with stdout=PIPE"

        def read() -> None:
            told = False
            for line in stdout:  # keep draining, or influxd blocks on a full pipe
                self._log.append(line)
                if not told and "Listening on HTTP" in line:
                    ready.put(True)
                    told = True
            if not told:
                ready.put(False)

        threading.Thread(target=read, daemon=True, name="influxd-log").start()
        try:
            ok = ready.get(timeout=timeout_s)
        except queue.Empty:
            ok = False
        if not ok:
            self.stop()
            raise RuntimeError("influxd did not start:\n" + "".join(self._log[-30:]))
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def query(self, q: str, db: str | None = DATABASE) -> dict:
        """InfluxQL straight to the server (not through the product's code); µs epochs."""
        params = {"q": q, "epoch": "u", **({"db": db} if db else {})}
        auth = (
            {"Authorization": "Basic " + base64.b64encode(self.credentials.encode()).decode()}
            if self.credentials
            else {}
        )
        req = urllib.request.Request(f"{self.url}/query", data=urllib.parse.urlencode(params).encode(), headers=auth)
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.load(resp)

    def cli(self, q: str, db: str = DATABASE) -> dict:
        """The same through Debian's ``influx`` command-line client (JSON output)."""
        assert INFLUX_CLI is not None, "apt-get install influxdb-client"
        out = subprocess.run(
            [
                INFLUX_CLI,
                "-host",
                "127.0.0.1",
                "-port",
                str(self.http_port),
                "-database",
                db,
                "-format",
                "json",
                "-precision",
                "u",
                "-execute",
                q,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return json.loads(out.stdout)

    def sink(self, query: str = f"db={DATABASE}") -> str:
        """A SINK address straight to this server (the 1.x ``/write`` API), no proxy."""
        return f"influx://127.0.0.1:{self.http_port}?{query}"

    def empty_database(self) -> None:
        if not self.running:
            self.start()
        self.query(f'DROP DATABASE "{DATABASE}"', db=None)
        self.query(f'CREATE DATABASE "{DATABASE}"', db=None)


def influx_target(sink: str) -> InfluxTarget:
    """``parse_sink`` of an InfluxDB SINK: the target an ``InfluxSink`` takes."""
    from storage.target import InfluxTarget, parse_sink

    target = parse_sink(sink)
    assert isinstance(target, InfluxTarget), sink
    return target


def series_values(result: dict) -> list[dict]:
    """Rows of every series as dicts (tags merged in). The ``influx`` CLI puts each series
    in a result of its own, the HTTP API all in the first: read them all."""
    rows = []
    for res in result["results"]:
        for s in res.get("series", []):
            for v in s["values"]:
                rows.append({**s.get("tags", {}), **dict(zip(s["columns"], v))})
    return rows


class V2WriteProxy:
    """``/api/v2/write`` → ``/write`` in front of an :class:`InfluxServer` (see the module doc)."""

    def __init__(self, upstream: InfluxServer) -> None:
        self.upstream = upstream
        self.writes_v2 = 0  # v2 write requests that reached the server (for the tests' own checks)
        self.authorizations: set[str] = set()  # Authorization headers seen (the token reached us)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self._forward("GET")

            def do_POST(self) -> None:
                self._forward("POST")

            def _forward(self, method: str) -> None:
                if self.headers.get("Authorization"):
                    proxy.authorizations.add(self.headers["Authorization"])
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                parts = urllib.parse.urlsplit(self.path)
                path = self.path
                if parts.path == "/api/v2/write":
                    q = urllib.parse.parse_qs(parts.query)
                    db, _, rp = q.get("bucket", [""])[0].partition("/")
                    v1 = {"db": db, "precision": _PRECISION_V1.get(q.get("precision", ["ns"])[0], "n")}
                    if rp:
                        v1["rp"] = rp
                    path = "/write?" + urllib.parse.urlencode(v1)
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() in ("content-type", "content-encoding", "accept")
                }
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream.http_port, timeout=30)
                    conn.request(method, path, body=body, headers=headers)
                    resp = conn.getresponse()
                    status, data, ctype = resp.status, resp.read(), resp.getheader("Content-Type", "text/plain")
                    conn.close()
                    if parts.path == "/api/v2/write" and status == 204:
                        proxy.writes_v2 += 1
                except OSError as exc:
                    status, data, ctype = (
                        503,
                        json.dumps({"message": f"upstream down: {exc}"}).encode(),
                        "application/json",
                    )
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="influx-proxy")
        self._thread.start()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def sink(self, bucket: str = DATABASE) -> str:
        """A SINK address for the product that lands in this server."""
        return f"influx://127.0.0.1:{self.port}?bucket={bucket}&org=test"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture(scope="module")
def influxd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxServer]:
    if INFLUXD is None:
        skip_or_fail("influxd not installed (apt-get install influxdb influxdb-client)")
    server = InfluxServer(tmp_path_factory.mktemp("influxd")).start()
    try:
        server.query(f'CREATE DATABASE "{DATABASE}"', db=None)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def influxd_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxServer]:
    """influxd with authentication on, an admin (``credentials``) and database ``m3sense``."""
    if INFLUXD is None:
        skip_or_fail("influxd not installed (apt-get install influxdb influxdb-client)")
    server = InfluxServer(tmp_path_factory.mktemp("influxd-auth"), auth=True).start()
    try:
        assert server.credentials is not None, "started with auth=True"
        user, password = server.credentials.split(":")
        # 1.x lets the first admin be created without credentials; after that it wants them
        req = urllib.request.Request(
            f"{server.url}/query",
            data=urllib.parse.urlencode(
                {"q": f"CREATE USER {user} WITH PASSWORD '{password}' WITH ALL PRIVILEGES"}
            ).encode(),
        )
        urllib.request.urlopen(req, timeout=30).close()
        server.query(f'CREATE DATABASE "{DATABASE}"', db=None)
        yield server
    finally:
        server.stop()


@pytest.fixture
def influx_v1(influxd: InfluxServer) -> InfluxServer:
    """The server with an empty database (dropped and recreated for each test), no proxy."""
    influxd.empty_database()
    return influxd


@pytest.fixture
def influx_proxy(influxd: InfluxServer) -> Iterator[V2WriteProxy]:
    """A fresh proxy over an empty database (dropped and recreated for each test)."""
    influxd.empty_database()
    proxy = V2WriteProxy(influxd)
    try:
        yield proxy
    finally:
        proxy.close()


# --- affect messages as the inference node will publish them (notes/interfaces.md) ----------

CLASSES = {"stress": ("baseline", "stress", "amusement"), "anxiety": ("low", "high"), "emotion": ("low", "high")}
DEFAULT_LABELS = {"stress": "stress", "anxiety": "high", "emotion": "low"}


def affect_meta(
    t_end: float,
    *,
    tasks: tuple[str, ...] = ("stress", "anxiety", "emotion"),
    labels: dict[str, str] | None = None,
    truth: dict[str, str | None] | None = None,
    source: str = "replay",
    model: str = "m3sense-test",
    low_quality: bool = False,
    window_s: float = 20.0,
) -> dict:
    """The meta of an affect message: each task's label gets probability 0.7, the other
    classes share the rest; a low-quality window has no label and no confidence."""
    chosen = {**DEFAULT_LABELS, **(labels or {})}
    out = {}
    for task in tasks:
        classes = CLASSES[task]
        probs = {c: 0.7 if c == chosen[task] else 0.3 / (len(classes) - 1) for c in classes}
        out[task] = {
            "label": None if low_quality else chosen[task],
            "confidence": None if low_quality else 0.7,
            "probs": probs,
            "status": "low_quality" if low_quality else "ok",
        }
    meta = {
        "t_end": t_end,
        "t_start": t_end - window_s,
        "model": model,
        "source": source,
        "quality": {"off_wrist": low_quality, "motion": False, "missing_fraction": 0.0},
        "tasks": out,
    }
    if truth is not None:
        meta["labels"] = truth
    return meta


# --- an InfluxDB outage in the middle of a stream (the test and bench/bench_storage.py) ---------


async def outage_scenario(
    server: InfluxServer,
    proxy: V2WriteProxy,
    bus: str,
    spool_dir: Path,
    *,
    outage_s: float,
    before: int = 20,
    after: int = 20,
    per_attempt: int = 5,
    t0_s: float = 1_700_000_000.0,
) -> dict:
    """Stream affect messages through a hub and a store node into InfluxDB, stop influxd for
    ``outage_s`` seconds of wall time while the stream goes on, start it again, and return
    what was sent, what the sink counted and what InfluxDB holds.

    No sleeps: the stream waits on the sink's own counters. During the outage it publishes
    ``per_attempt`` windows after each failed write attempt of the sink (its back-off,
    0.2 to 1 s, is the clock), until ``outage_s`` has passed.
    """
    import asyncio
    import time

    from bus import Hub, Publisher
    from storage import InfluxSink, StoreNode, device_topics

    sink = InfluxSink(
        influx_target(proxy.sink()), spool_dir=spool_dir, batch_size=50, retry_min_s=0.2, retry_max_s=1.0, timeout_s=5.0
    )
    sent_windows: list[float] = []
    outage = {}
    with Hub(bus):
        async with sink:
            node = StoreNode(bus, sink, flush_interval_s=0.2)
            stop = asyncio.Event()
            runner = asyncio.create_task(node.run(stop))
            c = sink.counters
            async with Publisher(bus) as pub:
                assert await pub.wait_for_subscribers(device_topics("dev1"), 30) == []

                async def publish(n: int) -> None:
                    for _ in range(n):
                        t_end = t0_s + 20 + 10 * len(sent_windows)
                        await pub.publish("affect", "dev1", t0_s=t_end, fs_hz=0, meta=affect_meta(t_end))
                        sent_windows.append(t_end)

                await publish(before)
                await c.wait_for(lambda c: c.written == 3 * before, 60)
                server.stop()
                started = time.monotonic()
                while time.monotonic() - started < outage_s:
                    failures = c.failures

                    def failed_again(c: SinkCounters, before: int = failures) -> bool:
                        return c.failures > before

                    await publish(per_attempt)
                    await c.wait_for(failed_again, 30)
                outage = {
                    "outage_s": time.monotonic() - started,
                    "pending_at_restart": c.pending,
                    "spooled_at_restart": c.spooled,
                }
                server.start()
                await publish(after)
            await node.wait_processed(len(sent_windows), 60)
            await c.wait_for(lambda c: c.written == 3 * len(sent_windows) and c.pending == 0, 120)
            stop.set()
            await runner
    stored = server.query('SELECT "label", "task" FROM "affect"')
    times = sorted({row["time"] for row in series_values(stored)})
    return {
        **outage,
        "windows": len(sent_windows),
        "records": 3 * len(sent_windows),
        "window_ends_us": [round(t * 1e6) for t in sent_windows],
        "points": len(series_values(stored)),
        "stored_times_us": times,
        "counters": sink.counters.as_dict(),
    }


# --- Mosquitto (MQTT) for the MQTT sink tests ----------------------------------------------

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
MOSQUITTO_SUB = shutil.which("mosquitto_sub")
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")


class MosquittoServer:
    """Mosquitto 2.0 on a free loopback port, no anonymous access, with a password file (made
    with ``mosquitto_passwd -b``) and the ACL shipped in ``deploy/mosquitto/acl``: user ``m3sense``
    (``password``) may write the m3sense and Home Assistant discovery trees, user
    ``homeassistant`` (``reader_password``) may only read them. No persistence: a restart
    (``stop()`` then ``start()``, same port) forgets every retained message, the hardest case
    for a client. Logs are kept in ``log``."""

    def __init__(self, folder: Path, *, tls: bool = False) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        self.ca_file = folder / "ca.pem" if tls else None
        self.password = os.urandom(8).hex()
        self.reader_password = os.urandom(8).hex()
        passwd = folder / "passwd"
        assert MOSQUITTO_PASSWD is not None, "the fixture checks that mosquitto is installed"
        for user, password in (("m3sense", self.password), ("homeassistant", self.reader_password)):
            subprocess.run(
                [MOSQUITTO_PASSWD, *(["-c"] if user == "m3sense" else []), "-b", str(passwd), user, password],
                check=True,
                capture_output=True,
                timeout=30,
            )
        acl = folder / "acl"
        acl.write_text((Path(__file__).resolve().parents[1] / "deploy" / "mosquitto" / "acl").read_text())
        self.config = folder / "mosquitto.conf"
        self.config.write_text(
            f"per_listener_settings false\nallow_anonymous false\npassword_file {passwd}\nacl_file {acl}\n"
            f"persistence false\nlog_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n"
            f"log_type information\nconnection_messages true\nuser root\nlistener {self.port} 127.0.0.1\n"
            + (self._tls_listener() if tls else "")
        )
        self._proc: subprocess.Popen | None = None
        self.log: list[str] = []

    def _tls_listener(self) -> str:
        """A second listener with TLS: a throw-away CA (``ca_file``) signs a certificate for 127.0.0.1."""
        d = self.folder

        def openssl(*args: str) -> None:
            subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

        openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(d / "ca.key"),
            "-out",
            str(d / "ca.pem"),
            "-days",
            "2",
            "-subj",
            "/CN=m3sense test CA",
        )
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(d / "server.key"),
            "-out",
            str(d / "server.csr"),
            "-subj",
            "/CN=127.0.0.1",
        )
        (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
        openssl(
            "x509",
            "-req",
            "-in",
            str(d / "server.csr"),
            "-CA",
            str(d / "ca.pem"),
            "-CAkey",
            str(d / "ca.key"),
            "-CAcreateserial",
            "-out",
            str(d / "server.pem"),
            "-days",
            "2",
            "-extfile",
            str(d / "san.ext"),
        )
        return (
            f"listener {self.tls_port} 127.0.0.1\ncafile {d / 'ca.pem'}\ncertfile {d / 'server.pem'}\n"
            f"keyfile {d / 'server.key'}\n"
        )

    def start(self, timeout_s: float = 30.0) -> MosquittoServer:
        assert MOSQUITTO is not None
        proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self._proc = proc
        ready: queue.Queue[bool] = queue.Queue()

        stdout = proc.stdout
        assert stdout is not None, "started with stdout=PIPE"

        def read() -> None:
            told = False
            for line in stdout:
                self.log.append(line)
                if not told and " running" in line:  # "mosquitto version 2.0.x running"
                    ready.put(True)
                    told = True
            if not told:
                ready.put(False)

        threading.Thread(target=read, daemon=True, name="mosquitto-log").start()
        try:
            ok = ready.get(timeout=timeout_s)
        except queue.Empty:
            ok = False
        if not ok:
            self.stop()
            raise RuntimeError("mosquitto did not start:\n" + "".join(self.log[-30:]))
        return self

    def stop(self) -> None:
        """SIGTERM until it ends: one that comes just after start-up can go unheeded (seen here)."""
        if self._proc is not None:
            for _ in range(20):
                self._proc.terminate()
                try:
                    self._proc.wait(timeout=0.5)
                    break
                except subprocess.TimeoutExpired:
                    continue
            else:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def sink(self, query: str = "user=m3sense") -> str:
        return f"mqtt://127.0.0.1:{self.port}?{query}"

    def retained(self, *topics: str, timeout_s: float = 2.0) -> dict[str, str]:
        """Every retained message under ``topics`` as Home Assistant's user sees it, read with
        ``mosquitto_sub --retained-only``: a broker sends them at once on subscribing; the
        command ends at the first message that is not retained or after ``timeout_s``."""
        assert MOSQUITTO_SUB is not None
        out = subprocess.run(
            [
                MOSQUITTO_SUB,
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-u",
                "homeassistant",
                "-P",
                self.reader_password,
                "-q",
                "1",
                "--retained-only",
                "-W",
                str(max(1, int(timeout_s))),
                "-F",
                "%t\t%p",
                *[a for t in (topics or ("#",)) for a in ("-t", t)],
            ],
            capture_output=True,
            text=True,
            timeout=timeout_s + 10,
        )
        messages = {}
        for line in out.stdout.splitlines():
            topic, _, payload = line.partition("\t")
            messages[topic] = payload
        return messages


@pytest.fixture
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoServer]:
    """A fresh broker per test (it starts in well under a second)."""
    if MOSQUITTO is None or MOSQUITTO_PASSWD is None or MOSQUITTO_SUB is None:
        skip_or_fail("mosquitto not installed (apt-get install mosquitto mosquitto-clients)")
    server = MosquittoServer(tmp_path_factory.mktemp("mosquitto")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def mosquitto_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoServer]:
    """A broker with a TLS listener too (``tls_port``, its CA in ``ca_file``), made with openssl."""
    if MOSQUITTO is None or MOSQUITTO_PASSWD is None or MOSQUITTO_SUB is None or shutil.which("openssl") is None:
        skip_or_fail("mosquitto or openssl not installed (apt-get install mosquitto mosquitto-clients openssl)")
    server = MosquittoServer(tmp_path_factory.mktemp("mosquitto-tls"), tls=True).start()
    try:
        yield server
    finally:
        server.stop()
