"""Streaming filters: any chunking equals the causal filter over the whole signal.

(The windows themselves are bit-identical across chunkings: the windower runs the filters
over the same grid spans whatever the message boundaries, see test_preprocess_windows.)
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import signal

from preprocess import FILTERS, StreamingFilter


def _signal(modality: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    fs = FILTERS[modality].fs_hz
    t = np.arange(n) / fs
    return 20 * np.sin(2 * np.pi * 1.1 * t) + rng.normal(0, 5, n) + 3.0


@pytest.mark.parametrize("modality", sorted(FILTERS))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_any_chunking_equals_the_whole_signal(modality: str, data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 600), label="n")
    x = _signal(modality, n, data.draw(st.integers(0, 2**16), label="seed"))
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, n - 1)), max_size=30), label="cuts")))
    f = StreamingFilter(FILTERS[modality])
    streamed = np.concatenate([f.push(x[a:b]) for a, b in zip([0, *cuts], [*cuts, n])])
    # equal up to rounding: scipy's inner loops may round the last bit differently per call
    np.testing.assert_allclose(streamed, f.offline(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("modality", sorted(FILTERS))
def test_one_sample_at_a_time_and_scipy_oracle(modality: str) -> None:
    x = _signal(modality, 500, 1)
    f = StreamingFilter(FILTERS[modality])
    one = np.concatenate([f.push(x[i : i + 1]) for i in range(len(x))])
    # independent oracle: the same coefficients through scipy in one call
    sos, fir = FILTERS[modality].design()
    y = signal.sosfilt(sos, x, zi=signal.sosfilt_zi(sos) * x[0])[0]
    y = signal.lfilter(fir, [1.0], y, zi=signal.lfilter_zi(fir, [1.0]) * x[0])[0]  # a = [1]: no feedback
    np.testing.assert_allclose(one, y, rtol=0, atol=1e-9)


@pytest.mark.parametrize("modality", sorted(FILTERS))
def test_starts_at_rest_on_the_first_level_and_reset_restarts(modality: str) -> None:
    f = StreamingFilter(FILTERS[modality])
    np.testing.assert_allclose(f.push(np.full(50, 7.5)), 7.5, atol=1e-9)  # no start-up transient
    f.reset()
    np.testing.assert_allclose(f.push(np.full(50, -2.0)), -2.0, atol=1e-9)


def test_pass_and_stop_bands_suit_the_e4_rates() -> None:
    def gain(modality: str, freq_hz: float) -> float:
        spec = FILTERS[modality]
        n = int(60 * spec.fs_hz)
        t = np.arange(n) / spec.fs_hz
        y = StreamingFilter(spec).push(np.sin(2 * np.pi * freq_hz * t))
        tail = y[n // 2 :]
        return float(np.sqrt(2 * np.mean(tail**2)))

    assert gain("bvp", 1.2) == pytest.approx(1.0, abs=0.01)  # 72 bpm pulse untouched
    assert gain("bvp", 3.0) == pytest.approx(1.0, abs=0.01)  # 180 bpm too
    assert gain("bvp", 20.0) < 1e-3  # noise far above the cardiac band gone
    assert gain("eda", 0.05) == pytest.approx(1.0, abs=0.01)  # slow SCR-scale changes kept
    assert gain("eda", 1.5) < 1e-2
    assert gain("temp", 0.02) == pytest.approx(1.0, abs=0.01)
    assert gain("temp", 1.0) < 0.05
