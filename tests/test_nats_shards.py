"""Stages sharded by device on NATS JetStream (``--workers-group``), against a real ``nats-server -js``.

What must hold: devices fall into fixed partitions and a group's workers split them by rank; two
inference workers on one stream each answer a disjoint, non-empty share of the windows and
together all of them, while two stores (one consumer each) write them into one sink exactly once;
and of two preprocess workers, one killed with SIGKILL in the middle of a stream hands its devices
to the other, which rebuilds their state from the stream: every window of every device is stored
exactly once, none counted lost, every row still says ``replay``.
"""

from __future__ import annotations

import asyncio
import queue
import re
import signal
import sqlite3
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import nats
import nats.js.errors
import numpy as np
import pytest

from bus.message import Message
from bus.nats_backend import NatsSubscriber
from bus.partitions import PARTITIONS, assigned, partition_of
from preprocess.offline import recording_windows
from replay.e4csv import read_source
from tests.conftest import Proc, run_cli
from tests.nats_servers import NEEDS_NATS, NatsServer, nats_server
from tests.test_restarts import model

__all__ = ["model", "nats_server"]  # fixtures used below

DEVICES = ("sim01", "sim02", "sim03", "sim04")  # partitions 1, 11, 13 (odd) and 14 (even): both halves of two
TTL = "3"  # seconds: a killed worker's partitions move after about this long


def test_devices_fall_into_fixed_partitions_split_by_rank() -> None:
    assert [partition_of(d) for d in DEVICES] == [1, 11, 13, 14]  # stable: crc32, not hash()
    members = ["w-b", "w-a", "w-c"]
    shares = [assigned(members, m) for m in members]
    assert set().union(*shares) == set(range(PARTITIONS)) and sum(map(len, shares)) == PARTITIONS
    assert all(5 <= len(s) <= 6 for s in shares)
    assert assigned(["w-a"], "w-a") == set(range(PARTITIONS))


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, set[float]]]:
    """Four simulated wearers, 4 minutes, no faults; per device the window starts the offline path cuts."""
    src = tmp_path_factory.mktemp("shards") / "rec"
    run_cli("simulate", str(src), "--minutes", "4", "--seed", "5", "--subjects", "4", "--no-faults", check=True)
    truth = {rec.device: {w.t_start_s for w in recording_windows(rec)} for rec in read_source(src)}
    assert set(truth) == set(DEVICES)
    return src, truth


def _store(bus: str, db: Path, consumer: str, folder: Path) -> list[str]:
    return [
        "store",
        "--bus",
        bus,
        "--consumer",
        consumer,
        "--sink",
        f"sqlite:{db}",
        "--flush-interval-s",
        "0.2",
        "--positions",
        str(folder / f"{consumer}.json"),
    ]


def _infer(bus: str, model: Path, *group: str) -> list[str]:
    return ["infer", "--bus", bus, "--model", str(model), "--tasks", "stress,emotion", "--state-dir", "none", *group]


def _start(procs: list[Proc], args: list[str], ready: str) -> Proc:
    proc = Proc(args)
    procs.append(proc)
    proc.wait_for_stderr(ready, timeout=120)
    return proc


def _leases(bus: str, bucket: str) -> dict[int, int]:
    """Partition -> the pid of the worker holding its lease, read from the group's bucket."""

    async def read() -> dict[int, int]:
        nc = await nats.connect(bus)
        try:
            kv = await nc.jetstream().key_value(bucket)
            try:
                keys = await kv.keys()
            except nats.js.errors.NoKeysError:
                return {}
            held = {}
            for key in (k for k in keys if k.startswith("p.")):
                try:
                    worker = ((await kv.get(key)).value or b"").decode()
                except nats.js.errors.KeyNotFoundError:
                    continue
                held[int(key[2:])] = int(worker.rsplit("-", 2)[1])  # HOST-PID-RANDOM
            return held
        finally:
            await nc.close()

    return asyncio.run(read())


