"""Heart beats from BVP, because no IBI or HR characteristic exists over BLE (e4-facts 1.5).

Empatica computed IBI on the receiver from BVP and discarded doubtful beats; this does the
same, causally, so it can run live: a band-pass (0.7-3.0 Hz, 42-180 bpm, as the RE viewer
used; on synthetic sessions it gave smaller errors than 0.7-3.5 Hz) with its state
carried between chunks, local maxima above an adaptive threshold with a refractory period,
sub-sample peak times by parabolic interpolation, and an interval accepted only when it is
physiological and close to the median of the recent accepted ones (a missed or extra beat
makes an interval that is rejected rather than published). Heart rate is the mean of the
last ``hr_window_s`` of accepted intervals, reported once a second (E4's HR.csv used 10 s).

Feeding the same signal whole or in any chunking gives the same beats (tested).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
from scipy import signal


@dataclass(frozen=True, slots=True, kw_only=True)
class Beat:
    """A beat at ``t_s`` ending an accepted interval of ``ibi_s`` seconds."""

    t_s: float
    ibi_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartRate:
    t_s: float
    bpm: float


@dataclass(frozen=True, slots=True, kw_only=True)
class BeatOutput:
    beats: tuple[Beat, ...] = ()
    hr: tuple[HeartRate, ...] = ()


class BeatDetector:
    """``push(t0_s, bvp)`` -> the beats and once-a-second heart rates the chunk completes.

    Call :meth:`reset` after a gap: an interval must never span lost samples.
    """

    def __init__(
        self,
        *,
        fs_hz: float,
        band_hz: tuple[float, float] = (0.7, 3.0),
        refractory_s: float = 0.33,
        ibi_range_s: tuple[float, float] = (0.3, 2.0),
        max_change: float = 0.2,
        warmup_s: float = 2.0,
        hr_window_s: float = 10.0,
    ) -> None:
        self.fs_hz = fs_hz
        self._sos = signal.butter(2, band_hz, btype="bandpass", fs=fs_hz, output="sos")
        self._refractory_s = refractory_s
        self._ibi_range_s = ibi_range_s
        self._max_change = max_change
        self._warmup_n = round(warmup_s * fs_hz)
        self._hr_window_s = hr_window_s
        self.reset()

    def reset(self) -> None:
        self._zi: np.ndarray | None = None
        self._n = 0  # samples seen since reset
        self._tail = np.zeros(0)  # the last two filtered samples (peak test needs a neighbour on each side)
        self._tail_t0 = 0.0
        self._amp = 0.0
        self._warm_max = 0.0
        self._last_peak_t: float | None = None
        self._recent: deque[float] = deque(maxlen=5)
        self._rejected_in_row = 0
        self._hr_beats: deque[Beat] = deque()
        self._next_hr_t: float | None = None

    def _filter(self, x: np.ndarray) -> np.ndarray:
        if self._zi is None:
            self._zi = signal.sosfilt_zi(self._sos) * x[0]
        y, self._zi = signal.sosfilt(self._sos, x, zi=self._zi)
        return y

    def _accept(self, t: float) -> Beat | None:
        last, self._last_peak_t = self._last_peak_t, t
        if last is None:
            return None
        ibi = t - last
        lo, hi = self._ibi_range_s
        ok = lo <= ibi <= hi
        if ok and self._recent:
            ref = float(np.median(self._recent))
            ok = abs(ibi - ref) <= self._max_change * ref
        if not ok:
            self._rejected_in_row += 1
            if self._rejected_in_row >= 4:  # the reference itself was wrong: start over
                self._recent.clear()
            return None
        self._rejected_in_row = 0
        self._recent.append(ibi)
        return Beat(t_s=t, ibi_s=ibi)

    def push(self, t0_s: float, bvp: np.ndarray) -> BeatOutput:
        x = np.asarray(bvp, dtype=np.float64)
        if x.size == 0:
            return BeatOutput()
        y = self._filter(x)
        dt = 1.0 / self.fs_hz
        start_t = t0_s - len(self._tail) * dt
        z = np.concatenate([self._tail, y])
        base_n = self._n - len(self._tail)  # sample index (since reset) of z[0]
        n_warm = min(len(y), max(0, self._warmup_n - self._n))
        if n_warm:
            self._warm_max = max(self._warm_max, float(np.max(np.abs(y[:n_warm]))))
        self._n += len(y)
        self._tail = z[-2:]
        beats: list[Beat] = []
        if len(z) >= 3:
            mid = z[1:-1]
            cand = np.flatnonzero((z[:-2] < mid) & (mid >= z[2:])) + 1
            for i in cand.tolist():
                k = base_n + i
                if k < self._warmup_n:
                    continue
                if self._amp == 0.0:  # the warm-up's peak level sets the first threshold
                    self._amp = self._warm_max
                if z[i] <= 0.3 * self._amp:
                    continue
                a, b, c = z[i - 1], z[i], z[i + 1]
                denom = a - 2 * b + c
                frac = 0.5 * (a - c) / denom if denom != 0 else 0.0
                t = start_t + (i + frac) * dt
                if self._last_peak_t is not None and t - self._last_peak_t < self._refractory_s:
                    continue
                self._amp = 0.8 * self._amp + 0.2 * float(b)
                beat = self._accept(t)
                if beat is not None:
                    beats.append(beat)
        # A beat up to half a sample before the last one may still be found in the next
        # chunk, so heart rates wait until two samples past their second.
        done_s = t0_s + (len(y) - 2) * dt
        return BeatOutput(beats=tuple(beats), hr=tuple(self._heart_rates(beats, t0_s, done_s)))

    def _heart_rates(self, beats: list[Beat], t0_s: float, done_s: float) -> list[HeartRate]:
        self._hr_beats.extend(beats)
        if self._next_hr_t is None:
            self._next_hr_t = math.floor(t0_s) + 1.0
        out = []
        while self._next_hr_t <= done_s:
            t = self._next_hr_t
            while self._hr_beats and self._hr_beats[0].t_s <= t - self._hr_window_s:
                self._hr_beats.popleft()
            window = [b.ibi_s for b in self._hr_beats if b.t_s <= t]
            if len(window) >= 2:
                out.append(HeartRate(t_s=t, bpm=60.0 / float(np.mean(window))))
            self._next_hr_t = t + 1.0
        return out
