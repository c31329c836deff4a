"""The store node into SQLite through a real hub, and `m3sense store` / `timeline` as processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bus import Hub, Publisher
from m3sense.cli import main
from storage import RecordBuilder, SqliteSink, StoreNode, device_topics
from storage.spool import Spool
from storage.sqlite import connect
from tests.conftest import Proc, run_cli
from tests.servers import affect_meta
from tests.test_storage_records import T0, pulse_wave

WINDOW_S, HOP_S = 20.0, 10.0


def window_ends(seconds: float) -> list[float]:
    """Window ends on the BVP sample grid (not whole milliseconds): t0 + k·hop + 1/64."""
    return [T0 + WINDOW_S + k * HOP_S + 1 / 64 for k in range(int((seconds - WINDOW_S - 1) // HOP_S) + 1)]


def truth_at(t_end: float) -> str:
    return "baseline" if t_end < T0 + 40 else "stress"


async def publish_session(
    pub: Publisher, device: str = "dev1", seconds: float = 60.0, bpm: float = 75.0, source: str = "replay"
) -> int:
    """What a replay plus the inference node publish for one device: status start, raw EDA,
    TEMP and BVP in E4 packet sizes, an affect message per window, status end. Returns the count."""
    sent = 0
    await pub.publish("status", device, t0_s=T0, fs_hz=0, meta={"event": "start", "source": source, "recording": "t"})
    bvp = pulse_wave(bpm, seconds)
    ends = iter(window_ends(seconds))
    next_end: float | None = next(ends)
    second = 0
    for i in range(0, bvp.size, 11):
        t = T0 + i / 64.0
        await pub.publish("raw", device, "bvp", t0_s=t, fs_hz=64.0, samples=bvp[i : i + 11])
        sent += 1
        if t >= T0 + second:  # EDA and TEMP in packets of 4 samples: one per second
            await pub.publish(
                "raw", device, "eda", t0_s=T0 + second, fs_hz=4.0, samples=np.full(4, 2.0 + 0.01 * second)
            )
            await pub.publish("raw", device, "temp", t0_s=T0 + second, fs_hz=4.0, samples=np.full(4, 33.0))
            sent += 2
            second += 1
        if next_end is not None and t >= next_end:
            await pub.publish(
                "affect",
                device,
                t0_s=next_end,
                fs_hz=0,
                meta=affect_meta(
                    next_end,
                    source=source,
                    labels={"stress": truth_at(next_end)},
                    truth={"stress": truth_at(next_end), "anxiety": None, "emotion": None},
                ),
            )
            sent += 1
            next_end = next(ends, None)
    await pub.publish("status", device, t0_s=T0 + seconds, fs_hz=0, meta={"event": "end"})
    return sent + 2


async def store_session(bus: str, db: Path, *, devices: tuple[str, ...] = ("dev1",)) -> StoreNode:
    with Hub(bus):
        async with SqliteSink(db, batch_size=100) as sink:
            node = StoreNode(bus, sink, flush_interval_s=0.2)
            stop = asyncio.Event()
            runner = asyncio.create_task(node.run(stop))
            async with Publisher(bus) as pub:
                assert await pub.wait_for_subscribers([t for d in devices for t in device_topics(d)], 10) == []
                sent = sum([await publish_session(pub, d, bpm=60 + 20 * i) for i, d in enumerate(devices)])
            await node.wait_processed(sent, 30)
            stop.set()
            await asyncio.wait_for(runner, 30)
    assert node.subscriber is not None and node.subscriber.stats.gaps == 0
    return node


def rows(db: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_node_stores_one_row_per_window_and_task(tmp_path: Path, bus_address: str) -> None:
    db = tmp_path / "affect.db"
    node = asyncio.run(store_session(bus_address, db, devices=("dev1", "dev2")))
    assert node.builder.rejected == {}
    ends = window_ends(60)
    got = rows(
        db,
        "SELECT device, task, time_s, t_start_s, label, true_label, source FROM affect ORDER BY device, task, time_s",
    )
    expected = sorted(
        (
            d,
            task,
            t,
            t - WINDOW_S,
            {"stress": truth_at(t), "anxiety": "high", "emotion": "low"}[task],
            truth_at(t) if task == "stress" else None,
            "replay",
        )
        for d in ("dev1", "dev2")
        for t in ends
        for task in ("stress", "anxiety", "emotion")
    )
    assert got == expected  # timestamps equal the window ends exactly (REAL round-trips a float64)
    assert rows(db, "PRAGMA journal_mode") == [("wal",)]
    # 1 Hz physiology: every second of EDA and TEMP; heart rate from BVP near each device's rate
    eda = rows(db, "SELECT time_s, value FROM physio WHERE device='dev1' AND signal='eda_us' ORDER BY time_s")
    assert [t for t, _ in eda] == [T0 + k for k in range(1, 61)]
    assert eda[0][1] == pytest.approx(2.0) and eda[-1][1] == pytest.approx(2.59)
    for device, bpm in (("dev1", 60.0), ("dev2", 80.0)):
        hr = rows(
            db, f"SELECT time_s, value FROM physio WHERE device='{device}' AND signal='hr_bpm' AND time_s > {T0 + 15}"
        )
        assert len(hr) >= 40 and all(abs(v - bpm) < 3 for _, v in hr)
    status = rows(db, "SELECT device, event, source, detail FROM device_status ORDER BY device, time_s")
    assert status == [
        ("dev1", "start", "replay", '{"recording":"t"}'),
        ("dev1", "end", "replay", "{}"),
        ("dev2", "start", "replay", '{"recording":"t"}'),
        ("dev2", "end", "replay", "{}"),
    ]


def timeline(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """``m3sense timeline ARGS`` in this process (the subprocess path is tested once below)."""
    capsys.readouterr()
    code = main(["timeline", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_timeline_json_and_plot_read_the_store(tmp_path: Path, bus_address: str, capsys) -> None:
    db = tmp_path / "affect.db"
    asyncio.run(store_session(bus_address, db, devices=("dev1", "dev2")))
    out = run_cli("timeline", "--sink", f"sqlite:///{db}", "--json", check=True)
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    ends = window_ends(60)
    assert len(lines) == 2 * 3 * len(ends)
    assert [(x["time"], x["device"], x["task"]) for x in lines] == [
        (t, d, task) for t in ends for d in ("dev1", "dev2") for task in ("anxiety", "emotion", "stress")
    ]
    first = lines[0]
    assert {"time", "device", "task", "label", "confidence", "quality"} <= set(first)
    assert first["quality"] == {"status": "ok", "off_wrist": False, "motion": False, "missing_fraction": 0.0}
    assert first["confidence"] == pytest.approx(0.7)
    stress = [x for x in lines if x["task"] == "stress" and x["device"] == "dev2"]
    assert [x["true_label"] for x in stress] == [truth_at(t) for t in ends]

    code, one, _ = timeline(capsys, "--sink", str(db), "--json", "--device", "dev2", "--since", str(ends[2]))
    picked = [json.loads(line) for line in one.splitlines()]
    assert code == 0
    assert {x["device"] for x in picked} == {"dev2"} and min(x["time"] for x in picked) == ends[2]
    assert len(picked) == 3 * (len(ends) - 2)

    png = tmp_path / "timeline.png"
    assert timeline(capsys, "--sink", f"sqlite:///{db}", "--plot", str(png))[0] == 0
    import matplotlib.image as mpimg

    image = mpimg.imread(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and image.shape[0] > 300 and image.shape[1] > 800


def test_store_command_flushes_everything_on_sigterm(
    tmp_path: Path, bus_address: str, hub: Hub, procs: list[Proc]
) -> None:
    db = tmp_path / "store.db"
    store = Proc(["store", "--json", "--bus", bus_address, "--sink", f"sqlite:///{db}", "--flush-interval", "30"])
    procs.append(store)
    store.wait_for_stderr("store:")

    async def publish() -> int:
        async with Publisher(bus_address) as pub:
            assert await pub.wait_for_subscribers(device_topics("dev1"), 30) == []
            return await publish_session(pub)

    sent = asyncio.run(publish())
    store.popen.send_signal(signal.SIGTERM)  # long before the 30 s flush timer: only shutdown can save the data
    assert store.popen.wait(timeout=30) == 0
    (report,) = [json.loads(line) for line in store.stdout.read().splitlines()]
    summary = store.stderr.read().splitlines()[-1]
    affect = 3 * len(window_ends(60))
    assert rows(db, "SELECT count(*) FROM affect") == [(affect,)]
    assert rows(db, "SELECT count(*) FROM device_status") == [(2,)]
    stored = sum(rows(db, f"SELECT count(*) FROM {t}")[0][0] for t in ("affect", "physio", "device_status"))
    assert report == {
        "sink": f"sqlite:{db}",
        "written": stored,
        "spooled": 0,
        "spool_dir": None,
        "dropped": 0,
        "refused": 0,
        "affect_records": affect,
        "exit_code": 0,
        "received": stored,
        "error": None,
        "lost_windows": 0,
        "lost_windows_by_device": {},
    }
    assert summary == (
        f"store: {sent} messages, {stored} records received; {stored} records ({affect} affect) "
        f"written to sqlite:{db}; none lost"
    )


@pytest.mark.parametrize("sink", ["influx://127.0.0.1:8086?bucket=", "affect.csv", "sqlite:"])
def test_store_with_a_bad_sink_exits_2_and_still_reports(sink: str, bus_address: str, capsys) -> None:
    assert main(["store", "--json", "--bus", bus_address, "--sink", sink]) == 2
    out, err = capsys.readouterr()
    (report,) = [json.loads(line) for line in out.splitlines()]
    assert report["exit_code"] == 2 and report["written"] == 0 and report["sink"] is None
    assert report["error"] in err.splitlines()[-1]


def test_writing_a_window_again_replaces_it(tmp_path: Path) -> None:
    from bus import Message

    db = tmp_path / "a.db"
    msg = Message(
        kind="affect", device="d", modality="affect", seq=0, t0_s=T0, fs_hz=0, meta=affect_meta(T0, tasks=("stress",))
    )
    again = Message(
        kind="affect",
        device="d",
        modality="affect",
        seq=1,
        t0_s=T0,
        fs_hz=0,
        meta=affect_meta(T0, tasks=("stress",), labels={"stress": "amusement"}),
    )

    async def go() -> None:
        async with SqliteSink(db) as sink:
            b = RecordBuilder()
            await sink.write(b.push(msg))
            await sink.flush()
            await sink.write(b.push(again))
        assert sink.counters.written == 2

    asyncio.run(go())
    assert rows(db, "SELECT label FROM affect") == [("amusement",)]


def test_store_of_another_schema_version_is_refused(tmp_path: Path, capsys) -> None:
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 7")
    conn.close()
    with pytest.raises(ValueError, match="schema version 7"):
        connect(db)
    code, _, err = timeline(capsys, "--sink", str(tmp_path / "missing.db"), "--json")
    assert code == 2 and "no such store" in err


def test_messages_lost_on_the_bus_are_recorded_as_a_gap(tmp_path: Path, bus_address: str) -> None:
    from bus import Message

    db = tmp_path / "gap.db"

    async def go() -> None:
        with Hub(bus_address):
            async with SqliteSink(db) as sink:
                node = StoreNode(bus_address, sink)
                stop = asyncio.Event()
                runner = asyncio.create_task(node.run(stop))
                async with Publisher(bus_address) as pub:
                    assert await pub.wait_for_subscribers(device_topics("dev1"), 10) == []
                    for seq in (0, 1, 6):  # 2..5 never sent: four messages lost upstream
                        t = T0 + 20 + seq
                        await pub.send(
                            Message(
                                kind="affect",
                                device="dev1",
                                modality="affect",
                                seq=seq,
                                t0_s=t,
                                fs_hz=0,
                                meta=affect_meta(t, tasks=("stress",)),
                            )
                        )
                await node.wait_processed(3, 30)
                stop.set()
                await runner

    asyncio.run(go())
    assert rows(db, "SELECT time_s, event, value, detail, source FROM device_status") == [
        (T0 + 26, "bus_gap", 4.0, '{"topic":"affect/dev1/"}', "replay")
    ]
    assert rows(db, "SELECT count(*) FROM affect") == [(3,)]


def test_replayed_recording_into_the_store(tmp_path: Path, bus_address: str, hub: Hub, procs: list[Proc]) -> None:
    """simulate → replay --speed max → store (processes): the recording's physiology at 1 Hz,
    its start and end, tagged replay; heart rate from BVP agrees with the recording's HR stream."""
    import subprocess

    sim = tmp_path / "sim"
    run_cli("simulate", str(sim), "--minutes", "3", "--seed", "5", check=True)
    db = tmp_path / "replay.db"
    store = Proc(["store", "--bus", bus_address, "--sink", str(db)])
    procs.append(store)
    store.wait_for_stderr("store:")
    # the store does not listen to ACC, IBI, tags or labels; a tap does, so that replay's
    # wait-for-subscribers handshake can only complete once the store's own subscriptions are in
    others = Proc(
        [
            "tap",
            "--bus",
            bus_address,
            "--topic",
            "raw/acc/",
            "--topic",
            "raw/ibi/",
            "--topic",
            "raw/tag/",
            "--topic",
            "raw/battery/",
            "--topic",
            "label/",
        ],
        stdout=subprocess.DEVNULL,
    )
    procs.append(others)
    run_cli("replay", str(sim), "--bus", bus_address, "--speed", "max", "--wait", "60", check=True)
    store.popen.send_signal(signal.SIGTERM)
    assert store.popen.wait(timeout=60) == 0
    assert store.stderr.read().splitlines()[-1].endswith("; none lost")

    assert len(rows(db, "SELECT DISTINCT device FROM physio")) == 1
    assert [e for (e,) in rows(db, "SELECT event FROM device_status ORDER BY time_s")] == ["start", "end"]
    assert rows(db, "SELECT DISTINCT source FROM physio") == [("replay",)]
    (n_eda,) = rows(db, "SELECT count(*) FROM physio WHERE signal = 'eda_us'")[0]
    assert 178 <= n_eda <= 181  # one per second of a 3-minute recording
    pairs = rows(
        db,
        """SELECT a.value, b.value FROM physio a JOIN physio b USING (device, source, time_s)
                        WHERE a.signal = 'hr_bpm' AND b.signal = 'hr_device_bpm'""",
    )
    assert len(pairs) > 120
    assert np.median([abs(a - b) for a, b in pairs]) < 8.0


