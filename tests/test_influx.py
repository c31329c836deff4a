"""The InfluxDB sink against a real influxd (1.6.7 from Debian): its 1.x ``/write`` path
straight to the server, its v2 path through the test's v2→v1 write proxy; and what
``m3sense store`` reports and exits with.

Reads go through InfluxQL over HTTP and through the ``influx`` command-line client, not
through the product's own reader, except where the reader itself is under test.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest

from bus import Hub, Message, Publisher
from m3sense.cli import main
from storage import (
    AffectRecord,
    InfluxSink,
    PhysioRecord,
    RecordBuilder,
    StoreNode,
    device_topics,
    parse_sink,
    read_affect,
)
from tests.conftest import Proc
from tests.servers import (
    DATABASE,
    NEEDS_INFLUXD,
    InfluxServer,
    V2WriteProxy,
    affect_meta,
    free_port,
    influx_proxy,
    influx_target,
    influx_v1,
    influxd,
    influxd_auth,
    outage_scenario,
    series_values,
)
from tests.test_storage_sqlite import T0, WINDOW_S, publish_session, truth_at, window_ends

pytestmark = NEEDS_INFLUXD
__all__ = ["influx_proxy", "influx_v1", "influxd", "influxd_auth"]  # fixtures used below


@dataclass(frozen=True)
class WritePath:
    name: str
    sink: str
    proxy: V2WriteProxy | None


@pytest.fixture(params=["v2-proxy", "v1", "v1-detected"])
def write_path(request: pytest.FixtureRequest, influxd: InfluxServer) -> WritePath:
    """The v2 API through the proxy; 1.x's /write named by db=; 1.x found by the sink behind bucket=."""
    if request.param == "v2-proxy":
        proxy = request.getfixturevalue("influx_proxy")
        return WritePath(request.param, proxy.sink(), proxy)
    influxd.empty_database()
    return WritePath(
        request.param, influxd.sink(f"db={DATABASE}" if request.param == "v1" else f"bucket={DATABASE}"), None
    )


def affect_records(t_end: float, **kw) -> list[AffectRecord]:
    msg = Message(
        kind="affect", device="dev1", modality="affect", seq=0, t0_s=t_end, fs_hz=0, meta=affect_meta(t_end, **kw)
    )
    records = RecordBuilder().push(msg)
    affect = [r for r in records if isinstance(r, AffectRecord)]
    assert len(affect) == len(records), records
    return affect


