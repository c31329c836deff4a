"""Samples stamped one by one (K-EmoCon's millisecond rows, VerBIO's ``Time (s)`` column) put onto
the E4's own sample grid, so they become the same :class:`~replay.recording.Signal` an E4 Connect
export gives.

Why a grid: everything downstream (replay chunks, windows) takes a start time and a rate. A sample
goes to the slot nearest its stamp at the E4's nominal rate; a second sample for a slot already
taken (the duplicated stamps some exports hold) is dropped, and a slot nobody filled (the stream
dropped out) is NaN, which the windower counts as missing rather than inventing a value.
"""

from __future__ import annotations

import numpy as np

from common.errors import DataError
from replay.e4csv import MAX_START_S, MIN_START_S
from replay.recording import PERIODIC, Signal

#: The longest stretch (s) one stream may span: an E4 holds about 60 h, so a longer span means a
#: bad stamp, and filling it would take memory for nothing.
MAX_SPAN_S = 60 * 3600.0


def check_times(times_s: np.ndarray, path: str, first_line: int, lines: np.ndarray | None = None) -> None:
    """Stamps must be finite Unix seconds within 2000–2100 (the E4 reader's own bounds)."""
    bad = np.flatnonzero(~np.isfinite(times_s) | (times_s < MIN_START_S) | (times_s >= MAX_START_S))
    if bad.size:
        i = int(bad[0])
        line = int(lines[i]) if lines is not None else first_line + i
        raise DataError(path, f"time stamp {float(times_s[i])!r} s is not a Unix time between 2000 and 2100", line)


def grid_signal(modality: str, times_s: np.ndarray, values: np.ndarray, path: str, lines: np.ndarray) -> Signal:
    """A periodic signal at the E4's nominal rate from per-sample stamps (``lines`` are the
    1-based file lines of the rows, for errors). ACC stays integer counts unless it has gaps."""
    fs, dtype = PERIODIC[modality]
    if times_s.size == 0:
        raise DataError(path, "no samples")
    order = np.argsort(times_s, kind="stable")
    times_s, values, lines = times_s[order], values[order], lines[order]
    slots = np.round((times_s - times_s[0]) * fs).astype(np.int64)
    if slots[-1] / fs > MAX_SPAN_S:
        far = int(np.flatnonzero(slots / fs > MAX_SPAN_S)[0])
        raise DataError(
            path, f"samples span more than {MAX_SPAN_S / 3600:g} h (a stamp far from the others?)", int(lines[far])
        )
    keep = np.unique(slots, return_index=True)[1]  # first sample of each slot
    width = values.shape[1:] if values.ndim > 1 else ()
    gaps = int(slots[-1]) + 1 > keep.size
    if dtype is np.int16:
        ints = values[keep]
        if np.any(ints != np.round(ints)) or np.abs(ints).max() > 32767:
            row = int(
                np.flatnonzero(
                    np.any((ints != np.round(ints)) | (np.abs(ints) > 32767), axis=tuple(range(1, ints.ndim)))
                )[0]
            )
            raise DataError(path, "ACC values must be integer counts (1/64 g)", int(lines[keep[row]]))
    out = np.full((int(slots[-1]) + 1, *width), np.nan)
    out[slots[keep]] = values[keep]
    if dtype is np.int16 and not gaps:
        out = out.astype(np.int16)
    return Signal(modality=modality, t0_s=float(times_s[0]), fs_hz=fs, values=out)
