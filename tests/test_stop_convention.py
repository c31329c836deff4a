"""One way to stop: every long-running command, started as a real process, exits 130 on
SIGINT and 0 on SIGTERM once it has flushed (see common/aio.py and the README's "Exit codes").

Each case waits for the command's readiness line on stderr before signalling it, so the
signal reaches a running command, not one still importing."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from bus import Hub, Publisher, free_bus_address
from common.aio import INTERRUPTED, Stop, run_until_signal
from storage.node import device_topics
from tests.conftest import Proc, run_cli
from tests.servers import free_port
from tests.test_restarts import model  # noqa: F401  (the tiny model fixture)

SIGNALS = {"SIGINT": (signal.SIGINT, INTERRUPTED), "SIGTERM": (signal.SIGTERM, 0)}


@dataclass(frozen=True)
class Env:
    bus: str
    tmp: Path
    model: Path
    recording: Path
    port: int  # a free loopback port


@dataclass(frozen=True)
class Case:
    args: Callable[[Env], list[str]]
    ready: str  # the readiness line's mark
    hub: bool = True  # runs on the test's in-process hub (False: it brings its own, or is the hub)
    start_s: float = 60.0  # how long it may take to say it is ready (the model loads, a demo simulates)
    #: what must run first: (command, the readiness marks it says, in order)
    before: Callable[[Env], list[tuple[list[str], tuple[str, ...]]]] = lambda _e: []


def _e4_server_with_a_wristband(e: Env) -> list[tuple[list[str], tuple[str, ...]]]:
    """An e4-server that lists one virtual wristband streaming on the bus (what e4-client reads)."""
    server = ["e4-server", "--port", str(e.port), "--bus", e.bus]
    band = ["ble", "stream", "--virtual", "1", "--minutes", "2", "--bus", e.bus]
    return [(band, ("ble: streaming",)), (server, ("e4-server: listening on", "e4-server: device"))]


CASES = {
    "hub": Case(lambda e: ["hub", "--bus", e.bus], "hub: publishers connect", hub=False),
    "tap": Case(lambda e: ["tap", "--bus", e.bus], "tap: subscribed"),
    "replay": Case(lambda e: ["replay", str(e.recording), "--bus", e.bus], "replay: publishing"),
    "ble-stream": Case(
        lambda e: ["ble", "stream", "--virtual", "1", "--minutes", "2", "--bus", e.bus], "ble: streaming"
    ),
    "e4-server": Case(lambda e: ["e4-server", "--port", "0", "--bus", e.bus], "e4-server: listening on"),
    "e4-client": Case(
        lambda e: ["e4-client", "--server", f"127.0.0.1:{e.port}", "--bus", e.bus],
        "e4-client: streaming",
        before=_e4_server_with_a_wristband,
    ),
    "preprocess": Case(lambda e: ["preprocess", "--bus", e.bus], "preprocess: subscribed"),
    "infer": Case(lambda e: ["infer", "--bus", e.bus, "--model", str(e.model), "--state-dir", "none"], "listening on"),
    "store": Case(
        lambda e: ["store", "--bus", e.bus, "--sink", f"sqlite:///{e.tmp / 'store.db'}", "--positions", "none"],
        "store: ",
    ),
    "lsl": Case(lambda e: ["lsl", "--bus", e.bus], "lsl: outlets"),
    "run": Case(
        lambda e: [
            *("run", str(e.recording), "--speed", "5"),
            *("--sink", f"sqlite:///{e.tmp / 'run.db'}", "--model", str(e.model)),
        ],
        "run: replaying",
        hub=False,
    ),
    "demo": Case(
        lambda e: [
            *("demo", "--out", str(e.tmp / "demo"), "--minutes", "2", "--devices", "1"),
            *("--speed", "20", "--model", str(e.model)),
        ],
        "run: replaying",
        hub=False,
        start_s=120.0,
    ),
}


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("stop") / "rec"
    run_cli("simulate", str(src), "--minutes", "2", "--seed", "3", "--subjects", "1", "--no-faults", check=True)
    return src / "sim01"


def _stop(proc: Proc, sig: signal.Signals, timeout_s: float = 60) -> tuple[int, str]:
    proc.popen.send_signal(sig)
    _, err = proc.popen.communicate(timeout=timeout_s)
    return proc.popen.returncode, err


@pytest.mark.parametrize("sig_name", SIGNALS)
@pytest.mark.parametrize("name", CASES)
def test_a_long_running_command_exits_130_on_sigint_and_0_on_sigterm(
    name: str,
    sig_name: str,
    tmp_path: Path,
    model: Path,  # noqa: F811  (the fixture)
    recording: Path,
    hub: Hub,
    procs: list[Proc],
) -> None:
    if name == "lsl":
        pytest.importorskip("pylsl")
    case = CASES[name]
    sig, expected = SIGNALS[sig_name]
    bus = hub.address if case.hub else free_bus_address()
    env = Env(bus=bus, tmp=tmp_path, model=model, recording=recording, port=free_port())
    for args, marks in case.before(env):
        procs.append(Proc(args))
        for mark in marks:
            procs[-1].wait_for_stderr(mark)
    proc = Proc(case.args(env))
    procs.append(proc)
    proc.wait_for_stderr(case.ready, timeout=case.start_s)
    if name == "run":  # stopped once its store has written something: the test is of a flush, not of a race
        _wait_for_rows(env.tmp / "run.db", timeout_s=60)
    code, err = _stop(proc, sig)
    assert code == expected, f"m3sense {name} exited {code} on {sig_name}, not {expected}; stderr:\n{err}"
    if name == "run":  # the store of the run flushed into the sink and said so, as the run's last line says
        assert f"run: stopped by {sig_name}" in err and " written to sqlite:" in err and "none lost" in err, err


def _wait_for_rows(db: Path, timeout_s: float) -> None:
    """Until some table of ``db`` has a row (the store flushes every second)."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:  # never creates it
                tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
                if any(conn.execute(f'SELECT 1 FROM "{t}" LIMIT 1').fetchone() for t in tables):
                    return
        except sqlite3.OperationalError:  # not created yet, or locked by the writer
            pass
        time.sleep(0.2)
    raise AssertionError(f"nothing was written to {db} in {timeout_s:.0f} s")


