"""CURVE on the bus (issue 12, item 3): real CURVE sockets on 127.0.0.1, a hub started with
``m3sense hub --bus-keys``, a store writing SQLite. A publisher without keys, or with a key the
hub does not know, gets nothing into the store; a publisher with an allowed key does. A plain
non-loopback address is refused in one line before anything binds or connects."""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import sqlite3
import stat
import time
from pathlib import Path

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from bus import Hub, Message, Publisher, Subscriber, encode, free_bus_address, hub_endpoints
from bus.security import BusSecurity, BusSecurityError, check_address, init_folder, is_loopback, new_keypair
from tests.conftest import Proc, run_cli
from tests.servers import affect_meta

T_END = 1_700_000_020.0


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    folder = tmp_path / "keys"
    init_folder(folder)
    return folder


@pytest.fixture
def intruder_keys(tmp_path: Path, keys: Path) -> Path:
    """A client that knows the hub's public key but whose own key nobody allowed."""
    folder = tmp_path / "intruder"
    new_keypair(folder, "client")
    shutil.copy(keys / "hub.key", folder / "hub.key")
    return folder


def _affect(device: str, seq: int = 0, **meta: object) -> Message:
    return Message(
        kind="affect", device=device, modality="affect", seq=seq, t0_s=T_END, fs_hz=0.0, meta=meta or affect_meta(T_END)
    )


def _connect_and_fail(sock: zmq.Socket, endpoint: str, timeout_s: float = 30) -> int:
    """Connect, and wait for the socket's monitor to report the handshake's outcome: it must
    fail. Returns the event (auth: refused by ZAP; protocol: no CURVE at all)."""
    failed = (
        zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    )
    mon = sock.get_monitor_socket(failed | zmq.EVENT_HANDSHAKE_SUCCEEDED)
    sock.connect(endpoint)
    try:
        assert mon.poll(round(timeout_s * 1000)), "no handshake outcome"
        event = recv_monitor_message(mon)["event"]
        assert event & failed, f"the handshake succeeded ({event})"
        return event
    finally:
        sock.disable_monitor()
        mon.close(linger=0)


