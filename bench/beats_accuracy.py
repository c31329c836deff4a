"""Heart-rate error of BVP beat detectors against the E4's own beats and the simulator's.

For each real WESAD wrist (``../shared/data/wesad-e4/S*``) the reference at second ``t`` is
60 / mean of the E4's IBI.csv intervals ending in (t - W, t] (at least three of them; W = 10 s
for the streaming detectors, the window length for the per-window one), and HR.csv as the E4
exported it. On the simulator (``replay/simulate.py``, no motion, no off-wrist) the reference is
the same rule over the intervals the simulated E4 kept. Prints, per detector and source, the
median and 90th-percentile absolute error (bpm) and the coverage: the share of reference
seconds that got an estimate.

    .venv/bin/python bench/beats_accuracy.py [--minutes 20] [--subjects S2,S3,...] [--sim-seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import numpy as np

WESAD = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "wesad-e4"
WINDOW_S, HOP_S = 20.0, 5.0


def _csv(path: Path) -> tuple[float, float, np.ndarray]:
    a = np.loadtxt(path, delimiter=",", ndmin=2)
    return float(a[0, 0]), float(a[1, 0]), a[2:, 0]


def _ibi_reference(times: np.ndarray, ibi_t: np.ndarray, ibi: np.ndarray, span_s: float) -> np.ndarray:
    """60 / mean IBI ending in (t - span, t]; NaN with fewer than three."""
    lo = np.searchsorted(ibi_t, times - span_s, side="right")
    hi = np.searchsorted(ibi_t, times, side="right")
    c = np.r_[0.0, np.cumsum(ibi)]
    n = hi - lo
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n >= 3, 60.0 * n / (c[hi] - c[lo]), np.nan)


def streaming_rates(name: str, t0: float, fs: float, bvp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(times, bpm) of a streaming detector fed in 11-sample BLE packets."""
    out: list[tuple[float, float]] = []
    if name == "ingest.beats":
        det = importlib.import_module("ingest.beats").BeatDetector(fs_hz=fs)
        for i in range(0, bvp.size, 11):
            out += [(h.t_s, h.bpm) for h in det.push(t0 + i / fs, bvp[i : i + 11]).hr]
    else:
        br = importlib.import_module("storage.physio").BeatRate(fs)
        for i in range(0, bvp.size, 11):
            out += br.push(t0 + i / fs, bvp[i : i + 11])
    a = np.array(out, dtype=float).reshape(-1, 2)
    return a[:, 0], a[:, 1]


def window_rates(t0: float, fs: float, bvp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(window end, bpm) of the per-window feature detector over 20 s windows every 5 s."""
    from inference.features import FEATURES, window_features

    n, hop = int(WINDOW_S * fs), int(HOP_S * fs)
    starts = np.arange(0, bvp.size - n + 1, hop)
    wins = np.stack([bvp[s : s + n] for s in starts])
    k = len(starts)
    f = window_features(
        {
            "bvp": wins,
            "eda": np.ones((k, 80)),
            "temp": np.full((k, 80), 33.0),
            "acc": np.tile([0.0, 0.0, 1.0], (k, 640, 1)),
        }
    )
    return t0 + (starts + n) / fs, f[:, FEATURES.index("hr_bpm")].astype(float)


def score(times: np.ndarray, est: np.ndarray, ref_times: np.ndarray, ref: np.ndarray) -> tuple[float, float, float]:
    """(median |err|, p90 |err|, coverage) over the seconds where the reference has a value."""
    want = np.isfinite(ref)
    got = dict(zip(np.round(times, 3).tolist(), est.tolist()))
    e = np.array([got.get(round(t, 3), np.nan) for t in ref_times[want]])
    r = ref[want]
    ok = np.isfinite(e)
    err = np.abs(e[ok] - r[ok])
    if not err.size:
        return np.nan, np.nan, 0.0
    return float(np.median(err)), float(np.percentile(err, 90)), float(ok.mean())


def sources(minutes: float, subjects: list[str], sim_seeds: list[int]):
    for s in subjects:
        d = WESAD / s
        t0, fs, bvp = _csv(d / "BVP.csv")
        bvp = bvp[: int(minutes * 60 * fs)]
        ibi_raw = np.loadtxt(d / "IBI.csv", delimiter=",", skiprows=1, ndmin=2)
        h0, hfs, hr = _csv(d / "HR.csv")
        yield s, t0, fs, bvp, t0 + ibi_raw[:, 0], ibi_raw[:, 1], (h0 + np.arange(hr.size) / hfs, hr)
    from replay import simulate_recordings

    for seed in sim_seeds:
        rec = simulate_recordings(minutes=minutes, seed=seed, off_wrist=False, motion=False)[0]
        b, h = rec.signals["bvp"], rec.signals["hr"]
        yield (
            f"sim{seed}",
            b.t0_s,
            b.fs_hz,
            np.asarray(b.values, float),
            rec.ibi_t_s,
            rec.ibi_s,
            (h.t0_s + np.arange(h.n) / h.fs_hz, np.asarray(h.values, float)),
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument(
        "--subjects", default=",".join(sorted((p.name for p in WESAD.glob("S*")), key=lambda s: int(s[1:])))
    )
    ap.add_argument("--sim-seeds", default="0,1,2")
    ap.add_argument("--detectors", default="ingest.beats,storage.physio,inference.features")
    a = ap.parse_args()
    subjects = [s for s in a.subjects.split(",") if s] if WESAD.is_dir() else []
    seeds = [int(s) for s in a.sim_seeds.split(",") if s]
    dets = a.detectors.split(",")
    rows: dict[str, list[tuple[str, float, float, float, float]]] = {d: [] for d in dets}
    for name, t0, fs, bvp, ibi_t, ibi, (hr_t, hr) in sources(a.minutes, subjects, seeds):
        for d in dets:
            if d == "inference.features":
                times, est = window_rates(t0, fs, bvp)
                span = WINDOW_S
            else:
                times, est = streaming_rates(d, t0, fs, bvp)
                span = 10.0
            grid = np.arange(np.ceil(t0) + span, t0 + bvp.size / fs, HOP_S if d == "inference.features" else 1.0)
            if d == "inference.features":
                grid = times
            ref = _ibi_reference(grid, ibi_t, ibi, span)
            med, p90, cov = score(times, est, grid, ref)
            hr_ref = np.interp(times, hr_t, hr, left=np.nan, right=np.nan)
            ok = np.isfinite(est) & np.isfinite(hr_ref)
            hr_med = float(np.median(np.abs(est[ok] - hr_ref[ok]))) if ok.any() else np.nan
            rows[d].append((name, med, p90, cov, hr_med))
            print(
                f"{d:20s} {name:6s} IBI-ref median {med:5.1f} p90 {p90:5.1f} bpm, coverage {cov:5.1%};"
                f" vs HR.csv median {hr_med:5.1f}",
                flush=True,
            )
    print("\nsummary (mean over sources of each figure):")
    for d, r in rows.items():
        for kind in ("S", "sim"):
            sel = [x for x in r if x[0].startswith(kind)]
            if sel:
                m = np.nanmean(np.array([x[1:] for x in sel]), axis=0)
                print(
                    f"{d:20s} {'WESAD' if kind == 'S' else 'sim':5s} median {m[0]:5.2f} p90 {m[1]:5.2f} bpm,"
                    f" coverage {m[2]:5.1%}, vs HR.csv median {m[3]:5.2f}  ({len(sel)} sources)"
                )


if __name__ == "__main__":
    main()
