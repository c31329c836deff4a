"""Raw physiology downsampled to about 1 Hz for dashboards (pure, push()/flush()).

Out of the raw streams come one value per device, signal and second:

- ``eda_us`` (µS) and ``temp_c`` (°C): the mean of the samples in the second;
- ``hr_device_bpm``: the mean of the device's own HR stream, where it sends one;
- ``hr_bpm``: heart rate from BVP, by the one causal beat detector (:class:`BeatRate`).

Bins are whole seconds of the sample clock (``floor(t / bin_s)``), so how the samples
were chunked into messages does not change the output, and each value is stamped with
the *end* of its bin: it summarises the second up to its timestamp, as an affect record
summarises the window up to its own. A bin is emitted when the first sample of a later
bin arrives (or on ``flush``), so nothing here waits on a clock.
"""

from __future__ import annotations

import numpy as np

from bus import Message
from e4.beats import BeatDetector

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
    """Heart rate from BVP, one value per bin: :class:`e4.beats.BeatDetector` (the one beat
    detector; see there how beats and rates are found) with its rate reported at each bin end.

    ``push(t0_s, samples)`` and ``flush()`` return ``(bin end in s, bpm)`` for each bin that
    closed with a rate; a gap of more than ``max_gap_s`` in the samples restarts the detector.

    Contiguous chunks are gathered until ``batch_s`` of samples before the detector sees them:
    it does not depend on how the samples are chunked, and an E4 packet holds 11 BVP samples, so
    per packet its filters' fixed cost per call was the largest item of the store's profile
    (bench/bench_physio.py). A rate is reported at most ``batch_s`` later; ``batch_s=0`` passes
    every chunk through at once."""

    def __init__(
        self,
        fs_hz: float,
        *,
        bin_s: float = 1.0,
        window_s: float = 10.0,
        max_gap_s: float = 0.5,
        batch_s: float = 1.0,
    ) -> None:
        self.fs_hz = fs_hz
        self.batch_s = batch_s
        self._det = BeatDetector(fs_hz=fs_hz, hr_every_s=bin_s, hr_window_s=window_s, max_gap_s=max_gap_s)
        self._held: list[np.ndarray] = []
        self._held_t0 = 0.0
        self._held_n = 0

    def push(self, t0_s: float, samples: np.ndarray) -> list[tuple[float, float]]:
        out = []
        if self._held_n and abs(t0_s - (self._held_t0 + self._held_n / self.fs_hz)) > 0.5 / self.fs_hz:
            out = self._drain()  # not contiguous: the detector sees the hole (or overlap) as it came
        if not self._held_n:
            self._held_t0 = t0_s
        chunk = np.asarray(samples).reshape(-1)
        self._held.append(chunk)
        self._held_n += chunk.size
        if self._held_n >= self.batch_s * self.fs_hz:
            out += self._drain()
        return out

    def _drain(self) -> list[tuple[float, float]]:
        if not self._held_n:
            return []
        x = self._held[0] if len(self._held) == 1 else np.concatenate(self._held)
        self._held, self._held_n = [], 0
        return [(h.t_s, h.bpm) for h in self._det.push(self._held_t0, x).hr]

    def flush(self) -> list[tuple[float, float]]:
        """The open bin's rate (counting every beat found so far); then start afresh."""
        out = self._drain()
        return out + [(h.t_s, h.bpm) for h in self._det.flush().hr]


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
            rates = []
            if beat is None or beat.fs_hz != msg.fs_hz:
                if beat is not None:  # another rate: what the old detector holds is finished first
                    rates = beat.flush()
                beat = self._beat[msg.device] = BeatRate(msg.fs_hz, bin_s=self.bin_s, window_s=self.hr_window_s)
            rates += beat.push(msg.t0_s, msg.samples)
            return [("hr_bpm", t, v) for t, v in rates]
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