def test_store_node_writes_one_point_per_window_and_task(
    influxd: InfluxServer, write_path: WritePath, tmp_path: Path, bus_address: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def go() -> InfluxSink:
        with Hub(bus_address):
            async with InfluxSink(influx_target(write_path.sink), spool_dir=tmp_path / "spool") as sink:
                node = StoreNode(bus_address, sink, flush_interval_s=0.2)
                stop = asyncio.Event()
                runner = asyncio.create_task(node.run(stop))
                async with Publisher(bus_address) as pub:
                    assert await pub.wait_for_subscribers(device_topics("dev1"), 10) == []
                    sent = await publish_session(pub)
                await node.wait_processed(sent, 30)
                stop.set()
                await runner
        return sink

    caplog.set_level(logging.WARNING, logger="storage")
    sink = asyncio.run(go())
    c = sink.counters
    assert c.dropped == c.rejected == c.spooled == c.pending == c.failures == 0 and c.written > 0
    if write_path.proxy is not None:
        assert write_path.proxy.writes_v2 > 0  # everything arrived through the v2 API
    # a 1.6.7 behind bucket= answers /api/v2/write with 404: the sink says it switches to /write
    assert ("has no /api/v2/write" in caplog.text) == (write_path.name == "v1-detected")

    ends_us = [round(t * 1e6) for t in window_ends(60)]
    assert c.affect_written == 3 * len(ends_us)
    rows = series_values(influxd.query('SELECT * FROM "affect" GROUP BY "task"'))
    assert sorted((r["task"], r["time"]) for r in rows) == sorted(
        (task, t) for task in ("stress", "anxiety", "emotion") for t in ends_us
    )
    stress = sorted((r for r in rows if r["task"] == "stress"), key=lambda r: r["time"])
    assert [r["true_label"] for r in stress] == [truth_at(t / 1e6) for t in ends_us]
    assert [r["label"] for r in stress] == [truth_at(t / 1e6) for t in ends_us]
    assert all(r["device"] == "dev1" and r["source"] == "replay" and r["model"] == "m3sense-test" for r in rows)
    assert stress[0]["p_stress"] == pytest.approx(0.15) and stress[0]["confidence"] == pytest.approx(0.7)
    assert stress[0]["t_start_s"] == pytest.approx(ends_us[0] / 1e6 - WINDOW_S)

    # the same through Debian's influx CLI
    cli = influxd.cli('SELECT count("status") FROM "affect" GROUP BY "task"')
    assert {r["task"]: r["count"] for r in series_values(cli)} == {
        "stress": len(ends_us),
        "anxiety": len(ends_us),
        "emotion": len(ends_us),
    }

    physio = influxd.query('SELECT count("eda_us"), mean("temp_c"), mean("hr_bpm") FROM "physio" WHERE time > 0')
    (row,) = series_values(physio)
    assert row["count"] == 60 and row["mean"] == pytest.approx(33.0) and row["mean_1"] == pytest.approx(75, abs=3)
    status = series_values(influxd.query('SELECT "detail" FROM "device_status" GROUP BY "event"'))
    assert sorted(r["event"] for r in status) == ["end", "start"]


def test_timeline_reads_influxdb_with_influxql(
    influxd: InfluxServer, influx_proxy: V2WriteProxy, tmp_path: Path, capsys
) -> None:
    ends = [T0 + 20 + 10 * k + 1 / 64 for k in range(5)]

    async def go() -> None:
        async with InfluxSink(influx_target(influx_proxy.sink()), spool_dir=tmp_path / "spool") as sink:
            for t in ends:
                await sink.write(affect_records(t, truth={"stress": "baseline"}, low_quality=t == ends[1]))
            await sink.flush()

    asyncio.run(go())
    capsys.readouterr()
    assert main(["timeline", "--sink", influx_proxy.sink(), "--json", "--device", "dev1"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(x["time"], x["task"]) for x in lines] == [
        (t, task) for t in ends for task in ("anxiety", "emotion", "stress")
    ]
    low = [x for x in lines if x["time"] == ends[1]]
    assert all(
        x["label"] is None
        and x["confidence"] is None
        and x["quality"]["status"] == "low_quality"
        and x["quality"]["off_wrist"] is True
        for x in low
    )
    assert [x["true_label"] for x in lines if x["task"] == "stress"] == ["baseline"] * 5
    # the reader returns what was written, field for field
    written = [r for t in ends for r in affect_records(t, truth={"stress": "baseline"}, low_quality=t == ends[1])]
    back = read_affect(parse_sink(influx_proxy.sink()), since_s=ends[2])
    assert back == sorted([r for r in written if r.time_s >= ends[2]], key=lambda r: (r.time_s, r.device, r.task))
    assert main(["timeline", "--sink", influx_proxy.sink(), "--json", "--device", "nobody"]) == 0
    assert capsys.readouterr().out == ""


def test_replayed_data_never_overwrites_live_data(
    influxd: InfluxServer, influx_proxy: V2WriteProxy, tmp_path: Path
) -> None:
    t = T0 + 20

    async def go() -> None:
        async with InfluxSink(influx_target(influx_proxy.sink()), spool_dir=tmp_path / "spool") as sink:
            await sink.write(affect_records(t, tasks=("stress",), source="live", labels={"stress": "baseline"}))
            await sink.write(affect_records(t, tasks=("stress",), source="replay", labels={"stress": "stress"}))
            await sink.flush()

    asyncio.run(go())
    rows = series_values(influxd.query('SELECT "label" FROM "affect" GROUP BY "source"'))
    assert sorted((r["source"], r["label"], r["time"]) for r in rows) == [
        ("live", "baseline", round(t * 1e6)),
        ("replay", "stress", round(t * 1e6)),
    ]


@pytest.mark.parametrize(
    "outage_s",
    [
        3.0,
        pytest.param(60.0, marks=pytest.mark.slow, id="60s"),  # the figure; also bench/bench_storage.py
    ],
)
def test_an_influxdb_outage_mid_stream_loses_no_point(
    influxd: InfluxServer, influx_proxy: V2WriteProxy, tmp_path: Path, bus_address: str, outage_s: float
) -> None:
    result = asyncio.run(outage_scenario(influxd, influx_proxy, bus_address, tmp_path / "spool", outage_s=outage_s))
    c = result["counters"]
    assert result["outage_s"] >= outage_s and result["spooled_at_restart"] > 0  # it was down, and data went to disk
    assert c["failures"] >= 2 and c["spooled"] == c["replayed"] > 0
    assert c["dropped"] == c["rejected"] == c["pending"] == 0
    assert c["written"] == result["records"] == result["points"]  # zero points lost
    assert result["stored_times_us"] == result["window_ends_us"]
    assert not list((tmp_path / "spool").glob("*.lp"))


def test_the_spool_outlives_the_store(tmp_path: Path, influx_v1: InfluxServer) -> None:
    """Stopped while InfluxDB is away, the store keeps its points on disk; the next start sends them."""
    dead = influx_target(f"influx://127.0.0.1:{free_port()}?bucket={DATABASE}")  # nobody listens: connection refused
    ends = [T0 + 20 + 10 * k for k in range(30)]

    async def first() -> InfluxSink:
        async with InfluxSink(dead, spool_dir=tmp_path / "spool", batch_size=20, retry_min_s=0.05) as sink:
            for t in ends:
                await sink.write(affect_records(t))
            await sink.flush()
            await sink.counters.wait_for(lambda c: c.failures >= 1, 30)
        return sink

    async def second() -> InfluxSink:
        # same spool, now pointing where the data can go (a store restarted with a corrected address)
        async with InfluxSink(influx_target(influx_v1.sink()), spool_dir=tmp_path / "spool") as sink:
            assert sink.counters.pending == 90
            await sink.flush()
        return sink

    c1 = asyncio.run(first()).counters
    assert c1.written == 0 and c1.spooled == 90 and c1.pending == 90 and c1.dropped == 0
    c2 = asyncio.run(second()).counters
    assert c2.written == c2.replayed == 90 and c2.pending == 0
    (row,) = series_values(influx_v1.query('SELECT count("status") FROM "affect"'))
    assert row["count"] == 90


def test_a_full_spool_drops_and_counts(tmp_path: Path) -> None:
    dead = influx_target(f"influx://127.0.0.1:{free_port()}?bucket={DATABASE}")
    line_bytes = 400  # roughly one affect point; the bound holds two batches of ten

    async def go() -> InfluxSink:
        async with InfluxSink(
            dead,
            spool_dir=tmp_path / "spool",
            batch_size=10,
            max_queue=10,
            max_spool_bytes=2 * 10 * line_bytes,
            retry_min_s=0.05,
        ) as sink:
            for k in range(40):
                await sink.write(affect_records(T0 + 20 + 10 * k))
            await sink.flush()
        return sink

    c = asyncio.run(go()).counters
    assert c.dropped > 0 and c.spooled > 0 and c.written == 0
    assert c.spooled + c.dropped == 120  # every point accounted for
    on_disk = sum(len(f.read_text().splitlines()) for f in (tmp_path / "spool").glob("*.lp"))
    assert on_disk == c.spooled


@pytest.mark.parametrize("write_path", ["v2-proxy", "v1"], indirect=True)
def test_points_the_server_refuses_are_counted_not_retried(
    tmp_path: Path, influxd: InfluxServer, write_path: WritePath
) -> None:
    import urllib.request

    # make eda_us a string field in the shard our points go to: a float eda_us is then a field type conflict
    urllib.request.urlopen(
        urllib.request.Request(
            f"{influxd.url}/write?db={DATABASE}&precision=s",
            data=f'physio,device=dev1,source=live eda_us="x" {int(T0) - 10}'.encode(),
        ),
        timeout=10,
    )

    async def go() -> InfluxSink:
        async with InfluxSink(influx_target(write_path.sink), spool_dir=tmp_path / "spool") as sink:
            await sink.write(
                [
                    PhysioRecord(time_s=T0 + k, device="dev1", source="live", signal=signal, value=1.0)
                    for k in range(5)
                    for signal in ("eda_us", "temp_c")
                ]
            )
            await sink.flush()
        return sink

    c = asyncio.run(go()).counters
    # 1.x stores the good points of the batch and names how many it dropped ("partial write ... dropped=5")
    assert c.rejected == 5 and c.written == 5 and c.spooled == c.failures == 0
    (row,) = series_values(influxd.query('SELECT count("temp_c") FROM "physio" WHERE time > 0'))
    assert row["count"] == 5


def test_the_token_is_used_but_never_shown(
    tmp_path: Path, bus_address: str, influxd: InfluxServer, influx_proxy: V2WriteProxy, procs: list[Proc]
) -> None:
    token = "tok-" + os.urandom(8).hex()
    (tmp_path / "token").write_text(token + "\n")
    with Hub(bus_address):
        store = Proc(
            [
                "-v",
                "store",
                "--bus",
                bus_address,
                "--sink",
                influx_proxy.sink(),
                "--token-file",
                str(tmp_path / "token"),
                "--spool-dir",
                str(tmp_path / "spool"),
            ]
        )
        procs.append(store)
        assert token not in " ".join(store.argv)
        store.wait_for_stderr("store:")

        async def publish() -> int:
            async with Publisher(bus_address) as pub:
                assert await pub.wait_for_subscribers(device_topics("dev1"), 30) == []
                n = 4
                for k in range(n):
                    await pub.publish("affect", "dev1", t0_s=T0 + 20 + k, fs_hz=0, meta=affect_meta(T0 + 20 + k))
                return n

        asyncio.run(publish())
        store.popen.send_signal(signal.SIGTERM)
        assert store.popen.wait(timeout=30) == 0
    log = store.stderr.read()
    assert token not in log and "12 points (12 affect) written to" in log.splitlines()[-1]
    assert influx_proxy.authorizations == {f"Token {token}"}


# --- m3sense store: what it says and how it exits ------------------------------------------------


async def publish_windows(bus: str, n: int) -> int:
    """``n`` affect windows of dev1 (three tasks each); returns the points they make."""
    async with Publisher(bus) as pub:
        assert await pub.wait_for_subscribers(device_topics("dev1"), 30) == []
        for k in range(n):
            t = T0 + 20 + 10 * k
            await pub.publish("affect", "dev1", t0_s=t, fs_hz=0, meta=affect_meta(t))
    return 3 * n


def run_store(
    procs: list[Proc], bus: str, sink: str, *extra: str, windows: int = 4, sig: int = signal.SIGTERM
) -> tuple[int, dict, list[str]]:
    """``m3sense store --json``: publish ``windows``, stop it with ``sig``; its exit code, its
    one JSON object and its stderr lines."""
    store = Proc(["store", "--json", "--bus", bus, "--sink", sink, *extra])
    procs.append(store)
    store.wait_for_stderr("store:")
    if windows:
        asyncio.run(publish_windows(bus, windows))
    store.popen.send_signal(sig)
    code = store.popen.wait(timeout=60)
    (line,) = store.stdout.read().splitlines()  # exactly one JSON object
    return code, json.loads(line), store.stderr.read().splitlines()


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 0), (signal.SIGINT, 130)], ids=["sigterm", "ctrl-c"])
def test_store_into_influxdb_1x_writes_and_says_so(
    influx_v1: InfluxServer, tmp_path: Path, bus_address: str, procs: list[Proc], sig: int, code: int
) -> None:
    """The issue's command (bucket=, Debian's 1.6.7, no proxy): every point lands, and the
    summary and exit code say so; Ctrl-C still stores everything, and exits 130."""
    sink = influx_v1.sink(f"bucket={DATABASE}")
    with Hub(bus_address):
        got, report, err = run_store(procs, bus_address, sink, "--spool-dir", str(tmp_path / "spool"), sig=sig)
    assert got == code and report == {
        "sink": parse_sink(sink).address,
        "written": 12,
        "spooled": 0,
        "spool_dir": str(tmp_path / "spool"),
        "dropped": 0,
        "refused": 0,
        "affect_records": 12,
        "exit_code": code,
        "received": 12,
        "error": None,
        "lost_windows": 0,
        "lost_windows_by_device": {},
    }
    assert "12 points (12 affect) written to" in err[-1] and "none lost" in err[-1]
    assert err[-1].startswith("store: interrupted;") == (sig == signal.SIGINT)
    (row,) = series_values(influx_v1.cli('SELECT count("status") FROM "affect"'))
    assert row["count"] == 12