def _rows(db: Path, table: str) -> int:
    try:
        with sqlite3.connect(db) as conn:
            return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


@pytest.mark.parametrize("sig_name", SIGNALS)
def test_store_flushes_the_records_in_hand_into_the_sink_on_either_signal(
    sig_name: str, tmp_path: Path, hub: Hub, procs: list[Proc]
) -> None:
    """Flushing only on a timer an hour away, the records are in the store's hands, not the
    sink's, until the signal: then every one of them is written, and the exit code says how
    it was stopped."""
    sig, expected = SIGNALS[sig_name]
    bus, db, n = hub.address, tmp_path / "s.db", 25
    store = Proc(
        ["store", "--bus", bus, "--sink", f"sqlite:///{db}", "--positions", "none", "--flush-interval", "3600"]
    )
    procs.append(store)
    store.wait_for_stderr("store: ")

    async def publish() -> None:
        async with Publisher(bus) as pub:
            assert not await pub.wait_for_subscribers(device_topics("dev1"), 30)
            for i in range(n):
                await pub.publish("status", "dev1", t0_s=1_700_000_000.0 + i, fs_hz=0.0, meta={"event": "marker"})

    asyncio.run(publish())
    assert _rows(db, "device_status") == 0  # in hand, not yet in the sink
    code, err = _stop(store, sig)
    assert code == expected, err
    assert _rows(db, "device_status") == n, err


def test_the_helper_keeps_the_commands_code_on_sigterm_and_turns_it_to_130_on_sigint() -> None:
    """The pure rule under every command: the first signal sets the stop event, the command
    returns its own code, SIGINT makes it 130; a second signal cancels a command that hangs."""
    import os

    def stopped_by(*sigs: signal.Signals, code: int, hang: bool = False) -> int:
        async def main(stop: Stop) -> int:
            for s in sigs:
                os.kill(os.getpid(), s)
                await asyncio.sleep(0.05)
            await stop.wait()
            if hang:
                await asyncio.sleep(60)
            return code

        return run_until_signal(main)

    assert stopped_by(signal.SIGTERM, code=0) == 0
    assert stopped_by(signal.SIGTERM, code=1) == 1  # something lost: a clean stop does not hide it
    assert stopped_by(signal.SIGINT, code=0) == INTERRUPTED
    assert stopped_by(signal.SIGINT, signal.SIGINT, code=0, hang=True) == INTERRUPTED
    assert stopped_by(signal.SIGTERM, signal.SIGTERM, code=0, hang=True) == 1  # cut short: not "done"