def _owned(bus: str, bucket: str, workers: list[Proc], want: list[int], timeout: float = 60) -> list[set[int]]:
    """Wait until each worker holds the leases of ``want[i]`` partitions, all of them held once."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            held = _leases(bus, bucket)
        except nats.js.errors.BucketNotFoundError:
            held = {}
        owned = [{p for p, pid in held.items() if pid == w.popen.pid} for w in workers]
        if len(held) == PARTITIONS and [len(o) for o in owned] == want:
            return owned
        if time.monotonic() > deadline:
            raise AssertionError(f"the workers never held {want} partitions: {owned} of {held}")
        time.sleep(0.2)


def _stored(db: Path) -> tuple[dict[str, set[float]], dict[str, int], tuple[int, int], set[str]]:
    """Per device the windows stored, the windows recorded lost, (rows, distinct rows) of affect, sources."""
    with sqlite3.connect(db) as conn:
        windows: dict[str, set[float]] = {}
        for device, t in conn.execute("SELECT device, t_start_s FROM affect"):
            windows.setdefault(device, set()).add(t)
        lost = dict(
            conn.execute(
                "SELECT device, sum(value) FROM device_status WHERE event = 'bus_gap' "
                "AND json_extract(detail, '$.unit') = 'windows' GROUP BY device"
            )
        )
        rows = conn.execute("SELECT count(*), count(DISTINCT device || task || t_start_s) FROM affect").fetchone()
        sources = {s for (s,) in conn.execute("SELECT DISTINCT source FROM affect")}
    return windows, {d: int(n) for d, n in lost.items()}, rows, sources


def _wait_for_every_device(store: Proc, timeout: float = 180) -> None:
    """Wait for the store's 'end of device' line of every device. Read by a thread, line by line:
    a selector on the pipe misses lines already in the reader's buffer (four ends come at once)."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert store.popen.stderr is not None
        for line in store.popen.stderr:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    ended: set[str] = set()
    deadline = time.monotonic() + timeout
    while ended != set(DEVICES):
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"the store ended only {sorted(ended)} in {timeout:.0f} s") from None
        if m := re.search(r"end of device (\S+)", line):
            ended.add(m.group(1))


def _replay_killing(
    procs: list[Proc], bus: str, src: Path, victim: Proc, devices: set[str], *, speed: int, before: int, after: int = 0
) -> None:
    """Replay ``src``; once ``before`` answers for ``devices`` are out, kill ``victim`` with -9, then
    wait for ``after`` more answers for them (from whoever took them over)."""

    async def scenario() -> None:
        async with NatsSubscriber(bus, ["affect/"]) as live:

            async def answers(n: int) -> None:
                seen = 0
                while seen < n:
                    msg = await live.recv(120)
                    seen += msg.device in devices and msg.meta.get("event") is None

            procs.append(Proc(["replay", str(src), "--bus", bus, "--speed", str(speed)]))
            await answers(before)
            victim.popen.send_signal(signal.SIGKILL)
            victim.popen.wait(timeout=10)
            await answers(after)

    asyncio.run(scenario())


@NEEDS_NATS
def test_two_inference_workers_answer_disjoint_shares_and_two_stores_write_once(
    nats_server: NatsServer, procs: list[Proc], tmp_path: Path, model: Path, recording
) -> None:
    src, truth = recording
    bus, db = nats_server.bus, tmp_path / "affect.db"
    stores = [_start(procs, _store(bus, db, name, tmp_path), "<-") for name in ("store-a", "store-b")]
    group = ["--workers-group", "inf", "--lease-ttl-s", TTL]
    workers = [_start(procs, _infer(bus, model, *group), "listening on") for _ in range(2)]
    owned = _owned(bus, "m3sense-infer-inf", workers, [8, 8])
    _start(procs, ["preprocess", "--bus", bus], "subscribed")

    async def watch() -> list[Message]:
        answers: list[Message] = []
        async with NatsSubscriber(bus, ["affect/"]) as live:  # a plain subscription: sees, takes nothing
            replay = Proc(["replay", str(src), "--bus", bus, "--speed", "max"])
            procs.append(replay)
            expected = sum(len(t) for t in truth.values())
            while len(answers) < expected:
                msg = await live.recv(120)
                if msg.meta.get("event") is None:
                    answers.append(msg)
        return answers

    answers = asyncio.run(watch())
    for store in stores:
        _wait_for_every_device(store)
    shares: dict[int, set[tuple[str, float]]] = {}
    for msg in answers:
        shares.setdefault(msg.incarnation, set()).add((msg.device, msg.meta["t_start"]))
    assert len(shares) == 2, "two workers, each its own publisher"
    a, b = shares.values()
    assert a and b and not a & b, "each worker answers its own, non-empty share"
    assert a | b == {(d, t) for d, ts in truth.items() for t in ts}, "together, every window"
    assert len(answers) == len(a | b), "no window answered twice"
    devices_of = [{d for d, _ in s} for s in (a, b)]
    by_partition = [{d for d in DEVICES if partition_of(d) in o} for o in owned]
    assert sorted(map(sorted, devices_of)) == sorted(map(sorted, by_partition)), "shares follow the partitions"
    for store in stores:
        store.popen.terminate()
        assert store.popen.wait(timeout=30) == 0
    windows, lost, rows, _ = _stored(db)
    assert windows == truth and lost == {}
    assert rows[0] == rows[1] == 2 * sum(len(t) for t in truth.values()), "two writers, every row once"