def _raw_socket(ctx: zmq.Context, kind: int, security: BusSecurity | None) -> zmq.Socket:
    """A socket as any process on the host could open one, with CURVE keys or without."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    if security is not None:
        keys = security.client_keys()
        sock.curve_secretkey, sock.curve_publickey, sock.curve_serverkey = keys.secret, keys.public, keys.server
    return sock


def test_only_an_allowed_key_reaches_the_store(
    keys: Path, intruder_keys: Path, tmp_path: Path, procs: list[Proc]
) -> None:
    bus = free_bus_address()
    hub = Proc(["hub", "--bus", bus, "--bus-keys", str(keys)])
    procs.append(hub)
    assert "CURVE" in hub.wait_for_stderr("hub: publishers connect")
    db = tmp_path / "m3.db"
    store = Proc(["store", "--bus", bus, "--bus-keys", str(keys), "--sink", f"sqlite:{db}", "--flush-interval", "0.1"])
    procs.append(store)
    store.wait_for_stderr("<-")

    # two forgers: no keys at all (plain ZeroMQ), and a CURVE key the hub never allowed
    ctx = zmq.Context()
    endpoint = hub_endpoints(bus).publishers
    plain = _raw_socket(ctx, zmq.PUB, None)
    unknown = _raw_socket(ctx, zmq.PUB, BusSecurity(keys=intruder_keys))
    try:
        events = {}
        for name, sock in (("plain", plain), ("unknown", unknown)):
            events[name] = _connect_and_fail(sock, endpoint)
            for seq in range(20):  # forged answers, as in the issue: stress 0.99 from model "forged"
                sock.send_multipart(
                    [
                        bytes(f)
                        for f in encode(
                            _affect(f"victim-{name}", seq, **{**affect_meta(T_END, model="forged"), "source": "live"})
                        )
                    ]
                )
        assert events["unknown"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH  # refused by the ZAP allow-list

        async def legit() -> None:
            async with Publisher(bus, security=BusSecurity(keys=keys)) as pub:
                assert not await pub.wait_for_subscribers(["affect/good/"], 30)
                await pub.send(_affect("good", 0))
                await pub.send(_affect("good", 1, event="end"))

        asyncio.run(legit())
        store.wait_for_stderr("end of device good")
    finally:
        plain.close(linger=0)
        unknown.close(linger=0)
        ctx.destroy(linger=0)
    store.popen.terminate()
    assert store.popen.wait(timeout=30) in (0, 130)
    with sqlite3.connect(db) as conn:
        devices = dict(conn.execute("SELECT device, count(*) FROM affect GROUP BY device").fetchall())
        models = {m for (m,) in conn.execute("SELECT DISTINCT model FROM affect")}
    assert devices == {"good": 3}  # one row per task, and nothing from either forger
    assert "forged" not in models
    hub.popen.terminate()
    assert hub.popen.wait(timeout=30) == 0
    refused = [line for line in hub.stderr.read().splitlines() if "refused" in line]
    assert refused and re.fullmatch(
        r"hub: refused [1-9]\d* connection\(s\) with unknown keys, [1-9]\d* without CURVE", refused[-1]
    ), refused


def test_a_subscriber_without_an_allowed_key_reads_nothing(keys: Path, intruder_keys: Path) -> None:
    bus = free_bus_address()
    with Hub(bus, security=BusSecurity(keys=keys)) as hub:
        ctx = zmq.Context()
        try:
            for security in (None, BusSecurity(keys=intruder_keys)):
                sub = _raw_socket(ctx, zmq.SUB, security)
                sub.subscribe(b"")
                _connect_and_fail(sub, hub.endpoints.subscribers)
                sub.close(linger=0)
        finally:
            ctx.destroy(linger=0)
        assert hub.allow_list is not None and hub.allow_list.refused >= 1
        deadline = time.monotonic() + 30  # the hub sees its side of the failed handshake from its own thread
        while hub.refused_plain < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert hub.refused_plain >= 1

        async def allowed() -> Message:  # while an allowed subscriber reads what is published
            good = BusSecurity(keys=keys)
            async with Subscriber(bus, ["affect/"], security=good) as sub, Publisher(bus, security=good) as pub:
                assert not await pub.wait_for_subscribers(["affect/good/"], 30)
                await pub.send(_affect("good"))
                return await sub.recv(30)

        assert asyncio.run(allowed()).device == "good"


def test_a_plain_non_loopback_address_is_refused_in_one_line(keys: Path) -> None:
    port = free_bus_address().rsplit(":", 1)[1]
    for args in (
        ["hub", "--bus", f"tcp://0.0.0.0:{port}"],
        ["tap", "--bus", f"tcp://192.0.2.7:{port}"],
        ["store", "--bus", f"tcp://*:{port}", "--sink", "sqlite:never.db"],
    ):
        proc = run_cli(*args, timeout=60)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "is not loopback: give --bus-keys DIR" in lines[0] and "--insecure" in lines[0]
    with pytest.raises(BusSecurityError):
        Hub(f"tcp://0.0.0.0:{port}", security=BusSecurity())
    assert is_loopback("tcp://127.0.0.1:5555") and is_loopback("tcp://[::1]:5555") and is_loopback("ipc:///tmp/b")
    assert not is_loopback("tcp://localhost.example.org:5555") and not is_loopback("tcp://10.0.0.5:5555")
    check_address(f"tcp://0.0.0.0:{port}", BusSecurity(keys=keys))  # keys make any address acceptable


def test_insecure_accepts_a_plain_non_loopback_address_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="bus.security"):
        check_address("tcp://198.51.100.9:5555", BusSecurity(insecure=True))
    assert "anyone who reaches it can read and publish" in caplog.text


def test_missing_and_bad_key_files_are_one_line_errors(keys: Path, tmp_path: Path) -> None:
    bus = free_bus_address()
    (keys / "client.key_secret").unlink()
    proc = run_cli("tap", "--bus", bus, "--bus-keys", str(keys), "--idle-exit-s", "0.1")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"m3sense tap: error: {keys}/client.key_secret: no such key file "
        f"(make it with: m3sense keys new client --dir {keys})"
    )
    (keys / "hub.key_secret").write_text('curve\n    public-key = "short"\n')
    proc = run_cli("hub", "--bus", bus, "--bus-keys", str(keys))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "hub.key_secret: no public key in it" in proc.stderr
    proc = run_cli("tap", "--bus", bus, "--bus-keys", str(tmp_path / "none"))
    assert proc.returncode == 2 and "no such folder" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_keys_command_makes_private_pairs_and_an_allow_list(tmp_path: Path) -> None:
    hub_dir, other = tmp_path / "hub-host", tmp_path / "other-host"
    assert run_cli("keys", "init", "--dir", str(hub_dir)).returncode == 0
    for name in ("hub", "client"):
        assert stat.S_IMODE((hub_dir / f"{name}.key_secret").stat().st_mode) == 0o600
    assert stat.S_IMODE(hub_dir.stat().st_mode) == 0o700
    again = run_cli("keys", "new", "hub", "--dir", str(hub_dir))
    assert again.returncode == 2 and "already exists" in again.stderr  # never overwritten
    assert run_cli("keys", "new", "client", "--dir", str(other)).returncode == 0
    secret = run_cli("keys", "allow", str(other / "client.key_secret"), "--dir", str(hub_dir))
    assert secret.returncode == 2 and "holds a secret key" in secret.stderr
    clash = run_cli("keys", "allow", str(other / "client.key"), "--dir", str(hub_dir))
    assert clash.returncode == 2 and "another key is allowed under this name" in clash.stderr
    ok = run_cli("keys", "allow", str(other / "client.key"), "--dir", str(hub_dir), "--name", "other-host")
    assert ok.returncode == 0 and (hub_dir / "allowed" / "other-host.key").is_file()
    listing = run_cli("keys", "list", "--dir", str(hub_dir), check=True).stdout.splitlines()
    assert len(listing) == 4  # hub, client, and two allowed clients


def test_run_passes_its_keys_to_the_stages_it_starts(keys: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bus.security
    from m3sense.pipeline import PipelineConfig, stage_commands

    monkeypatch.setattr(bus.security, "_current", BusSecurity(keys=keys))
    stages = stage_commands(PipelineConfig(sink="sqlite:///x.db"), "tcp://127.0.0.1:5555")
    assert [name for name, _ in stages] == ["store", "infer", "preprocess"]
    for _, args in stages:
        assert args[args.index("--bus-keys") + 1] == str(keys)
    monkeypatch.setattr(bus.security, "_current", BusSecurity())
    assert all(
        "--bus-keys" not in args
        for _, args in stage_commands(PipelineConfig(sink="sqlite:///x.db"), "tcp://127.0.0.1:5555")
    )


def _wait_for_log(caplog: pytest.LogCaptureFixture, needle: str, timeout_s: float = 30) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [r.getMessage() for r in caplog.records if needle in r.getMessage()]
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no log line with {needle!r}: {caplog.text}")


def test_a_refused_client_says_why(keys: Path, intruder_keys: Path, caplog: pytest.LogCaptureFixture) -> None:
    """ZeroMQ never retries a connection that authentication refused: the client says so once,
    as an error naming its key, instead of waiting in silence."""

    async def connect(bus: str, security: BusSecurity) -> None:
        async with Subscriber(bus, ["affect/"], security=security):
            await asyncio.to_thread(_wait_for_log, caplog, "bus: ")

    caplog.set_level(logging.ERROR, logger="bus.security")
    bus = free_bus_address()
    with Hub(bus, security=BusSecurity(keys=keys)):
        asyncio.run(connect(bus, BusSecurity(keys=intruder_keys)))
    assert f"refused this host's key {intruder_keys}/client.key" in _wait_for_log(caplog, "refused this host's key")
    caplog.clear()
    bus = free_bus_address()
    with Hub(bus, security=BusSecurity()):  # a hub without keys
        asyncio.run(connect(bus, BusSecurity(keys=keys)))
    assert "does it run with --bus-keys" in _wait_for_log(caplog, "no CURVE handshake")


def test_a_key_allowed_while_the_hub_runs_is_admitted(keys: Path, intruder_keys: Path) -> None:
    from bus.security import allow_key

    async def reads(bus: str, reader: BusSecurity) -> Message:
        async with (
            Subscriber(bus, ["affect/"], security=reader) as sub,
            Publisher(bus, security=BusSecurity(keys=keys)) as pub,
        ):
            assert not await pub.wait_for_subscribers(["affect/good/"], 30)
            await pub.send(_affect("good"))
            return await sub.recv(30)

    bus = free_bus_address()
    with Hub(bus, security=BusSecurity(keys=keys)) as hub:
        allow_key(keys, intruder_keys / "client.key", "newcomer")
        assert asyncio.run(reads(bus, BusSecurity(keys=intruder_keys))).device == "good"
        assert hub.allow_list is not None and hub.allow_list.refused == 0
