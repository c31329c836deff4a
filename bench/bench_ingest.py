"""BLE ingest throughput: decoded samples/s on one core, and virtual wristbands per process.

Prints
  1. samples/s of the pure codec (``codec.decode``) and of the whole per-device pipeline
     (``DeviceIngest.packet``: decode, timestamps, BVP integration, beats, gap checks), beside
     a baseline that only views each packet's bytes as an array (``np.frombuffer``), all on
     the same pre-encoded packets of a synthetic session, in this process, one core;
  2. for N virtual wristbands streaming in real time through the real bleak code path
     (virtual peripheral, ``ingest.ble.stream``, publisher, hub, a subscriber counting):
     the CPU this process used per wall second, and the samples that reached the subscriber
     after a 2 s warm-up as a fraction of the nominal rates (100 % = keeping up). The virtual
     peripherals' own encoding runs in the same process, so real wristbands cost less.

    .venv/bin/python bench/bench_ingest.py [--packets 20000] [--devices 1,16,64,128] [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import numpy as np

from bus import Hub, Publisher, Subscriber, free_bus_address
from ingest import codec
from ingest.ble import LinkConfig, Wristband, device_id, stream
from ingest.clocks import SystemClock
from ingest.device import DeviceIngest
from ingest.virtual import VirtualE4, VirtualRadio, virtual_address, virtual_recordings

WARMUP_S = 2.0


def packets(n: int) -> list[tuple[str, bytes, float, int]]:
    """(char, bytes, arrival, samples) in the wristband's interleaving, from a synthetic session."""
    rec = virtual_recordings(1, minutes=2.0, seed=1)[0]
    clock = SystemClock()
    dev = VirtualE4("E4:00:00:00:00:99", rec, clock=clock)
    events = []
    for char, fs in codec.PERIODIC_RATES_HZ.items():
        spp = codec.DEFAULT_LAYOUT.samples_per_packet(char)
        for j in range(n):
            events.append(((j + 1) * spp / fs, char, j))
    events.sort()
    out = []
    for t, char, j in events[:n]:
        out.append((char, dev.encode_packet(char, j), 1e9 + t, codec.DEFAULT_LAYOUT.samples_per_packet(char)))
    return out


def rate(label: str, fn, pkts, baseline: float | None = None) -> float:
    t0 = time.process_time()
    samples = fn(pkts)
    cpu = time.process_time() - t0
    r = samples / cpu
    extra = f"  ({r / baseline:.2f} x baseline)" if baseline else ""
    print(f"  {label:<44s} {r / 1e6:8.2f} M samples/s/core{extra}")
    return r


def bench_decode(n: int) -> None:
    pkts = packets(n)
    print(f"decoding {len(pkts)} packets ({sum(p[3] for p in pkts)} samples), one core:")

    def frombuffer(ps):
        for _, data, _, _ in ps:
            np.frombuffer(data, dtype=np.uint8)
        return sum(p[3] for p in ps)

    def decode(ps):
        return sum(codec.decode(c, d).values.shape[0] for c, d, _, _ in ps)

    def pipeline(ps):
        ing = DeviceIngest()
        for c, d, t, _ in ps:
            ing.packet(c, d, t)
        return sum(ing.stats.samples.values())

    base = rate("baseline: np.frombuffer per packet", frombuffer, pkts)
    rate("codec.decode", decode, pkts, base)
    rate("DeviceIngest.packet (decode+time+beats)", pipeline, pkts, base)


async def serve_virtual(n: int, seconds: float, recordings: list) -> tuple[float, float]:
    bus = free_bus_address()
    clock = SystemClock()
    radio = VirtualRadio()
    for i in range(n):
        radio.add(VirtualE4(virtual_address(i), recordings[i % len(recordings)], clock=clock))
    bands = [Wristband(address=a, device=device_id(a)) for a in radio.devices]
    received = 0
    with Hub(bus):
        async with Subscriber(bus, ["raw/"]) as sub, Publisher(bus) as pub:
            await pub.wait_for_subscribers([f"raw/bvp/{b.device}/" for b in bands], 10)

            warm_until = time.perf_counter() + WARMUP_S

            async def count() -> None:
                nonlocal received
                async for msg in sub:
                    if msg.modality in codec.PERIODIC_RATES_HZ and time.perf_counter() >= warm_until:
                        received += msg.n

            counter = asyncio.create_task(count())
            cpu0, wall0 = time.process_time(), time.perf_counter()
            await stream(pub, bands, config=LinkConfig(), clock=clock, backend=radio.backend(), duration_s=seconds)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            await pub.flush()
            counter.cancel()
            await asyncio.gather(counter, return_exceptions=True)
    # after the warm-up (n simultaneous scans and connects), samples should arrive at the nominal rate
    due = n * sum(fs for fs in codec.PERIODIC_RATES_HZ.values()) * (wall - WARMUP_S)
    return cpu / wall, received / due


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packets", type=int, default=20000)
    ap.add_argument("--devices", default="1,16,64,128")
    ap.add_argument("--seconds", type=float, default=8.0)
    args = ap.parse_args()
    bench_decode(args.packets)
    counts = [int(x) for x in args.devices.split(",")]
    recordings = virtual_recordings(min(4, max(counts)), minutes=1.0, seed=2)
    print(f"\nvirtual wristbands in real time, {args.seconds:g} s each (peripherals + ingest + bus in one process):")
    for n in counts:
        load, delivered = asyncio.run(serve_virtual(n, args.seconds, recordings))
        print(
            f"  {n:3d} wristbands: CPU {100 * load:5.1f} % of one core, samples at {100 * delivered:5.1f} % of "
            f"the nominal rates (extrapolated: {n / max(load, 1e-9):.0f} per core)"
        )


if __name__ == "__main__":
    main()
