"""What CURVE costs on the bus: ``Publisher.publish`` → :class:`bus.Hub` → ``Subscriber.recv``, plain
and with CURVE keys (encryption both ways plus the allow-list), for small (one BVP packet, 11
samples) and large (2,048 samples, 16 KiB) messages. Publisher and subscriber run in separate
processes, as in deployment; everything is on loopback. Usage:
    .venv/bin/python bench/bench_curve.py [--messages 50000]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bus import Hub, Publisher, Subscriber, free_bus_address
from bus.security import BusSecurity, init_folder

if TYPE_CHECKING:
    from multiprocessing.queues import Queue


def _subscribe(bus: str, keys: str | None, n: int, ready, result) -> None:
    async def main() -> None:
        security = BusSecurity(keys=Path(keys)) if keys else BusSecurity()
        async with Subscriber(bus, ["raw/"], security=security) as sub:
            ready.set()
            await sub.recv(60)
            t0 = time.perf_counter()
            for _ in range(n - 1):
                await sub.recv(60)
            result.put(time.perf_counter() - t0)

    asyncio.run(main())


def measure(n: int, samples: np.ndarray, keys: Path | None) -> float:
    """Messages per second received, from the first message to the last."""
    bus = free_bus_address()
    security = BusSecurity(keys=keys) if keys else BusSecurity()
    with Hub(bus, security=security):
        ready = mp.Event()
        result: Queue[Any] = mp.Queue()
        p = mp.Process(target=_subscribe, args=(bus, str(keys) if keys else None, n, ready, result))
        p.start()
        ready.wait()

        async def publish() -> None:
            async with Publisher(bus, security=security) as pub:
                assert not await pub.wait_for_subscribers(["raw/bvp/bench/"], 30)
                for i in range(n):
                    await pub.publish("raw", "bench", "bvp", t0_s=1.7e9 + i, fs_hz=64.0, samples=samples)

        asyncio.run(publish())
        elapsed = result.get(timeout=600)
        p.join()
    return (n - 1) / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=50_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp) / "keys"
        init_folder(keys)
        for label, samples in (
            ("11 samples", np.arange(11, dtype=np.float64)),
            ("2048 samples", np.arange(2048, dtype=np.float64)),
        ):
            plain = measure(args.messages, samples, None)
            curve = measure(args.messages, samples, keys)
            print(
                f"{label:>13}: plain {plain:9,.0f} msg/s, CURVE {curve:9,.0f} msg/s ({curve / plain:.0%} of plain; "
                f"{curve * samples.nbytes / 2**20:,.1f} MiB/s of samples)"
            )


if __name__ == "__main__":
    main()
