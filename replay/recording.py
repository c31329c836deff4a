"""A recorded E4 session in memory: what readers return and what replay streams.

Periodic signals keep their own start time and rate, exactly as the export files do
(sample k is at ``t0_s + k / fs_hz``); nothing is resampled or re-timed here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from e4 import RATES_HZ

#: Periodic E4 streams, their nominal rates (Hz) and the dtype used in memory and on the bus.
#: ACC counts are 1/64 g integers; the other streams keep the export's float values.
PERIODIC = {
    "acc": (RATES_HZ["acc"], np.int16),
    "bvp": (RATES_HZ["bvp"], np.float64),
    "eda": (RATES_HZ["eda"], np.float64),
    "temp": (RATES_HZ["temp"], np.float64),
    "hr": (RATES_HZ["hr"], np.float64),
}

TASKS = ("stress", "anxiety", "emotion")


@dataclass(frozen=True, slots=True, kw_only=True)
class Signal:
    """One periodic stream. ``values`` is (n,) or, for ACC, (n, 3)."""

    modality: str
    t0_s: float
    fs_hz: float
    values: np.ndarray

    @property
    def n(self) -> int:
        return int(self.values.shape[0])

    @property
    def t_end_s(self) -> float:
        """Time just after the last sample."""
        return self.t0_s + self.n / self.fs_hz


@dataclass(frozen=True, slots=True, kw_only=True)
class LabelInterval:
    """Ground truth: ``label`` of ``task`` holds on [start_s, end_s) (Unix seconds)."""

    start_s: float
    end_s: float
    task: str
    label: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Recording:
    """One device's session. ``ibi_t_s`` are absolute beat times, ``ibi_s`` the interval
    ending at each beat (rows may leave gaps: rejected beats are absent)."""

    device: str
    source: str
    signals: Mapping[str, Signal]
    ibi_t_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ibi_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    tags_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    labels: tuple[LabelInterval, ...] = ()

    @property
    def start_s(self) -> float:
        return min(s.t0_s for s in self.signals.values())

    @property
    def end_s(self) -> float:
        return max(s.t_end_s for s in self.signals.values())

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s
