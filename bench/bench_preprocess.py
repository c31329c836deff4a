"""Preprocess throughput and memory for 1, 100 and 1000 devices replayed concurrently.

Each device streams a synthetic E4 session (``replay.simulate``) in the wristband's packet
cadence (``replay.chunks.recording_messages``: BVP 11, ACC 6, EDA 6, TEMP 4 samples per
message, plus HR, IBI and labels), devices interleaved in time order with staggered starts,
into one :class:`preprocess.Preprocessor` on one core. Messages are built outside the timed
region, one time slice at a time, so memory stays small; only ``push`` is timed.

Printed per device count: messages/s, samples/s and windows/s achieved, the real-time factor
(recorded seconds of all devices per second of processing, divided by N: >= 1 means the N
devices are processed in real time), the capacity (devices one core keeps up with), and memory
per device at steady state (tracemalloc in a separate pass of at most ``--memory-devices``
devices, and the sample buffers alone). Baseline, measured in
the same run: a loop that only reads each message's samples (the floor of per-message Python
cost) and ``sosfilt``+``lfilter`` over the same signals in one call (the floor of filtering).

    .venv/bin/python bench/bench_preprocess.py [--minutes 2] [--devices 1 100 1000]
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import replace

import numpy as np

from bus import Message
from preprocess import FILTERS, Preprocessor, StreamingFilter
from replay import recording_messages, simulate_recordings

SLICE_S = 5.0


def template(minutes: float) -> tuple[list[tuple[float, Message]], float]:
    rec = simulate_recordings(minutes=minutes, seed=1, subjects=1, off_wrist=False)[0]
    start = rec.start_s
    return [(due - start, msg) for due, msg in recording_messages(rec)], rec.duration_s


def slices(tpl: list[tuple[float, Message]], devices: int) -> Iterator[list[tuple[float, Message]]]:
    """Time slices of all devices' messages, device i shifted by i * 37 ms and renamed."""
    offsets = [(i * 0.037) % SLICE_S for i in range(devices)]
    names = [f"dev{i:04d}" for i in range(devices)]
    end = tpl[-1][0] + SLICE_S
    t = 0.0
    pos = [0] * devices
    while t < end:
        batch = []
        for i in range(devices):
            j = pos[i]
            while j < len(tpl) and tpl[j][0] + offsets[i] < t + SLICE_S:
                due, msg = tpl[j]
                batch.append((due + offsets[i], replace(msg, device=names[i], t0_s=msg.t0_s + offsets[i])))
                j += 1
            pos[i] = j
        batch.sort(key=lambda e: e[0])
        yield batch
        t += SLICE_S


def run(tpl: list[tuple[float, Message]], duration_s: float, devices: int) -> dict[str, float]:
    """Throughput (no tracing: tracemalloc slows allocation-heavy code several-fold)."""
    pre = Preprocessor(device_timeout_s=60.0)
    busy = floor = 0.0
    msgs = samples = windows = 0
    for batch in slices(tpl, devices):
        t = time.perf_counter()
        for _, msg in batch:
            samples += msg.samples.shape[0] if msg.samples.ndim else 0
        floor += time.perf_counter() - t
        t = time.perf_counter()
        for due, msg in batch:
            windows += len(pre.push(msg, now_s=due))
        busy += time.perf_counter() - t
        msgs += len(batch)
    t = time.perf_counter()
    windows += len(pre.flush())
    busy += time.perf_counter() - t
    return {
        "messages": msgs,
        "samples": samples,
        "windows": windows,
        "busy_s": busy,
        "floor_s": floor,
        "realtime_x": devices * duration_s / busy,
    }


def memory(tpl: list[tuple[float, Message]], duration_s: float, devices: int) -> tuple[float, float]:
    """Bytes per device half-way through the session, every device open and warm:
    (everything the preprocessor holds, per tracemalloc; its sample buffers alone)."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    pre = Preprocessor(device_timeout_s=60.0)
    for k, batch in enumerate(slices(tpl, devices)):
        for due, msg in batch:
            pre.push(msg, now_s=due)
        if k == int(duration_s / SLICE_S) // 2:
            break
    del batch
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return held / devices, pre.nbytes() / devices


def filter_floor(tpl: list[tuple[float, Message]]) -> float:
    """Seconds to filter one device's whole BVP, EDA and TEMP in one call each."""
    signals = {
        m: np.concatenate([msg.samples for _, msg in tpl if msg.kind == "raw" and msg.modality == m]) for m in FILTERS
    }
    t = time.perf_counter()
    for m, x in signals.items():
        StreamingFilter(FILTERS[m]).offline(x)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=2.0, help="recorded minutes per device")
    ap.add_argument("--devices", type=int, nargs="+", default=[1, 100, 1000])
    ap.add_argument(
        "--memory-devices", type=int, default=100, help="devices in the (slow, traced) memory pass (default 100)"
    )
    args = ap.parse_args()
    tpl, duration_s = template(args.minutes)
    print(
        f"one device: {len(tpl)} messages over {duration_s:.0f} s (packet cadence); "
        f"filter floor {filter_floor(tpl) * 1e3:.2f} ms per device for the whole session"
    )
    print(
        f"{'devices':>7} {'msg/s':>9} {'samples/s':>10} {'windows/s':>9} {'x realtime':>10} {'capacity':>8} "
        f"{'floor msg/s':>11} {'KiB/device':>10} {'buffers KiB':>11}"
    )
    for n in args.devices:
        r = run(tpl, duration_s, n)
        held, buffers = memory(tpl, duration_s, min(n, args.memory_devices))
        print(
            f"{n:>7} {r['messages'] / r['busy_s']:>9.0f} {r['samples'] / r['busy_s']:>10.0f} "
            f"{r['windows'] / r['busy_s']:>9.0f} {r['realtime_x'] / n:>10.1f} {r['realtime_x']:>8.0f} "
            f"{r['messages'] / r['floor_s']:>11.0f} {held / 1024:>10.0f} {buffers / 1024:>11.0f}",
            flush=True,
        )
    print(
        f"x realtime: how much faster than real time all N devices were processed on one core; capacity: "
        f"devices one core keeps up with at this load; memory from a pass of at most {args.memory_devices} devices"
    )


if __name__ == "__main__":
    main()
