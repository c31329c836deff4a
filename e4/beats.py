"""Heart beats and heart rate from E4 BVP: the one beat detector every stage uses.

No IBI or HR characteristic exists over BLE (e4-facts 1.5), the stored ``hr_bpm`` must come
from BVP, and the window features need beats too; one detector serves all three, so a rate on
a dashboard, a published IBI and a model feature never disagree about what a beat is.

It is causal and incremental, so it runs live and feeding a signal whole or in any chunking
gives the same output (tested):

- a 2nd-order Butterworth band-pass, 0.7-3.5 Hz (42-210 bpm), with its state carried between
  chunks, removes baseline wander and the dicrotic notch's higher harmonics;
- an exponential moving mean of the squared output (time constant 2 s) tracks the pulse
  amplitude; a beat is a local maximum above 0.7 x that running RMS (about half a sinusoid's
  amplitude), at least ``refractory_s`` after the previous beat, timed to a fraction of a
  sample by parabolic interpolation;
- heart rate at the end of each ``hr_every_s`` is 60 / mean of the intervals between
  consecutive beats of the last ``hr_window_s`` that are physiological (``ibi_range_s``) and
  within ``max_change`` of their median (a missed or an extra beat makes an interval that is
  left out), with at least three of them; with fewer (off-wrist, motion, start-up) there is
  no value rather than a guess;
- a beat is *published* with its interval (:class:`Beat`) only when that interval is
  physiological and within ``max_change`` of the median of the recent published ones, after a
  warm-up that lets the running RMS settle: an interval around a missed or extra beat is
  dropped rather than reported as heart-rate variability (Empatica's own IBI.csv drops
  doubtful beats too).

Why this one: on the ten real WESAD wrists, against the E4's own IBI.csv, it kept the low
error of the old 0.7-3.5 Hz storage detector and its near-full coverage, where the old
ingest detector (amplitude-tracking threshold, mean of accepted intervals) left a quarter of
the seconds without a rate and the per-window feature detector (zero-phase band-pass with an
autocorrelation spacing) erred by 7 bpm in the median; ``bench/beats_accuracy.py`` measures it.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections import deque
from dataclasses import dataclass

import numpy as np
from scipy import signal

#: The pulse band (Hz): 42-210 bpm.
BAND_HZ = (0.7, 3.5)
#: Intervals (s) a heart can make between two beats: 40-180 bpm.
IBI_RANGE_S = (0.33, 1.5)


@functools.cache
def _bandpass(band_hz: tuple[float, float], fs_hz: float) -> tuple[np.ndarray, np.ndarray]:
    """The band-pass and its unit start state, designed once per (band, rate): every window's
    features start a detector, and ``butter`` cost more than the detection itself."""
    sos = signal.butter(2, band_hz, btype="bandpass", fs=fs_hz, output="sos")
    return sos, signal.sosfilt_zi(sos)


@dataclass(frozen=True, slots=True, kw_only=True)
class Beat:
    """A beat at ``t_s`` ending an accepted interval of ``ibi_s`` seconds; ``amp`` is its
    height in the band-passed signal (BVP units)."""

    t_s: float
    ibi_s: float
    amp: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartRate:
    """Heart rate over the ``hr_window_s`` before ``t_s``."""

    t_s: float
    bpm: float


@dataclass(frozen=True, slots=True, kw_only=True)
class BeatOutput:
    beats: tuple[Beat, ...] = ()
    hr: tuple[HeartRate, ...] = ()


def rate_bpm(
    peak_times_s: np.ndarray,
    ibi_range_s: tuple[float, float] = IBI_RANGE_S,
    max_change: float = 0.2,
    min_intervals: int = 3,
) -> float | None:
    """60 / mean of the intervals between consecutive beats that are physiological and within
    ``max_change`` of their median (so a missed or an extra beat does not move it); None with
    fewer than ``min_intervals`` of them."""
    ibis = np.diff(np.asarray(peak_times_s, dtype=np.float64))
    ibis = ibis[(ibis >= ibi_range_s[0]) & (ibis <= ibi_range_s[1])]
    if ibis.size < min_intervals:
        return None
    ibis = ibis[np.abs(ibis - np.median(ibis)) <= max_change * np.median(ibis)]
    return 60.0 / float(np.mean(ibis)) if ibis.size >= min_intervals else None


class BeatDetector:
    """``push(t0_s, bvp)`` -> the beats and heart rates the chunk completes; ``flush()`` ->
    the rate of the open period (counting every beat found so far), then a fresh start.

    A hole in the samples (a chunk starting more than ``max_gap_s`` after the previous one
    ended) closes the open period and restarts the detector, as :meth:`reset` does: an
    interval never spans lost samples. Non-finite samples read as 0.
    """

    def __init__(
        self,
        *,
        fs_hz: float,
        band_hz: tuple[float, float] = BAND_HZ,
        refractory_s: float = 0.33,
        ibi_range_s: tuple[float, float] = IBI_RANGE_S,
        max_change: float = 0.2,
        warmup_s: float = 2.0,
        hr_window_s: float = 10.0,
        hr_every_s: float = 1.0,
        max_gap_s: float = 0.5,
    ) -> None:
        self.fs_hz = fs_hz
        self.hr_every_s = hr_every_s
        self.hr_window_s = hr_window_s
        self._sos, self._sos_zi_unit = _bandpass(tuple(band_hz), fs_hz)
        self._env_a = math.exp(-1.0 / (2.0 * fs_hz))  # 2 s time constant
        self._refractory_s = refractory_s
        self._ibi_range_s = ibi_range_s
        self._max_change = max_change
        self._warmup_n = round(warmup_s * fs_hz)
        self._max_gap_s = max_gap_s
        self.reset()

    def reset(self) -> None:
        """Forget everything: the next sample starts a new stretch."""
        self._zi: np.ndarray | None = None
        self._env_zi = np.zeros(1)
        self._n = 0  # samples since the stretch began
        self._tail_y = np.zeros(0)  # the last two filtered samples (a peak needs a neighbour on each side)
        self._tail_e = np.zeros(0)  # and their running mean squares
        self._end_t: float | None = None  # time of the next expected sample
        self._last_peak_t: float | None = None
        self._peaks: deque[float] = deque()
        self._last_beat_t: float | None = None  # last peak after warm-up, for intervals
        self._recent: deque[float] = deque(maxlen=5)
        self._rejected_in_row = 0
        self._next_hr_t: float | None = None

    # -- published intervals ---------------------------------------------------------------

    def _accept(self, t: float, amp: float) -> Beat | None:
        last, self._last_beat_t = self._last_beat_t, t
        if last is None:
            return None
        ibi = t - last
        lo, hi = self._ibi_range_s
        ok = lo <= ibi <= hi
        if ok and self._recent:
            ref = float(statistics.median(self._recent))  # of <= 5: numpy's call costs 20x more
            ok = abs(ibi - ref) <= self._max_change * ref
        if not ok:
            self._rejected_in_row += 1
            if self._rejected_in_row >= 4:  # the reference itself was wrong: start over
                self._recent.clear()
            return None
        self._rejected_in_row = 0
        self._recent.append(ibi)
        return Beat(t_s=t, ibi_s=ibi, amp=amp)

    def peak_times(self) -> np.ndarray:
        """Every beat of the last ``hr_window_s`` (and up to 2 s more), published or not."""
        return np.array(self._peaks, dtype=np.float64)

    # -- heart rate ------------------------------------------------------------------------

    def _rate_at(self, t: float) -> HeartRate | None:
        while self._peaks and self._peaks[0] < t - self.hr_window_s - 2.0:
            self._peaks.popleft()
        window = [p for p in self._peaks if t - self.hr_window_s <= p < t]
        bpm = rate_bpm(np.array(window), self._ibi_range_s, self._max_change)
        return None if bpm is None else HeartRate(t_s=t, bpm=bpm)

    def _rates_until(self, done_s: float) -> list[HeartRate]:
        out = []
        while self._next_hr_t is not None and self._next_hr_t <= done_s:
            hr = self._rate_at(self._next_hr_t)
            if hr is not None:
                out.append(hr)
            self._next_hr_t += self.hr_every_s
        return out

    def flush(self) -> BeatOutput:
        """The open period's rate, then :meth:`reset`."""
        hr = self._rates_until(self._next_hr_t) if self._next_hr_t is not None and self._n else []
        self.reset()
        return BeatOutput(hr=tuple(hr))

    # -- samples ---------------------------------------------------------------------------

    def push(self, t0_s: float, bvp: np.ndarray) -> BeatOutput:
        x = np.asarray(bvp, dtype=np.float64).reshape(-1)
        if x.size == 0:
            return BeatOutput()
        closed: tuple[HeartRate, ...] = ()
        if self._end_t is not None and t0_s - self._end_t > self._max_gap_s:
            closed = self.flush().hr
        if not np.all(np.isfinite(x)):
            x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        dt = 1.0 / self.fs_hz
        if self._zi is None:
            self._zi = self._sos_zi_unit * x[0]
            self._next_hr_t = (math.floor(t0_s / self.hr_every_s) + 1) * self.hr_every_s
        y, self._zi = signal.sosfilt(self._sos, x, zi=self._zi)
        env, self._env_zi = signal.lfilter([1 - self._env_a], [1, -self._env_a], y * y, zi=self._env_zi)
        z, e = np.concatenate((self._tail_y, y)), np.concatenate((self._tail_e, env))  # np.r_ costs 10x more
        start_t = t0_s - len(self._tail_y) * dt
        base_n = self._n - len(self._tail_y)  # sample index (since the stretch began) of z[0]
        self._n += x.size
        self._tail_y, self._tail_e = z[-2:], e[-2:]
        self._end_t = t0_s + x.size * dt
        beats: list[Beat] = []
        if z.size >= 3:
            mid = z[1:-1]
            cand = np.flatnonzero((z[:-2] < mid) & (mid >= z[2:]) & (mid > 0.7 * np.sqrt(e[1:-1]))) + 1
            for i in cand.tolist():
                a, b, c = z[i - 1], z[i], z[i + 1]
                denom = a - 2 * b + c
                frac = 0.5 * (a - c) / denom if denom != 0 else 0.0
                t = start_t + (i + frac) * dt
                if self._last_peak_t is not None and t - self._last_peak_t < self._refractory_s:
                    continue
                self._last_peak_t = t
                self._peaks.append(t)
                if base_n + i >= self._warmup_n:
                    beat = self._accept(t, float(b))
                    if beat is not None:
                        beats.append(beat)
        # A peak at the last sample is confirmed by the next one and may lie half a sample
        # later, so rates wait until a sample past their end.
        done_s = t0_s + (x.size - 2) * dt
        return BeatOutput(beats=tuple(beats), hr=closed + tuple(self._rates_until(done_s)))


def window_beats(bvp: np.ndarray, fs_hz: float) -> tuple[np.ndarray, list[Beat]]:
    """All beat times (s from the window start) and the published beats of one complete window,
    by the same detector run over it from a cold start (nothing past the window is used)."""
    # keep every peak of the window; no per-second rates (nobody reads them here)
    det = BeatDetector(fs_hz=fs_hz, hr_window_s=math.inf, hr_every_s=math.inf)
    out = det.push(0.0, bvp)
    return det.peak_times(), list(out.beats)