@NEEDS_NATS
def test_kill_9_of_a_preprocess_worker_hands_its_devices_to_the_other(
    nats_server: NatsServer, procs: list[Proc], tmp_path: Path, model: Path, recording
) -> None:
    src, truth = recording
    bus, db = nats_server.bus, tmp_path / "affect.db"
    store = _start(procs, _store(bus, db, "store", tmp_path), "<-")
    _start(procs, _infer(bus, model), "listening on")
    group = ["preprocess", "--bus", bus, "--workers-group", "pre", "--lease-ttl-s", TTL]
    workers = [_start(procs, group, "worker of group") for _ in range(2)]
    owned = _owned(bus, "m3sense-preprocess-pre", workers, [8, 8])
    victim_at = next(i for i, o in enumerate(owned) if partition_of("sim01") in o)  # the one with three devices
    victim, survivor = workers[victim_at], workers[1 - victim_at]
    victims_devices = {d for d in DEVICES if partition_of(d) in owned[victim_at]}
    assert len(victims_devices) == 3

    # the survivor answers for the dead worker's devices
    _replay_killing(procs, bus, src, victim, victims_devices, speed=20, before=6, after=3)
    _owned(bus, "m3sense-preprocess-pre", [survivor], [PARTITIONS])  # the dead worker's leases ran out
    _wait_for_every_device(store)
    store.popen.terminate()
    assert store.popen.wait(timeout=30) == 0, "the store counted nothing lost"
    windows, lost, rows, sources = _stored(db)
    assert windows == truth, {d: (len(windows.get(d, ())), len(t)) for d, t in truth.items()}
    assert lost == {}, "the survivor rebuilt the dead worker's windows from the stream"
    assert rows[0] == rows[1] == 2 * sum(len(t) for t in truth.values()), "every window once, two tasks each"
    assert sources == {"replay"}, "the survivor read each device's source from the sources bucket"
    survivor.popen.terminate()
    _, err = survivor.popen.communicate(timeout=90)
    takeovers = re.findall(r"takeovers (\d+)", err)
    assert takeovers and int(takeovers[-1]) > 0, err[-2000:]


@NEEDS_NATS
@NEEDS_NATS
def test_kill_9_of_a_store_worker_hands_its_devices_and_their_ledger_to_the_other(
    nats_server: NatsServer, procs: list[Proc], tmp_path: Path, model: Path, recording
) -> None:
    """Two store workers share the devices; one is killed with -9 between its sink flushes (1 s
    apart) while it holds answers. The other takes its partitions from the last acknowledgement,
    and its window positions from the group's ledger bucket: every window is stored exactly once
    and none is counted lost (without the ledger, it would count the dead one's stored windows
    as lost: they are numbered below the first it gets)."""
    src, truth = recording
    bus, db = nats_server.bus, tmp_path / "affect.db"
    group = ["--workers-group", "st", "--lease-ttl-s", TTL, "--sink", f"sqlite:{db}", "--flush-interval-s", "1"]
    workers = [_start(procs, ["store", "--bus", bus, *group], "<-") for _ in range(2)]
    owned = _owned(bus, "m3sense-store-st", workers, [8, 8])
    _start(procs, _infer(bus, model), "listening on")
    _start(procs, ["preprocess", "--bus", bus], "subscribed")
    victim_at = next(i for i, o in enumerate(owned) if partition_of("sim01") in o)
    victim, survivor = workers[victim_at], workers[1 - victim_at]
    victims_devices = {d for d in DEVICES if partition_of(d) in owned[victim_at]}

    _replay_killing(procs, bus, src, victim, victims_devices, speed=10, before=12)
    stored_by_victim, _, _, _ = _stored(db)
    assert any(stored_by_victim.get(d) for d in victims_devices), "the victim had stored windows before it died"
    _owned(bus, "m3sense-store-st", [survivor], [PARTITIONS])
    _wait_for_every_device(survivor)
    survivor.popen.terminate()
    assert survivor.popen.wait(timeout=30) == 0, "the survivor counted nothing lost"
    windows, lost, rows, sources = _stored(db)
    assert windows == truth, {d: (len(windows.get(d, ())), len(t)) for d, t in truth.items()}
    assert lost == {}, "the survivor took the dead worker's window positions from the ledger bucket"
    assert rows[0] == rows[1] == 2 * sum(len(t) for t in truth.values()), "every window once, two tasks each"
    assert sources == {"replay"}