def test_unreachable_influxdb_exits_1_and_names_the_spool(
    influx_v1: InfluxServer, tmp_path: Path, bus_address: str, procs: list[Proc]
) -> None:
    spool = tmp_path / "spool"
    with Hub(bus_address):
        code, report, err = run_store(
            procs, bus_address, f"influx://127.0.0.1:{free_port()}?db={DATABASE}", "--spool-dir", str(spool)
        )
        assert code == report["exit_code"] == 1
        assert (report["written"], report["spooled"], report["spool_dir"], report["dropped"]) == (0, 12, str(spool), 0)
        assert "nothing reached InfluxDB" in err[-1] and f"12 points wait in spool {spool}" in err[-1]
        assert "sends them first" in err[-1] and "none lost" in err[-1]
        # as the summary says: the next store with this spool sends them (here to a server that listens)
        code, report, err = run_store(procs, bus_address, influx_v1.sink(), "--spool-dir", str(spool), windows=0)
    assert code == 0 and report["written"] == 12 and report["spooled"] == 0
    (row,) = series_values(influx_v1.query('SELECT count("status") FROM "affect"'))
    assert row["count"] == 12


def test_missing_credentials_are_reported_and_the_points_wait(
    influxd_auth: InfluxServer, tmp_path: Path, bus_address: str, procs: list[Proc], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("INFLUX_TOKEN", raising=False)
    credentials = influxd_auth.credentials
    assert credentials is not None, "the fixture starts it with auth"
    spool = tmp_path / "spool"
    with Hub(bus_address):
        code, report, err = run_store(procs, bus_address, influxd_auth.sink(), "--spool-dir", str(spool))
        assert code == 1 and report["written"] == 0 and report["spooled"] == 12 and "HTTP 401" in report["error"]
        assert "InfluxDB wants credentials: set $INFLUX_TOKEN or --token-file" in err[-1]
        assert f"12 points wait in spool {spool}" in err[-1]
        (tmp_path / "token").write_text(credentials + "\n")
        code, report, err = run_store(
            procs,
            bus_address,
            influxd_auth.sink(),
            "--spool-dir",
            str(spool),
            "--token-file",
            str(tmp_path / "token"),
            windows=0,
        )
    assert code == 0 and report["written"] == 12 and report["spooled"] == 0
    assert credentials.split(":")[1] not in "\n".join(err)
    (row,) = series_values(influxd_auth.query('SELECT count("status") FROM "affect"'))
    assert row["count"] == 12
