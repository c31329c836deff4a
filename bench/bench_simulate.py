"""Synthetic E4 generator: speed, and per-phase wrist statistics beside real WESAD recordings.

Prints
  1. generation speed for one subject of ``--minutes``, beside a floor measured in the same run:
     drawing as many standard normals as the session has samples (no generator can be cheaper);
  2. per-phase statistics (mean ± SD over subjects) of simulated subjects, with and without
     faults, and, if ``../shared/data/wesad-e4`` exists, of the real WESAD E4 exports (their
     ``labels.csv`` phases), with one measuring function for all. Usage:
    .venv/bin/python bench/bench_simulate.py [--minutes 100] [--subjects 10] [--seed 1]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from scipy.signal import find_peaks

from replay.e4csv import read_e4_export
from replay.recording import PERIODIC, Recording
from replay.simulate import simulate_sessions

WESAD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wesad-e4"
PHASES = ("baseline", "stress", "amusement", "meditation")


def times(sig) -> np.ndarray:
    return sig.t0_s + np.arange(sig.n) / sig.fs_hz


def phase_stats(rec: Recording, a: float, b: float) -> dict[str, float]:
    """Wrist statistics over [a, b): HR from IBI rows, EDA mean, SCRs >= 0.01 µS per minute,
    TEMP slope, SD of |ACC|, BVP SD and the share of the time covered by IBI rows."""
    out = {}
    rows = (rec.ibi_t_s >= a) & (rec.ibi_t_s < b)
    out["HR from IBI (bpm)"] = float(np.mean(60.0 / rec.ibi_s[rows])) if rows.any() else np.nan
    out["IBI coverage"] = float(rec.ibi_s[rows].sum() / (b - a))
    eda = rec.signals["eda"]
    sel = (times(eda) >= a) & (times(eda) < b)
    out["EDA mean (µS)"] = float(eda.values[sel].mean())
    peaks, _ = find_peaks(eda.values[sel], prominence=0.01)
    out["SCR>=0.01 /min"] = peaks.size / ((b - a) / 60.0)
    temp = rec.signals["temp"]
    sel = (times(temp) >= a) & (times(temp) < b)
    out["TEMP slope (°C/min)"] = float(np.polyfit((times(temp)[sel] - a) / 60.0, temp.values[sel], 1)[0])
    acc = rec.signals["acc"]
    sel = (times(acc) >= a) & (times(acc) < b)
    out["SD |ACC| (1/64 g)"] = float(np.linalg.norm(acc.values[sel].astype(float), axis=1).std())
    bvp = rec.signals["bvp"]
    sel = (times(bvp) >= a) & (times(bvp) < b)
    out["BVP SD"] = float(bvp.values[sel].std())
    return out


def table(per_subject: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, str]]:
    cells: dict[str, dict[str, str]] = {}
    for phase in PHASES:
        rows = [s[phase] for s in per_subject if phase in s]
        for key in rows[0] if rows else ():
            v = np.array([r[key] for r in rows])
            cells.setdefault(key, {})[phase] = f"{np.nanmean(v):.3g} ± {np.nanstd(v):.2g}"
    return cells


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=100.0)
    ap.add_argument("--subjects", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    simulate_sessions(minutes=1, seed=0)  # warm imports and caches
    reps = 5
    t = time.perf_counter()
    for i in range(reps):
        simulate_sessions(minutes=args.minutes, seed=args.seed + i)
    gen_s = (time.perf_counter() - t) / reps
    n = sum(int(args.minutes * 60 * fs) * (3 if m == "acc" else 1) for m, (fs, _) in PERIODIC.items())
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    for _ in range(reps):
        rng.normal(size=n)
    floor_s = (time.perf_counter() - t) / reps
    print(
        f"one subject, {args.minutes:g} min ({n} samples): {gen_s * 1000:.0f} ms "
        f"({args.minutes * 60 / gen_s:.0f}x real time); floor, {n} normals: {floor_s * 1000:.1f} ms"
    )

    columns = {}
    for name, faults in (("simulated", True), ("simulated, no faults", False)):
        simulated = []
        for s in simulate_sessions(
            minutes=max(args.minutes, 45.0), seed=args.seed, subjects=args.subjects, off_wrist=faults, motion=faults
        ):
            stats = {}
            for p in s.phases:
                if p.kind in PHASES and p.kind not in stats:
                    stats[p.kind] = phase_stats(s.recording, p.start_s + 30.0, p.end_s - 30.0)
            simulated.append(stats)
        columns[name] = table(simulated)
    if WESAD.is_dir():
        real = []
        for folder in sorted(p for p in WESAD.iterdir() if p.is_dir()):
            rec = read_e4_export(folder)
            stats = {}
            for iv in rec.labels:
                if iv.label in PHASES and iv.label not in stats:
                    stats[iv.label] = phase_stats(rec, iv.start_s, iv.end_s)
            real.append(stats)
        columns[f"WESAD ({len(real)} subjects)"] = table(real)
    else:
        print(f"({WESAD} absent: simulated statistics only)")
    print(
        f"\nper-phase mean ± SD over subjects; simulated: {args.subjects} subjects of "
        f"{max(args.minutes, 45.0):g} min, seed {args.seed}, with and without motion bursts and "
        "off-wrist stretches; phase edges trimmed 30 s"
    )
    for key in columns["simulated"]:
        print(f"\n{key}")
        for name, cells in columns.items():
            print(f"  {name:24s}" + "".join(f"{ph}: {cells[key].get(ph, '-'):>18s}  " for ph in PHASES))


if __name__ == "__main__":
    main()