def test_run_starts_worker_groups_on_nats(nats_server: NatsServer, tmp_path: Path, model: Path, recording) -> None:
    src, truth = recording
    db = tmp_path / "run.db"
    proc = run_cli(
        "run",
        str(src),
        "--bus",
        nats_server.bus,
        "--preprocess-workers",
        "2",
        "--infer-workers",
        "2",
        "--sink",
        f"sqlite:{db}",
        "--model",
        str(model),
        "--tasks",
        "stress,emotion",
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = sum(len(t) for t in truth.values())
    last = proc.stderr.strip().splitlines()[-1]
    assert f"{expected} affect windows from {len(truth)} device(s)" in last and "none lost" in last, last
    windows, lost, rows, sources = _stored(db)
    assert windows == truth and lost == {} and rows[0] == rows[1] == 2 * expected and sources == {"replay"}


def test_run_refuses_workers_without_nats(recording) -> None:
    proc = run_cli("run", str(recording[0]), "--infer-workers", "2", timeout=120)
    assert proc.returncode == 2 and "--infer-workers 2 needs --bus nats://" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def _msg(kind: str, t0: float, *, n: int = 1, fs: float = 0.0, meta: dict | None = None) -> Message:
    modality = "eda" if kind == "raw" else kind
    return Message(
        kind=kind, device="sim01", modality=modality, seq=0, t0_s=t0, fs_hz=fs, samples=np.zeros(n), meta=meta or {}
    )


def test_a_message_is_held_until_every_window_it_fed_is_published() -> None:
    from preprocess.sharded import HeldAcks, needed_until

    chunk = _msg("raw", 100.0, n=4, fs=4.0)  # samples at 100.0 .. 100.75
    label = _msg("label", 90.0, meta={"task": "stress", "label": "rest", "start_s": 90.0, "end_s": 130.0})
    assert needed_until(chunk) == 100.75 and needed_until(label) == 130.0
    assert needed_until(_msg("status", 0.0, meta={"event": "start", "source": "replay"})) is None
    assert needed_until(_msg("status", 0.0, meta={"event": "end"})) == float("inf")
    held = HeldAcks()
    held.hold(chunk, 100.75)
    held.hold(label, 130.0)

    def window(t_start: float) -> SimpleNamespace:
        return SimpleNamespace(device="sim01", t_start_s=t_start)

    # the windows holding t = 100.75 start at 85, 90, 95 and 100 (hop 5): held until the one at 100 is out
    assert held.published(window(95.0), 5.0) == [] and len(held) == 2  # type: ignore[arg-type]
    assert held.published(window(100.0), 5.0) == [chunk]  # type: ignore[arg-type]
    assert held.closed("sim01") == [label] and len(held) == 0
    held.hold(chunk, 100.75)
    assert held.drop({"sim01"}) == [chunk] and held.devices() == []


def test_a_store_group_refuses_a_positions_file(tmp_path: Path) -> None:
    """The group's bucket is a store worker's window ledger: a --positions file beside it would be a
    second truth that other workers never see."""
    proc = run_cli(
        "store",
        "--bus",
        "nats://127.0.0.1:4",
        "--workers-group",
        "st",
        "--sink",
        f"sqlite:{tmp_path / 'x.db'}",
        "--positions",
        str(tmp_path / "p.json"),
    )
    assert proc.returncode == 2 and "leave out --positions" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.db").exists()
