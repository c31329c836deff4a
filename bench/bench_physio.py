"""CPU the store spends on heart rate from BVP (``storage.physio.BeatRate``), per wristband-hour:
the BVP of ``--devices`` simulated wristbands for ``--minutes``, in E4 BLE packets of 11 samples
(64 Hz), through the beat detector chunk by chunk as it came (``batch_s=0``: the store before)
and gathered into 1 s chunks (``batch_s=1``: now), in the same process, with the rates compared.
Usage:
    .venv/bin/python bench/bench_physio.py [--devices 50] [--minutes 10]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage.physio import BeatRate

FS_HZ = 64.0
PACKET = 11  # BVP samples in an E4 BLE notification
T0 = 1_700_000_000.0


def pulse(bpm: float, seconds: float, seed: int) -> np.ndarray:
    """A PPG-like wave (systolic and dicrotic peaks, drift, noise) at ``bpm``."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * FS_HZ)) / FS_HZ
    phase = (t * bpm / 60.0) % 1.0
    wave = np.exp(-(((phase - 0.15) / 0.07) ** 2)) + 0.35 * np.exp(-(((phase - 0.5) / 0.08) ** 2))
    return 80 * wave + 20 * np.sin(2 * np.pi * 0.1 * t) + rng.normal(0, 3, t.size)


def run(signals: list[np.ndarray], batch_s: float) -> tuple[float, list[list[tuple[float, float]]]]:
    """CPU seconds to push every device's packets (interleaved as a store receives them), and the rates."""
    rates = [BeatRate(FS_HZ, batch_s=batch_s) for _ in signals]
    out: list[list[tuple[float, float]]] = [[] for _ in signals]
    n = signals[0].size
    started = time.process_time()
    for i in range(0, n, PACKET):
        for d, x in enumerate(signals):
            out[d] += rates[d].push(T0 + i / FS_HZ, x[i : i + PACKET])
    for d, r in enumerate(rates):
        out[d] += r.flush()
    return time.process_time() - started, out


def main() -> int:
    ap = argparse.ArgumentParser(description="CPU per wristband-hour of the store's heart rate from BVP")
    ap.add_argument("--devices", type=int, default=50, help="simulated wristbands (default 50)")
    ap.add_argument("--minutes", type=float, default=10.0, help="minutes of BVP each (default 10)")
    args = ap.parse_args()
    rng = np.random.default_rng(7)
    signals = [pulse(float(rng.uniform(55, 120)), args.minutes * 60, seed=d) for d in range(args.devices)]
    hours = args.devices * args.minutes / 60
    before_s, before = run(signals, 0.0)
    after_s, after = run(signals, 1.0)
    same_times = all([t for t, _ in a] == [t for t, _ in b] for a, b in zip(before, after))
    worst = max(
        (float(np.max(np.abs(np.subtract([v for _, v in a], [v for _, v in b])))) for a, b in zip(before, after) if a),
        default=0.0,
    )
    n_rates = sum(len(a) for a in after)
    print(f"{args.devices} wristbands x {args.minutes:g} min of BVP in {PACKET}-sample packets; {n_rates} rates")
    print(f"per packet (before): {before_s / hours:8.2f} CPU s per wristband-hour")
    print(f"1 s chunks (now):    {after_s / hours:8.2f} CPU s per wristband-hour ({before_s / after_s:.1f}x less)")
    print(f"rates: same times {same_times}, largest difference {worst:.2e} bpm")
    return 0 if same_times else 1


if __name__ == "__main__":
    raise SystemExit(main())
