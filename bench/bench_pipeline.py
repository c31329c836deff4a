"""The whole pipeline: replay → preprocess → infer → store (SQLite), as ``m3sense run`` starts it.

Prints
  (a) one synthetic recording replayed end to end as fast as possible, in × real time;
  (b) N synthetic devices replayed at real speed: p50/p99 latency from a window's end (on the
      replay's wall clock) to its affect message on the bus, and the CPU the stages used;
  (c) end-to-end windows/s beside model-only windows/s (the same Predictor on the same windows,
      batches of 32, in this process), measured in the same run as (a).
Latency is taken where the affect message reaches a subscriber; the store writes it to SQLite
within its flush interval (1 s) after that. Usage:
    .venv/bin/python bench/bench_pipeline.py [--minutes 30] [--fast-devices 10] [--devices 10,100,1000] [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from bus import Message
from m3sense.pipeline import PipelineConfig, run_pipeline
from preprocess import recording_windows
from replay import simulate_recordings


def cpu_s(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def fast_replay(minutes: float, devices: int, folder: Path) -> None:
    recs = simulate_recordings(minutes=minutes, seed=77, subjects=devices)
    arrivals: list[float] = []
    started = time.perf_counter()
    result = asyncio.run(
        run_pipeline(
            recs,
            PipelineConfig(sink=f"sqlite:///{folder / 'a.db'}"),
            on_affect=lambda msg: arrivals.append(time.time()),
        )
    )
    wall = time.perf_counter() - started
    assert result.replay is not None, "the replay did not start"
    streaming = arrivals[-1] - result.replay.started_unix_s  # first sample out to last affect in
    recorded = sum(r.duration_s for r in recs)
    print(
        f"(a) {devices} x {minutes:.0f}-minute recordings end to end: {recorded / streaming:.0f}x real time "
        f"while streaming ({streaming:.1f} s for {len(arrivals)} windows); {wall:.1f} s with the stages' "
        f"start-up and shut-down"
    )

    from inference import Predictor, load_checkpoint

    windows = [w.to_message() for r in recs for w in recording_windows(r)]
    predictor = Predictor(load_checkpoint(), backend="onnx")
    predictor.predict_messages(windows[:32])  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(windows), 32):
        predictor.predict_messages(windows[i : i + 32])
    model_rate = len(windows) / (time.perf_counter() - t0)
    e2e_rate = len(arrivals) / streaming
    print(
        f"(c) end-to-end {e2e_rate:.0f} windows/s vs model-only {model_rate:.0f} windows/s: "
        f"{e2e_rate / model_rate:.0%} "
        f"(the end-to-end figure shares two cores between replay, preprocess, infer and store)"
    )


def real_time(n: int, seconds: float, folder: Path) -> None:
    recs = simulate_recordings(minutes=max(0.5, seconds / 60), seed=5, subjects=min(n, 99))
    # more than 99 devices: the same physiology under other device ids
    from dataclasses import replace

    recs = [replace(recs[i % len(recs)], device=f"dev{i:04d}") for i in range(n)]
    start_s = recs[0].start_s
    arrivals: list[tuple[float, float]] = []

    def on_affect(msg: Message) -> None:
        arrivals.append((time.time(), float(msg.meta.get("t_end", msg.t0_s))))

    before_children, before_self = cpu_s(resource.RUSAGE_CHILDREN), cpu_s(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    result = asyncio.run(
        run_pipeline(recs, PipelineConfig(sink=f"sqlite:///{folder / f'b{n}.db'}", speed=1.0), on_affect=on_affect)
    )
    wall = time.perf_counter() - t0
    cpu = cpu_s(resource.RUSAGE_CHILDREN) - before_children + cpu_s(resource.RUSAGE_SELF) - before_self
    assert result.replay is not None, "the replay did not start"
    started = result.replay.started_unix_s
    # a window ending at data time t closed on the replay's wall clock at started + (t - start)
    lat = np.array(
        [
            arrived - (started + (t_end - start_s))
            for arrived, t_end in arrivals
            if t_end - start_s <= recs[0].duration_s
        ]
    )
    p50, p99 = np.percentile(lat, [50, 99]) if lat.size else (math.nan, math.nan)
    print(
        f"(b) {n:5d} devices at real speed: {len(arrivals)} windows, latency p50 {p50:.2f} s, p99 {p99:.2f} s, "
        f"CPU {cpu / wall:.2f} cores of 2 over {wall:.0f} s"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30, help="length of each recording in (a)")
    ap.add_argument("--fast-devices", type=int, default=10, help="recordings replayed side by side in (a)")
    ap.add_argument("--devices", default="10,100,1000")
    ap.add_argument("--seconds", type=float, default=60)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        fast_replay(args.minutes, args.fast_devices, folder)
        for n in (int(x) for x in args.devices.split(",")):
            real_time(n, args.seconds, folder)


if __name__ == "__main__":
    main()
