"""Bus throughput: replay → hub → subscriber, beside bare pyzmq through the same kind of hub.

Prints messages/s and samples/s for
  1. bare pyzmq: pre-built frames of the same sizes, PUB → XSUB/XPUB proxy → SUB (sync sockets);
  2. the bus: ``Publisher.publish`` (numbering + encoding) → :class:`bus.Hub` → ``Subscriber.recv`` (decoding,
     gap counting);
  3. a replay of a synthetic 100-minute session at ``--speed max``, in × real time.
Publisher and subscriber run in separate processes, as in deployment. Usage:
    .venv/bin/python bench/bench_bus.py [--messages 200000] [--minutes 100]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import zmq

from bus import Hub, Publisher, Subscriber, free_bus_address, hub_endpoints
from bus.message import Message, encode

if TYPE_CHECKING:
    from multiprocessing.queues import Queue

SAMPLES = np.arange(11, dtype=np.float64)  # one BVP packet


def bare_subscriber(endpoint: str, n: int, ready, result) -> None:
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.connect(endpoint)
    sub.setsockopt(zmq.SUBSCRIBE, b"raw/")
    ready.set()
    first = sub.recv_multipart(copy=False)
    t0 = time.perf_counter()
    for _ in range(n - 1):
        sub.recv_multipart(copy=False)
    result.put((time.perf_counter() - t0, len(first)))
    sub.close(linger=0)


def bare(bus: str, n: int) -> float:
    ep = hub_endpoints(bus)
    frames = [
        bytes(f)
        for f in encode(
            Message(kind="raw", device="bench", modality="bvp", seq=123456, t0_s=1.7e9, fs_hz=64.0, samples=SAMPLES)
        )
    ]
    ready = mp.Event()
    result: Queue[Any] = mp.Queue()
    p = mp.Process(target=bare_subscriber, args=(ep.subscribers, n, ready, result))
    p.start()
    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.setsockopt(zmq.XPUB_NODROP, 1)
    pub.connect(ep.publishers)
    ready.wait()
    pub.recv()  # the subscription arrived: the path is complete
    for _ in range(n):
        pub.send_multipart(frames, copy=False)
    elapsed, _ = result.get()
    p.join()
    pub.close(linger=0)
    return elapsed


def bus_subscriber(bus: str, n: int, result) -> None:
    async def main() -> None:
        async with Subscriber(bus, ["raw/"]) as sub:
            await sub.recv()
            t0 = time.perf_counter()
            for _ in range(n - 1):
                await sub.recv()
            result.put((time.perf_counter() - t0, sub.stats.gaps, sub.stats.received))

    asyncio.run(main())


def ours(bus: str, n: int) -> float:
    result: Queue[Any] = mp.Queue()
    p = mp.Process(target=bus_subscriber, args=(bus, n, result))
    p.start()

    async def main() -> None:
        async with Publisher(bus) as pub:
            await pub.wait_for_subscribers(["raw/bvp/bench/"])
            for i in range(n):
                await pub.publish("raw", "bench", "bvp", t0_s=1.7e9 + i * 11 / 64, fs_hz=64.0, samples=SAMPLES)

    asyncio.run(main())
    elapsed, gaps, received = result.get()
    p.join()
    assert gaps == 0 and received == n, (gaps, received)
    return elapsed


def replay_subscriber(bus: str, n: int, result) -> None:
    async def main() -> None:
        async with Subscriber(bus, ["raw/", "label/", "status/"]) as sub:
            t0: float | None = None
            samples = 0
            for _ in range(n):
                msg = await sub.recv()
                t0 = t0 or time.perf_counter()
                samples += msg.n
            assert t0 is not None, "no message to time"
            result.put((time.perf_counter() - t0, sub.stats.gaps, samples))

    asyncio.run(main())


def replay_run(bus: str, minutes: float) -> None:
    from replay.chunks import recording_messages
    from replay.clock import replay
    from replay.simulate import simulate_recordings

    rec = simulate_recordings(minutes=minutes, seed=1, subjects=1)[0]
    n = sum(1 for _ in recording_messages(rec))
    result: Queue[Any] = mp.Queue()
    p = mp.Process(target=replay_subscriber, args=(bus, n, result))
    p.start()

    async def main():
        async with Publisher(bus) as pub:
            return await replay([rec], pub, speed=float("inf"), wait_s=None)

    stats = asyncio.run(main())
    elapsed, gaps, samples = result.get()
    p.join()
    print(
        f"replay of a {minutes:.0f}-minute session: {stats.messages} messages, {samples} samples, "
        f"publisher {stats.wall_s:.2f} s, delivered in {elapsed:.2f} s, gaps {gaps}: "
        f"{rec.duration_s / max(stats.wall_s, elapsed):.0f}x real time"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--minutes", type=float, default=100)
    args = ap.parse_args()
    bus = free_bus_address()
    n = args.messages
    with Hub(bus):
        t_bare = bare(bus, n)
        t_ours = ours(bus, n)
        print(
            f"bare pyzmq via proxy : {n / t_bare:10.0f} msg/s {11 * n / t_bare:12.0f} samples/s "
            f"({1e6 * t_bare / n:.1f} us/msg)"
        )
        print(
            f"m3sense bus          : {n / t_ours:10.0f} msg/s {11 * n / t_ours:12.0f} samples/s "
            f"({1e6 * t_ours / n:.1f} us/msg)"
        )
        print(f"bus cost per message : {t_ours / t_bare:.2f}x bare pyzmq (aim <= 2x)")
        replay_run(bus, args.minutes)


if __name__ == "__main__":
    main()
