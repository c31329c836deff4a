"""Wrist features against signals whose answer is known by construction."""

from __future__ import annotations

import numpy as np
import pytest

from inference.features import FEATURES, window_features

F = {name: i for i, name in enumerate(FEATURES)}


def pulse(bpm: float, seconds: float = 20.0, fs: float = 64.0, amp=None) -> np.ndarray:
    """A PPG-like wave: a systolic peak and a smaller dicrotic wave per beat."""
    t = np.arange(int(seconds * fs)) / fs
    phase = (t * bpm / 60.0) % 1.0
    wave = np.exp(-((phase - 0.25) ** 2) / 0.01) + 0.35 * np.exp(-((phase - 0.6) ** 2) / 0.01)
    return wave * (1.0 if amp is None else amp(t))


def window(bvp, eda=None, temp=None, acc=None):
    return {
        "bvp": bvp[None],
        "eda": (np.full(80, 2.0) if eda is None else eda)[None],
        "temp": (np.full(80, 33.0) if temp is None else temp)[None],
        "acc": (np.tile([0.0, 0.0, 1.0], (640, 1)) if acc is None else acc)[None],
    }


@pytest.mark.parametrize("bpm", [45.0, 55.0, 72.0, 110.0, 150.0, 175.0])
def test_heart_rate_and_steady_rhythm(bpm):
    f = window_features(window(pulse(bpm)))[0]
    assert f[F["hr_bpm"]] == pytest.approx(bpm, rel=0.03)
    assert f[F["ibi_rmssd_s"]] < 0.02 and f[F["hr_range_bpm"]] < 0.1 * bpm


def test_no_pulse_gives_nan_not_a_rate():
    f = window_features(window(np.zeros(1280)))[0]
    assert np.isnan(f[F["hr_bpm"]]) and np.isnan(f[F["ibi_sd_s"]])


def test_shrinking_pulse_lowers_the_amplitude_ratio():
    steady = window_features(window(pulse(70)))[0][F["beat_amp_ratio"]]
    shrink = window_features(window(pulse(70, amp=lambda t: np.where((t > 8) & (t < 14), 0.4, 1.0))))[0]
    assert steady > 0.9 and shrink[F["beat_amp_ratio"]] < 0.6


def test_eda_level_slope_and_responses():
    t = np.arange(80) / 4.0
    scr = sum(0.2 * np.exp(-np.clip(t - t0, 0, None) / 2.0) * (t >= t0) for t0 in (4.0, 12.0))
    eda = 1.0 + 0.01 * t + scr
    f = window_features(window(pulse(70), eda=eda))[0]
    assert f[F["scr_count"]] == 2
    assert 0.1 < f[F["scr_amp_us"]] <= 0.2  # the second response rides on the first one's tail
    assert f[F["eda_max_rise_us_s"]] == pytest.approx(0.2, abs=0.05)
    flat = window_features(window(pulse(70), eda=1.0 + 0.01 * t))[0]
    assert flat[F["eda_slope_us_s"]] == pytest.approx(0.01, rel=1e-3) and flat[F["scr_count"]] == 0


def test_temperature_slope_and_a_jolt_of_the_arm():
    t = np.arange(80) / 4.0
    acc = np.tile([0.0, 0.0, 1.0], (640, 1))
    acc[320:336] += np.array([0.8, 0.0, 0.0])  # half a second of movement
    f = window_features(window(pulse(70), temp=33.0 - 0.005 * t, acc=acc))[0]
    assert f[F["temp_slope_c_s"]] == pytest.approx(-0.005, rel=1e-3)
    still = window_features(window(pulse(70)))[0]
    assert still[F["acc_jolt_g"]] == 0 and f[F["acc_jolt_g"]] > 0.1  # half of one second at 1.28 g
    assert f[F["acc_mag_g"]] > still[F["acc_mag_g"]] == pytest.approx(1.0)


def test_batch_equals_one_by_one():
    rng = np.random.default_rng(1)
    ws = [window(pulse(60 + 10 * i) + rng.normal(0, 0.01, 1280), eda=1 + rng.random(80)) for i in range(4)]
    batch = window_features({m: np.concatenate([w[m] for w in ws]) for m in ws[0]})
    single = np.concatenate([window_features(w) for w in ws])
    np.testing.assert_array_equal(batch, single)