def test_stores_and_spools_are_created_for_their_owner_only(tmp_path: Path) -> None:
    """Health data: a new SQLite store (with its WAL files) 0600 in a new folder 0700; the
    InfluxDB spool's folder 0700 and its batch and lock files 0600, whatever the umask lets others have."""

    def mode(p: Path) -> int:
        return stat.S_IMODE(os.stat(p).st_mode)

    old = os.umask(0o022)
    try:
        db = tmp_path / "new" / "m3.db"

        async def write() -> None:
            async with SqliteSink(db) as sink:
                await sink.write([])
                assert {mode(p) for p in db.parent.glob("m3.db*")} == {0o600}  # db, -wal, -shm while open
                assert len(list(db.parent.glob("m3.db*"))) == 3

        asyncio.run(write())
        assert mode(db.parent) == 0o700 and mode(db) == 0o600
        spool = Spool(tmp_path / "spool", max_bytes=2**20)
        assert spool.put(["m,d=x v=1 1"])
        spool.close()
        files = list((tmp_path / "spool").iterdir())
        assert mode(tmp_path / "spool") == 0o700 and {p.name for p in files} >= {"lock"} and len(files) == 2
        assert {mode(p) for p in files} == {0o600}
    finally:
        os.umask(old)


def _open_after(path: Path, barrier: Any, versions: Any, i: int) -> None:
    from storage.sqlite import connect

    barrier.wait()
    try:
        conn = connect(path)
        versions[i] = conn.execute("PRAGMA user_version").fetchone()[0]
        conn.close()
    except sqlite3.OperationalError:
        versions[i] = -1


def test_several_stores_setting_up_one_new_file_at_once_all_open_it(tmp_path: Path) -> None:
    """Store workers of a group sharing one SQLite file start together: the switch to WAL and the
    schema set-up of one must wait for the other's, not fail with "database is locked"."""
    import multiprocessing

    from storage.sqlite import SCHEMA_VERSION

    ctx = multiprocessing.get_context("fork")
    for attempt in range(4):  # the race is narrow: several fresh files
        path = tmp_path / f"shared-{attempt}.db"
        barrier, versions = ctx.Barrier(6), ctx.Array("i", [0] * 6)
        procs = [ctx.Process(target=_open_after, args=(path, barrier, versions, i)) for i in range(6)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        got = versions[:]
        assert got == [SCHEMA_VERSION] * 6, f"attempt {attempt}: {got} (-1: locked)"
