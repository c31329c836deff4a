"""Causal streaming filters for BVP, EDA and TEMP (paper section 5.3).

The paper cleans the wrist signals with "a combination of a low pass filter and a finite
impulse response filter". Each modality here gets both, in that order:

1. a Butterworth low-pass (IIR, second-order sections): it sets the band edge with a steep
   roll-off at a few samples of group delay;
2. a short Hamming-window FIR low-pass: linear phase, so it deepens the stop band without
   adding phase distortion, and its delay is an exact whole number of samples, which the
   windower takes back out so that filtered samples keep their true timestamps.

Cut-offs, chosen for the E4's rates (BVP 64 Hz, EDA and TEMP 4 Hz, Nyquist 32 and 2 Hz):

- **BVP**: low-pass 8 Hz (order 4), FIR 33 taps at 12 Hz (delay 16 samples = 0.25 s). The
  pulse fundamental lies at 0.7-3.5 Hz (40-210 bpm) and the systolic upstroke of about
  125 ms needs harmonics up to ~8 Hz; above that is LED/ambient noise and quantisation.
  Together the two give > 70 dB rejection from 16 Hz up. E4 BVP is already zero-mean
  (high-passed on the device), so no high-pass is added.
- **EDA**: low-pass 1 Hz (order 2), FIR 9 taps at 0.5 Hz (delay 4 samples = 1 s). Skin
  conductance lives below ~0.5 Hz (SCR rises take 0.5-5 s); what reaches 1-2 Hz is electrode
  noise, single-sample motion spikes and 0.0013 uS quantisation steps. (WESAD's 5 Hz
  low-pass is above the 2 Hz Nyquist frequency of 4 Hz data, so it cannot be copied.)
- **TEMP**: low-pass 0.5 Hz (order 2), FIR 9 taps at 0.5 Hz (delay 1 s). Skin temperature
  changes over tens of seconds; faster wiggles are thermopile noise and 0.01 degC steps.

ACC is not filtered: motion detection wants the raw accelerations.

Everything is causal: a streaming filter never looks ahead, and its output over any chunking
equals ``sosfilt`` then ``lfilter`` run once over the whole signal from the same start state
(to the last bit or so: scipy may round differently per call; the windower calls the filters
on grid spans that do not depend on chunking, so windows are bit-identical).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import signal

from e4 import RATES_HZ


@dataclass(frozen=True, slots=True, kw_only=True)
class FilterSpec:
    """A low-pass IIR followed by a linear-phase FIR for one modality."""

    fs_hz: float
    lowpass_hz: float
    lowpass_order: int
    fir_taps: int
    fir_cutoff_hz: float

    @property
    def delay_samples(self) -> int:
        """The FIR's exact group delay; the IIR's few-sample delay is left in place."""
        return (self.fir_taps - 1) // 2

    def design(self) -> tuple[np.ndarray, np.ndarray]:
        """``(sos, fir)`` coefficients."""
        sos = signal.butter(self.lowpass_order, self.lowpass_hz, btype="low", fs=self.fs_hz, output="sos")
        fir = signal.firwin(self.fir_taps, self.fir_cutoff_hz, window="hamming", fs=self.fs_hz)
        return sos, fir


_FIR_DENOMINATOR = np.ones(1)  # a = [1]: the FIR stage has no feedback


@functools.cache
def _designed(spec: FilterSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Coefficients and unit start states, designed once per spec and shared by every filter
    (which never writes to them): a thousand devices must not each pay for ``butter`` and
    ``lfilter_zi``. (Not flagged read-only: scipy's ``sosfilt`` rejects read-only buffers.)"""
    sos, fir = spec.design()
    return sos, fir, signal.sosfilt_zi(sos), signal.lfilter_zi(fir, _FIR_DENOMINATOR)


#: The filters of paper section 5.3 at the E4's rates (see the module docstring for why).
FILTERS: dict[str, FilterSpec] = {
    "bvp": FilterSpec(fs_hz=RATES_HZ["bvp"], lowpass_hz=8.0, lowpass_order=4, fir_taps=33, fir_cutoff_hz=12.0),
    "eda": FilterSpec(fs_hz=RATES_HZ["eda"], lowpass_hz=1.0, lowpass_order=2, fir_taps=9, fir_cutoff_hz=0.5),
    "temp": FilterSpec(fs_hz=RATES_HZ["temp"], lowpass_hz=0.5, lowpass_order=2, fir_taps=9, fir_cutoff_hz=0.5),
}


class StreamingFilter:
    """``push(x) -> y`` with the filter state carried between chunks.

    The state starts at rest *at the first sample's level* (the steady state for a constant
    input equal to it), which avoids a start-up transient from zero without looking ahead.
    :meth:`reset` restarts it the same way after a break in the signal.
    """

    def __init__(self, spec: FilterSpec) -> None:
        self.spec = spec
        self._sos, self._fir, self._sos_zi_unit, self._fir_zi_unit = _designed(spec)
        self._sos_zi: np.ndarray | None = None
        self._fir_zi: np.ndarray | None = None

    def reset(self) -> None:
        """Forget the past: the next sample restarts the filter at its own level."""
        self._sos_zi = self._fir_zi = None

    def push(self, x: np.ndarray) -> np.ndarray:
        """Filter the next samples (1-D float64); returns as many outputs as inputs."""
        x = np.asarray(x, dtype=np.float64)
        if x.size == 0:
            return x.copy()
        if self._sos_zi is None or self._fir_zi is None:  # both, after a reset
            self._sos_zi = self._sos_zi_unit * x[0]
            self._fir_zi = self._fir_zi_unit * x[0]
        y, self._sos_zi = signal.sosfilt(self._sos, x, zi=self._sos_zi)
        y, self._fir_zi = signal.lfilter(self._fir, _FIR_DENOMINATOR, y, zi=self._fir_zi)
        return y

    def offline(self, x: np.ndarray) -> np.ndarray:
        """The same causal filter over a whole signal in one call, from the same start state
        (the oracle the streaming path is tested against); does not touch this filter's state."""
        x = np.asarray(x, dtype=np.float64)
        if x.size == 0:
            return x.copy()
        y, _ = signal.sosfilt(self._sos, x, zi=self._sos_zi_unit * x[0])
        y, _ = signal.lfilter(self._fir, _FIR_DENOMINATOR, y, zi=self._fir_zi_unit * x[0])
        return y
