"""MQTT sink figures against a real Mosquitto (Debian's, started here on a loopback port).

    .venv/bin/python bench/bench_mqtt.py [--records 20000] [--outage-s 3]

1. Throughput: ``--records`` affect records (one retained QoS 1 state message each, 4 devices
   x 3 tasks), written 10 at a time as the store does, until the broker acknowledged every one.
2. Outage: half of them, then the broker stops for ``--outage-s`` while the other half is written,
   then it starts again (no persistence: every retained message is gone); how long until every
   record was acknowledged, how many waited, how many were dropped, and whether every retained
   state is back and equal to the last record of its topic.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage.mqtt import MqttSink
from storage.records import AffectRecord
from storage.target import MqttTarget, parse_sink
from tests.servers import MosquittoServer

T0 = 1_700_000_000.0


def records(n: int) -> list[AffectRecord]:
    out = []
    for i in range(n):
        device, task = f"e4-{i % 4}", ("stress", "anxiety", "emotion")[(i // 4) % 3]
        p = 0.5 + 0.4 * ((i * 7919) % 100) / 100
        out.append(
            AffectRecord(
                time_s=T0 + i,
                t_start_s=T0 + i - 60,
                device=device,
                task=task,
                source="replay",
                model="bench",
                label="high",
                confidence=p,
                probs=(("high", p), ("low", 1 - p)),
                status="ok",
                off_wrist=False,
                motion=False,
                missing_fraction=0.0,
            )
        )
    return out


def _mqtt_target(server: MosquittoServer) -> MqttTarget:
    target = parse_sink(server.sink())
    assert isinstance(target, MqttTarget), target
    return target.with_credentials(None, server.password)


async def throughput(server: MosquittoServer, rs: list[AffectRecord]) -> dict:
    target = _mqtt_target(server)
    async with MqttSink(target) as sink:
        started = time.perf_counter()
        for i in range(0, len(rs), 10):
            await sink.write(rs[i : i + 10])
        await sink.flush()
        elapsed = time.perf_counter() - started
        return {
            "records": len(rs),
            "seconds": round(elapsed, 2),
            "records_per_s": round(len(rs) / elapsed),
            "counters": sink.counters.as_dict(),
        }


async def outage(server: MosquittoServer, rs: list[AffectRecord], outage_s: float) -> dict:
    target = _mqtt_target(server)
    half = len(rs) // 2
    async with MqttSink(target, retry_min_s=0.2, retry_max_s=1.0) as sink:
        for i in range(0, half, 10):
            await sink.write(rs[i : i + 10])
        await sink.flush()
        server.stop()
        stopped = time.perf_counter()
        for i in range(half, len(rs), 10):
            await sink.write(rs[i : i + 10])
            await asyncio.sleep(outage_s * 10 / half)  # spread over the outage
        waiting = sink.counters.pending
        while time.perf_counter() - stopped < outage_s:
            await asyncio.sleep(0.05)
        server.start()
        restarted = time.perf_counter()
        await sink.counters.wait_for(lambda c: c.written == len(rs) and c.pending == 0, 120)
        drained_s = time.perf_counter() - restarted
        last = {}
        for r in rs:
            last[f"m3sense/{r.device}/{r.task}/state"] = r.time_s
        seen = server.retained("m3sense/+/+/state")
        back = {t: json.loads(p)["t"] for t, p in seen.items()}
        return {
            "records": len(rs),
            "outage_s": outage_s,
            "pending_at_restart": waiting,
            "seconds_to_drain_after_restart": round(drained_s, 2),
            "reconnects": sink.connects - 1,
            "states_back_and_equal": back == last,
            "counters": sink.counters.as_dict(),
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=20000)
    ap.add_argument("--outage-s", type=float, default=3.0)
    args = ap.parse_args()
    rs = records(args.records)
    with tempfile.TemporaryDirectory() as d:
        server = MosquittoServer(Path(d) / "a").start()
        try:
            a = asyncio.run(throughput(server, rs))
        finally:
            server.stop()
        server = MosquittoServer(Path(d) / "b").start()
        try:
            b = asyncio.run(outage(server, rs, args.outage_s))
        finally:
            server.stop()
    print(json.dumps({"throughput": a, "outage": b}, indent=1))


if __name__ == "__main__":
    main()
