"""Signal-quality rules for one window: off-wrist, motion, flat lines, saturation, missing data.

The rules read the *raw* measured samples (the filters would smear a contact loss over
their delay), and only the samples that were really measured: a missing sample is counted
as missing, never as evidence of anything else.

Thresholds and their sources:

- off-wrist: EDA below :data:`e4.OFF_WRIST_EDA_US` (0.06 uS: electrodes off the skin read 0 in
  exported files and 0.0596 uS, the floor of the 24-bit resistance, over BLE; Kleckner et al.
  2018's 0.05 uS misses the BLE floor) or skin temperature outside 25-40 degC, for a run of at
  least 1 s so that a single glitch does not flag a window. Kleckner's temperature rule says 30-40 degC, but
  worn E4s read below 30 degC on cold wrists (WESAD's 1st percentile is 27.6 degC; a band put
  back on takes minutes to warm up), so the lower bound is Boettcher et al.'s 25 degC
  (physiology.md section 5); EDA catches the removal itself at once. The upper bound also
  catches the E4's ~382 degC start-up sentinel.
- motion: standard deviation of ``|a|`` above 0.2 g within a 1 s block. Seated rest gives
  about 0.03 g and gesturing while talking about 0.08 g over a window (physiology.md, WESAD),
  with single seconds near 0.1 g; walking and gross arm movement exceed 0.2 g within a second.
  (On simulated sessions 0.1 g flagged a third of the quiet windows; 0.2 g none.) 1 s blocks
  aligned to the window start catch a burst that overlaps the window by one whole block.
- flat line: the same value for 1 s of BVP (a pulse never holds still), 10 s of EDA
  (0.0013 uS quantisation makes short plateaus normal at rest), 5 s of ACC on all axes.
  Skin temperature moves in 0.01 degC steps a few times a minute, so a flat TEMP is normal
  and is not flagged.
- saturation: ACC at the +-2 g rails (int8 counts -128 / 127), EDA at the 100 uS top of range.
- EDA artefact: a step faster than 10 uS/s between consecutive samples (Kleckner).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from e4 import OFF_WRIST_EDA_US
from preprocess.window import MODALITIES, RATES_HZ, Quality


@dataclass(frozen=True, slots=True, kw_only=True)
class QualityRules:
    eda_min_us: float = OFF_WRIST_EDA_US
    eda_saturated_us: float = 100.0
    eda_max_slope_us_per_s: float = 10.0
    temp_range_c: tuple[float, float] = (25.0, 40.0)
    off_wrist_min_s: float = 1.0
    motion_sd_g: float = 0.2
    motion_block_s: float = 1.0
    acc_rail_g: float = 127.0 / 64.0
    flat_s: tuple[tuple[str, float], ...] = (("bvp", 1.0), ("eda", 10.0), ("acc", 5.0))
    usable_max_missing: float = 0.5


def _longest_run(x: np.ndarray) -> int:
    """Length of the longest run of True."""
    if not x.any():
        return 0
    padded = np.concatenate(([False], x, [False]))
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return int((edges[1::2] - edges[::2]).max())


def _longest_constant_run(values: np.ndarray, ok: np.ndarray) -> int:
    """Longest run of consecutive measured samples with identical values (all axes)."""
    same = ok[1:] & ok[:-1]
    if values.ndim == 1:
        same &= values[1:] == values[:-1]
    else:
        same &= (values[1:] == values[:-1]).all(axis=1)
    run = _longest_run(same)
    return run + 1 if run else int(ok.any())


def assess(
    raw: Mapping[str, np.ndarray],
    ok: Mapping[str, np.ndarray],
    *,
    invalid: int,
    late: int,
    duplicates: int,
    timing_mismatch: bool,
    rules: QualityRules,
) -> Quality:
    """Quality of one window from its raw samples (``raw[m]``, the window's length, values
    where ``ok[m]`` is true; ACC in g) and the counts of bad input the windower saw."""
    missing = {m: float((~ok[m]).mean()) for m in MODALITIES}
    missing_fraction = float(np.mean(list(missing.values())))

    eda, eda_ok = raw["eda"], ok["eda"]
    temp, temp_ok = raw["temp"], ok["temp"]
    lo, hi = rules.temp_range_c
    eda_bad = eda_ok & (eda < rules.eda_min_us)
    temp_bad = temp_ok & ((temp < lo) | (temp > hi))
    off = eda_bad | temp_bad  # EDA and TEMP share the 4 Hz grid
    off_run = max(1, round(rules.off_wrist_min_s * RATES_HZ["eda"]))
    off_wrist = _longest_run(off) >= off_run
    off_wrist_fraction = float(off.mean())

    acc, acc_ok = raw["acc"], ok["acc"]
    block = max(2, round(rules.motion_block_s * RATES_HZ["acc"]))
    nblocks = len(acc) // block
    mag = np.sqrt((acc[: nblocks * block] ** 2).sum(axis=1)).reshape(nblocks, block)
    bok = acc_ok[: nblocks * block].reshape(nblocks, block)
    counts = bok.sum(axis=1)
    measured = counts >= block // 2
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(bok, mag, 0.0).sum(axis=1) / counts
        var = np.where(bok, (mag - mean[:, None]) ** 2, 0.0).sum(axis=1) / counts
    moving = measured & (np.sqrt(np.where(measured, var, 0.0)) > rules.motion_sd_g)
    motion_fraction = float(moving.mean()) if nblocks else 0.0

    flat = tuple(
        m for m, seconds in rules.flat_s if _longest_constant_run(raw[m], ok[m]) >= max(2, round(seconds * RATES_HZ[m]))
    )
    saturated = []
    if (acc_ok[:, None] & (np.abs(acc) >= rules.acc_rail_g)).any():
        saturated.append("acc")
    if (eda_ok & (eda >= rules.eda_saturated_us)).any():
        saturated.append("eda")

    both = eda_ok[1:] & eda_ok[:-1]
    slope = np.abs(np.diff(eda)) * RATES_HZ["eda"]
    eda_artifact = bool((both & (slope > rules.eda_max_slope_us_per_s)).any())

    return Quality(
        off_wrist=bool(off_wrist),
        motion=bool(moving.any()),
        missing_fraction=missing_fraction,
        missing=missing,
        off_wrist_fraction=off_wrist_fraction,
        motion_fraction=motion_fraction,
        flat=flat,
        saturated=tuple(saturated),
        eda_artifact=eda_artifact,
        invalid_samples=int(invalid),
        late_samples=int(late),
        duplicate_samples=int(duplicates),
        timing_mismatch=bool(timing_mismatch),
        usable=bool(not off_wrist and missing_fraction <= rules.usable_max_missing),
    )
