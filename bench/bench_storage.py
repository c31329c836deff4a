"""Storage throughput (records/s) and an InfluxDB outage, each beside a baseline from the same run.

Prints records/s for
  1. SQLite: ``SqliteSink`` (WAL, batched inserts, a worker thread), fed 100 records per
     ``write`` as the store node does, beside bare ``sqlite3.executemany`` of the same rows
     in one transaction per 1000 into the same schema;
  2. InfluxDB 1.6 (Debian's influxd on loopback): ``InfluxSink`` through influxdb-client's v2
     write API and the tests' v2→v1 proxy, beside bare HTTP POSTs of the same line protocol
     straight to influxd's v1 ``/write`` (no client, no proxy) — the proxy's cost is in
     the first figure;
  3. the outage scenario of tests/test_influx.py with ``--outage`` seconds of InfluxDB down
     in the middle of a stream (default 60, the issue's figure): what was spooled, replayed,
     dropped, and whether InfluxDB holds every point.
Usage (needs influxd for 2 and 3: apt-get install influxdb influxdb-client):
    .venv/bin/python bench/bench_storage.py [--records 100000] [--outage 60]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' server helpers

from bus import free_bus_address
from storage import AffectRecord, InfluxSink, InfluxTarget, PhysioRecord, SqliteSink, parse_sink, to_lines
from storage.sqlite import _INSERT, connect
from tests.servers import INFLUXD, InfluxServer, V2WriteProxy, outage_scenario

T0 = 1_700_000_000.0


def make_records(n: int) -> list:
    """The store's real mix: per 10 s of one device, 3 affect records and 30 physio records."""
    out: list = []
    k = 0
    while len(out) < n:
        t = T0 + 10 * k
        out += [
            AffectRecord(
                time_s=t + 20,
                t_start_s=t,
                device=f"dev{k % 4}",
                task=task,
                source="replay",
                model="bench",
                label="stress",
                confidence=0.7,
                probs=(("amusement", 0.15), ("baseline", 0.15), ("stress", 0.7)),
                status="ok",
                off_wrist=False,
                motion=False,
                missing_fraction=0.0,
                true_label="stress",
            )
            for task in ("stress", "anxiety", "emotion")
        ]
        out += [
            PhysioRecord(time_s=t + s + 1, device=f"dev{k % 4}", source="replay", signal=sig, value=1.0 + s)
            for s in range(10)
            for sig in ("eda_us", "temp_c", "hr_bpm")
        ]
        k += 1
    return out[:n]


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:>10,.0f} records/s ({seconds:.2f} s)"


async def sqlite_sink(records: list, db: Path) -> float:
    start = time.perf_counter()
    async with SqliteSink(db) as sink:
        for i in range(0, len(records), 100):
            await sink.write(records[i : i + 100])
    assert sink.counters.written == len(records)
    return time.perf_counter() - start


def sqlite_bare(records: list, db: Path) -> float:
    conn = connect(db)
    start = time.perf_counter()
    for i in range(0, len(records), 1000):
        groups: dict[type, list] = {}
        for r in records[i : i + 1000]:
            groups.setdefault(type(r), []).append(_INSERT[type(r)][1](r))
        with conn:
            for kind, rows in groups.items():
                conn.executemany(_INSERT[kind][0], rows)
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed


async def influx_sink(records: list, proxy: V2WriteProxy, spool: Path, max_queue: int) -> tuple[float, int]:
    """Seconds until InfluxDB acknowledged every record, and how many went through the disk
    spool because the queue bound was reached (the records arrive faster than one HTTP
    connection takes them)."""
    target = parse_sink(proxy.sink())
    assert isinstance(target, InfluxTarget), target
    start = time.perf_counter()
    async with InfluxSink(target, spool_dir=spool, batch_size=5000, max_queue=max_queue) as sink:
        for i in range(0, len(records), 100):
            await sink.write(records[i : i + 100])
        await sink.flush()
    c = sink.counters
    assert c.written == len(records) and c.spooled == c.replayed and c.dropped == c.rejected == 0, c
    return time.perf_counter() - start, c.spooled


def influx_bare(lines: list[str], server: InfluxServer, db: str) -> float:
    start = time.perf_counter()
    for i in range(0, len(lines), 5000):
        req = urllib.request.Request(
            f"{server.url}/write?db={db}&precision=u", data="\n".join(lines[i : i + 5000]).encode()
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            assert resp.status == 204
    return time.perf_counter() - start


def count_points(server: InfluxServer, db: str) -> int:
    res = server.query('SELECT count("status") FROM "affect"', db=db)
    affect = res["results"][0]["series"][0]["values"][0][1]
    res = server.query('SELECT count("eda_us"), count("temp_c"), count("hr_bpm") FROM "physio"', db=db)
    return affect + sum(res["results"][0]["series"][0]["values"][0][1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--outage", type=float, default=60.0, help="seconds of InfluxDB outage (0: skip)")
    args = ap.parse_args()
    records = make_records(args.records)
    tmp = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    print(f"{len(records):,} records (affect and 1 Hz physio, 1:10)")

    print("SQLite")
    print(f"  bare executemany      {rate(len(records), sqlite_bare(records, tmp / 'bare.db'))}")
    print(f"  SqliteSink            {rate(len(records), asyncio.run(sqlite_sink(records, tmp / 'sink.db')))}")

    if INFLUXD is None:
        print("InfluxDB: influxd not installed, skipped")
        return
    server = InfluxServer(tmp / "influxd").start()
    try:
        for db in ("bare", "m3sense"):
            server.query(f'CREATE DATABASE "{db}"', db=None)
        lines = to_lines(records)
        print("InfluxDB 1.6 on loopback")
        print(f"  bare POST /write      {rate(len(records), influx_bare(lines, server, 'bare'))}")
        proxy = V2WriteProxy(server)
        try:
            took, _ = asyncio.run(influx_sink(records, proxy, tmp / "spool", max_queue=len(records)))
            print(f"  InfluxSink via proxy  {rate(len(records), took)}  (queue unbounded: memory only)")
            assert count_points(server, "bare") == count_points(server, "m3sense") == len(records)
            took, spooled = asyncio.run(influx_sink(records, proxy, tmp / "spool", max_queue=20_000))
            print(
                f"  InfluxSink via proxy  {rate(len(records), took)}  (queue bound 20,000: "
                f"{spooled:,} records went through the disk spool)"
            )
            if args.outage > 0:
                server.query('DROP DATABASE "m3sense"', db=None)
                server.query('CREATE DATABASE "m3sense"', db=None)
                r = asyncio.run(
                    outage_scenario(server, proxy, free_bus_address(), tmp / "outage-spool", outage_s=args.outage)
                )
                c = r["counters"]
                lost = r["records"] - r["points"]
                print(
                    f"outage of {r['outage_s']:.1f} s mid-stream: {r['windows']} windows, {r['records']} records sent; "
                    f"{r['spooled_at_restart']} spooled by the restart; counters {c}; "
                    f"InfluxDB holds {r['points']} points: {lost} lost"
                )
        finally:
            proxy.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
