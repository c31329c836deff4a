"""Raw physiology downsampled to about 1 Hz for dashboards (pure, push()/flush()).

Out of the raw streams come one value per device, signal and second:

- ``eda_us`` (µS) and ``temp_c`` (°C): the mean of the samples in the second;
- ``hr_device_bpm``: the mean of the device's own HR stream, where it sends one;
- ``hr_bpm``: heart rate from BVP, by the causal beat detector :class:`BeatRate`.

Bins are whole seconds of the sample clock (``floor(t / bin_s)``), so how the samples
were chunked into messages does not change the output, and each value is stamped with
the *end* of its bin: it summarises the second up to its timestamp, as an affect record
summarises the window up to its own. A bin is emitted when the first sample of a later
bin arrives (or on ``flush``), so nothing here waits on a clock.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
from scipy.signal import butter, lfilter, sosfilt, sosfilt_zi

from bus import Message

#: raw modality -> stored signal, for the streams stored as a plain mean per bin.
MEAN_SIGNALS = {"eda": "eda_us", "temp": "temp_c", "hr": "hr_device_bpm"}
SIGNALS = (*MEAN_SIGNALS.values(), "hr_bpm")


class MeanBinner:
    """Mean of a regular stream per bin of ``bin_s`` seconds; non-finite samples are skipped."""

    def __init__(self, bin_s: float) -> None:
        self.bin_s = bin_s
        self._bin: int | None = None
        self._sum = 0.0
        self._n = 0

    def push(self, times_s: np.ndarray, values: np.ndarray) -> list[tuple[float, float]]:
        """(bin end in s, mean) for each bin that this chunk completed."""
        keep = np.isfinite(values)
        times_s, values = times_s[keep], values[keep].astype(np.float64)
        if times_s.size == 0:
            return []
        idx = np.floor(times_s / self.bin_s).astype(np.int64)
        starts = np.flatnonzero(np.r_[True, idx[1:] != idx[:-1]])
        sums = np.add.reduceat(values, starts)
        counts = np.diff(np.r_[starts, idx.size])
        out = []
        for b, s, c in zip(idx[starts].tolist(), sums.tolist(), counts.tolist()):
            if b == self._bin:
                self._sum += s
                self._n += c
                continue
            if self._bin is not None:
                out.append(self._emit())
            self._bin, self._sum, self._n = b, s, c
        return out

    def _emit(self) -> tuple[float, float]:
        assert self._bin is not None
        return (self._bin + 1) * self.bin_s, self._sum / self._n

    def flush(self) -> list[tuple[float, float]]:
        out = [self._emit()] if self._bin is not None else []
        self._bin, self._sum, self._n = None, 0.0, 0
        return out


class BeatRate:
    """Heart rate from BVP with a causal beat detector, one value per bin.

    Theory of operation: a 2nd-order Butterworth band-pass (0.7–3.5 Hz, 42–210 bpm) with
    state carried across chunks removes baseline wander and the dicrotic notch's higher
    harmonics; an exponential moving mean of the squared output (time constant 2 s)
    tracks the pulse amplitude. A beat is a local maximum of the filtered signal above
    0.7 × the running RMS (about half a sinusoid's amplitude) at least ``refractory_s``
    after the previous beat. At each bin end the rate is 60 / median of the inter-beat
    intervals (0.33–1.5 s only) of the beats in the last ``window_s`` seconds; with fewer
    than three such intervals (off-wrist, motion, start-up) the bin gets no value rather
    than a guess. A gap of more than ``max_gap_s`` in the samples restarts the filter.
    """

    def __init__(self, fs_hz: float, *, bin_s: float = 1.0, window_s: float = 10.0,
                 refractory_s: float = 0.35, max_gap_s: float = 0.5) -> None:
        self.fs_hz = fs_hz
        self.bin_s = bin_s
        self.window_s = window_s
        self.refractory_s = refractory_s
        self.max_gap_s = max_gap_s
        self._sos = butter(2, [0.7, 3.5], btype="bandpass", fs=fs_hz, output="sos")
        self._a = math.exp(-1.0 / (2.0 * fs_hz))
        self._zi: np.ndarray | None = None
        self._env_zi = np.zeros(1)
        self._tail_t: np.ndarray = np.zeros(0)   # last two filtered samples: their times,
        self._tail_y: np.ndarray = np.zeros(0)   # values
        self._tail_e: np.ndarray = np.zeros(0)   # and envelopes
        self._beats: deque[float] = deque()
        self._bin: int | None = None

    def _restart(self, first: float) -> None:
        self._zi = sosfilt_zi(self._sos) * first
        self._env_zi = np.zeros(1)
        self._tail_t = self._tail_y = self._tail_e = np.zeros(0)

    def _rate(self, before_s: float) -> float | None:
        beats = [b for b in self._beats if before_s - self.window_s <= b < before_s]
        ibis = np.diff(beats)
        ibis = ibis[(ibis >= 0.33) & (ibis <= 1.5)]
        return 60.0 / float(np.median(ibis)) if ibis.size >= 3 else None

    def push(self, t0_s: float, samples: np.ndarray) -> list[tuple[float, float]]:
        """(bin end in s, bpm) for each bin that this chunk completed and that has a rate."""
        x = np.asarray(samples, dtype=np.float64).reshape(-1)
        if x.size == 0:
            return []
        if not np.all(np.isfinite(x)):  # a hole: carry nothing across it
            x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        t = t0_s + np.arange(x.size) / self.fs_hz
        if self._zi is None or (self._tail_t.size and t[0] - self._tail_t[-1] > self.max_gap_s):
            self._restart(x[0])
        y, self._zi = sosfilt(self._sos, x, zi=self._zi)
        env, self._env_zi = lfilter([1 - self._a], [1, -self._a], y * y, zi=self._env_zi)
        et, ey, ee = np.r_[self._tail_t, t], np.r_[self._tail_y, y], np.r_[self._tail_e, env]
        mid = slice(1, -1)
        peak = (ey[mid] > ey[:-2]) & (ey[mid] >= ey[2:]) & (ey[mid] > 0.7 * np.sqrt(ee[mid]))
        beats = et[mid][peak]
        self._tail_t, self._tail_y, self._tail_e = et[-2:], ey[-2:], ee[-2:]
        # A beat at sample k is known once sample k+1 has arrived: bins close at the first
        # sample of a later bin and count the beats strictly before that sample.
        idx = np.floor(t / self.bin_s).astype(np.int64)
        out = []
        edges = np.flatnonzero(np.r_[self._bin is None or idx[0] != self._bin, idx[1:] != idx[:-1]])
        bi = 0
        for j in edges.tolist():
            while bi < beats.size and beats[bi] < t[j]:
                self._add_beat(float(beats[bi]))
                bi += 1
            if self._bin is not None and idx[j] != self._bin:
                bpm = self._rate(float(t[j]))
                if bpm is not None:
                    out.append(((self._bin + 1) * self.bin_s, bpm))
            self._bin = int(idx[j])
        for b in beats[bi:].tolist():
            self._add_beat(b)
        return out

    def _add_beat(self, t: float) -> None:
        if self._beats and t - self._beats[-1] < self.refractory_s:
            return
        self._beats.append(t)
        while self._beats and self._beats[0] < t - self.window_s - 2.0:
            self._beats.popleft()

    def flush(self) -> list[tuple[float, float]]:
        """The open bin's rate (counting every beat found so far); then start afresh."""
        out = []
        if self._bin is not None and self._tail_t.size:
            bpm = self._rate(float(self._tail_t[-1]) + 1e-9)
            if bpm is not None:
                out.append(((self._bin + 1) * self.bin_s, bpm))
        self._zi, self._bin = None, None
        self._beats.clear()
        self._tail_t = self._tail_y = self._tail_e = np.zeros(0)
        return out


class PhysioDownsampler:
    """Per device: :class:`MeanBinner` for EDA, TEMP, HR; :class:`BeatRate` for BVP.

    ``push(msg)`` and ``flush_device(device)`` return ``(signal, time_s, value)`` triples.
    """

    def __init__(self, *, bin_s: float = 1.0, hr_window_s: float = 10.0) -> None:
        self.bin_s = bin_s
        self.hr_window_s = hr_window_s
        self._mean: dict[tuple[str, str], MeanBinner] = {}
        self._beat: dict[str, BeatRate] = {}

    def devices(self) -> list[str]:
        return sorted({d for d, _ in self._mean} | set(self._beat))

    def push(self, msg: Message) -> list[tuple[str, float, float]]:
        if msg.fs_hz <= 0 or msg.samples.ndim != 1 or msg.samples.size == 0:
            return []
        if msg.modality == "bvp":
            beat = self._beat.get(msg.device)
            if beat is None or beat.fs_hz != msg.fs_hz:
                beat = self._beat[msg.device] = BeatRate(msg.fs_hz, bin_s=self.bin_s, window_s=self.hr_window_s)
            return [("hr_bpm", t, v) for t, v in beat.push(msg.t0_s, msg.samples)]
        signal = MEAN_SIGNALS.get(msg.modality)
        if signal is None:
            return []
        binner = self._mean.setdefault((msg.device, signal), MeanBinner(self.bin_s))
        return [(signal, t, v) for t, v in binner.push(msg.sample_times(), np.asarray(msg.samples))]

    def flush_device(self, device: str) -> list[tuple[str, float, float]]:
        out = []
        for (d, signal), binner in list(self._mean.items()):
            if d == device:
                out += [(signal, t, v) for t, v in binner.flush()]
                del self._mean[(d, signal)]
        beat = self._beat.pop(device, None)
        if beat is not None:
            out += [("hr_bpm", t, v) for t, v in beat.flush()]
        return out
