"""What a pull consumer's fetch policy costs in latency, server CPU and throughput, on a real
``nats-server -js`` started on a free loopback port. Three policies read the same stream:

- ``poll 25 ms`` (the plain subscriber before): batch fetches that linger 25 ms, idle or not;
- ``linger 5 s`` (the sharded worker before): batch fetches that linger up to 5 s, which nats-py
  returns only when the batch is full or the time is up;
- ``Fetcher`` (both now, :class:`bus.nats_backend.Fetcher`): a single-message long poll while
  idle, short-lingering batches while messages flow.

Each runs three phases: a trickle (``--rate`` messages/s for ``--seconds``; latency from publish
to the consumer's hands), idle (``--seconds`` with nothing published; the server's CPU time and
the fetch requests made), and a burst (``--burst`` messages published at once; consumer msg/s).
Usage:
    .venv/bin/python bench/bench_fetch.py [--rate 20] [--seconds 10] [--burst 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nats
import nats.errors
from nats.js import api

from bus.nats_backend import FETCH_BATCH, FETCH_WAIT_S, Fetcher
from tests.nats_servers import NatsServer


class Poll:
    """The plain subscriber's policy before :class:`Fetcher`: always a 25 ms linger."""

    def __init__(self, sub: Any, batch: int) -> None:
        self.sub, self.batch = sub, batch

    async def next(self, limit_s: float = 5.0) -> list[Any]:
        try:
            return await self.sub.fetch(self.batch, timeout=max(0.01, min(limit_s, FETCH_WAIT_S)))
        except (nats.errors.TimeoutError, TimeoutError):
            raise TimeoutError from None


class Linger(Poll):
    """The sharded worker's policy before :class:`Fetcher`: a batch that lingers up to 5 s."""

    async def next(self, limit_s: float = 5.0) -> list[Any]:
        try:
            return await self.sub.fetch(self.batch, timeout=5.0)
        except (nats.errors.TimeoutError, TimeoutError):
            raise TimeoutError from None


class Counting:
    """Counts the fetch requests a policy makes (each is a request the server answers)."""

    def __init__(self, sub: Any) -> None:
        self.sub, self.requests = sub, 0

    async def fetch(self, batch: int, timeout: float) -> list[Any]:
        self.requests += 1
        return await self.sub.fetch(batch, timeout=timeout)


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def measure(bus: str, server_pid: int, index: int, name: str, policy: Any, args: argparse.Namespace) -> dict:
    nc = await nats.connect(bus)
    js = nc.jetstream()
    stream, subject = f"BENCH{index}", f"bench.{index}"
    await js.add_stream(api.StreamConfig(name=stream, subjects=[subject]))
    sub = await js.pull_subscribe(subject, durable="c", stream=stream)
    counting = Counting(sub)
    fetcher = policy(counting, FETCH_BATCH)
    got: list[float] = []

    async def consume() -> None:
        while True:
            try:
                msgs = await fetcher.next()
            except TimeoutError:
                continue
            now = time.perf_counter()
            for m in msgs:
                got.append(now - json.loads(m.data)["t"])
                await m.ack()

    task = asyncio.get_running_loop().create_task(consume())

    async def until_received(n: int, timeout_s: float) -> None:
        deadline = time.perf_counter() + timeout_s
        while len(got) < n and time.perf_counter() < deadline:
            await asyncio.sleep(0.005)

    async def publish() -> None:
        await js.publish(subject, json.dumps({"t": time.perf_counter()}).encode())

    n = int(args.rate * args.seconds)  # the trickle
    for _ in range(n):
        await publish()
        await asyncio.sleep(1 / args.rate)
    await until_received(n, 10.0)
    trickle = list(got)
    cpu0, req0 = cpu_s(server_pid), counting.requests  # idle
    await asyncio.sleep(args.seconds)
    idle_cpu, idle_requests = cpu_s(server_pid) - cpu0, counting.requests - req0
    before = len(got)  # the burst
    t0 = time.perf_counter()
    for _ in range(args.burst):
        await publish()
    await until_received(before + args.burst, 120.0)
    burst_s = time.perf_counter() - t0
    task.cancel()
    await js.delete_stream(stream)
    await nc.close()
    return {
        "policy": name,
        "trickle": f"{len(trickle)}/{n}",
        "p50_ms": 1000 * percentile(trickle, 0.5),
        "p99_ms": 1000 * percentile(trickle, 0.99),
        "max_ms": 1000 * max(trickle, default=float("nan")),
        "idle_cpu_ms_per_s": 1000 * idle_cpu / args.seconds,
        "idle_req_per_s": idle_requests / args.seconds,
        "burst_msg_per_s": (len(got) - before) / burst_s,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description="fetch policies on a real nats-server: latency, idle cost, throughput")
    ap.add_argument("--rate", type=float, default=20.0, help="trickle messages per second (default 20)")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the trickle and idle phases (default 10)")
    ap.add_argument("--burst", type=int, default=20000, help="messages in the burst (default 20000)")
    args = ap.parse_args()
    policies = (("poll 25 ms", Poll), ("linger 5 s", Linger), ("Fetcher", Fetcher))
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(Path(tmp)).start()
        try:
            assert server._proc is not None
            rows = [
                asyncio.run(measure(server.bus, server._proc.pid, i, name, policy, args))
                for i, (name, policy) in enumerate(policies)
            ]
        finally:
            server.stop()
    print(f"trickle {args.rate:g} msg/s for {args.seconds:g} s, idle {args.seconds:g} s, burst {args.burst}")
    head = ("policy", "received", "p50 ms", "p99 ms", "max ms", "idle server CPU ms/s", "idle req/s", "burst msg/s")
    print(f"{head[0]:<11} " + " ".join(f"{h:>{w}}" for h, w in zip(head[1:], (9, 8, 8, 8, 21, 11, 12))))
    for r in rows:
        print(
            f"{r['policy']:<11} {r['trickle']:>9} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['max_ms']:>8.1f} "
            f"{r['idle_cpu_ms_per_s']:>21.2f} {r['idle_req_per_s']:>11.1f} {r['burst_msg_per_s']:>12,.0f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
