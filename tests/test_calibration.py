"""Per-wearer calibration: the calm-stretch search, marked rests, restarts, and one answer
whatever the window hop."""

from __future__ import annotations

import json
import stat

import numpy as np
import pytest

from inference.calibration import CalibrationConfig, CalibrationStore, Calibrator, references_over, relative_features
from inference.features import FEATURES

MOTION = FEATURES.index("acc_sd_g")
EDA = FEATURES.index("eda_mean_us")
T0 = 1_600_000_000.0  # a multiple of 10 s


def session(minutes: float, hop_s: float = 10.0, still=(20.0, 30.0), seed: int = 0):
    """Window starts and features: EDA drifts, movement is low only inside ``still`` (minutes)."""
    rng = np.random.default_rng(seed)
    t = T0 + np.arange(0, minutes * 60.0, hop_s)
    f = rng.normal(1.0, 0.05, (len(t), len(FEATURES))).astype(np.float32)
    m = (t - T0) / 60.0
    f[:, MOTION] = np.where((m >= still[0]) & (m < still[1]), 0.01, 0.3)
    f[:, EDA] = 2.0 + m / 10.0
    return t, f


def test_calm_search_waits_for_the_span_then_takes_the_stillest_stretch():
    cfg = CalibrationConfig(minutes=10, search_minutes=30)
    t, f = session(40)
    refs = references_over(t, np.ones(len(t), bool), f, [], cfg)
    first = next(i for i, r in enumerate(refs) if r is not None)
    assert t[first] == T0 + 30 * 60  # nothing before the search span is over
    ref = refs[first]
    assert ref is not None
    assert ref.kind == "calm" and ref.t_start_s == T0 + 20 * 60 and ref.t_end_s == T0 + 30 * 60
    # the reference is the mean of exactly the still windows
    still = (t >= ref.t_start_s) & (t + 20 <= ref.t_end_s)
    assert ref.n_windows == still.sum()
    assert ref.mean[EDA] == pytest.approx(float(f[still, EDA].mean()), rel=1e-6)
    assert all(r is ref for r in refs[first:])


def test_unusable_windows_never_enter_the_reference():
    cfg = CalibrationConfig(minutes=10, search_minutes=30)
    t, f = session(40)
    usable = ~((t >= T0 + 22 * 60) & (t < T0 + 23 * 60))  # a minute off the wrist inside the still stretch
    f[~usable, EDA] = 100.0  # what an unusable window would do to the mean
    ref = next(r for r in references_over(t, usable, f, [], cfg) if r)
    inside = (t >= ref.t_start_s) & (t + 20 <= ref.t_end_s)
    assert (inside & ~usable).any()
    assert ref.n_windows == int((inside & usable).sum())
    assert ref.mean[EDA] < 10


def test_same_reference_whatever_the_hop():
    """Live windows come every 5 s, training windows every 10 s: the grid makes them agree."""
    cfg = CalibrationConfig()
    t10, f10 = session(45, 10.0)
    t5, f5 = session(45, 5.0)
    f5[::2] = f10[: len(f5[::2])]  # the hop-5 windows on the 10 s grid are the hop-10 windows
    r10 = next(r for r in references_over(t10, np.ones(len(t10), bool), f10, [], cfg) if r)
    r5 = next(r for r in references_over(t5, np.ones(len(t5), bool), f5, [], cfg) if r)
    assert r5 == r10


def test_double_press_marks_a_rest_single_presses_do_not():
    cfg = CalibrationConfig(minutes=10, search_minutes=30)
    t, f = session(40)
    event = [T0 + 60.0]  # a single press: an event mark
    rest = [T0 + 120.0, T0 + 120.8, T0 + 420.0]  # double press, then a press 5 min later ends it
    assert references_over(t, np.ones(len(t), bool), f, event, cfg)[int(20 * 60 / 10)] is None
    refs = references_over(t, np.ones(len(t), bool), f, event + rest, cfg)
    ref = next(r for r in refs if r)
    assert ref.kind == "tag" and ref.t_start_s >= T0 + 120 and ref.t_end_s <= T0 + 420
    first = next(i for i, r in enumerate(refs) if r)
    assert t[first] < T0 + 440  # answered right after the rest, not after the search span
    assert all(r == ref for r in refs[first:])  # it replaced the search for good


def test_a_too_short_rest_is_not_used():
    cfg = CalibrationConfig(minutes=10, search_minutes=30)
    t, f = session(40)
    refs = references_over(t, np.ones(len(t), bool), f, [T0 + 120.0, T0 + 121.0, T0 + 180.0], cfg)
    assert next(r for r in refs if r).kind == "calm"


def test_state_survives_a_restart_mid_search(tmp_path):
    cfg = CalibrationConfig()
    t, f = session(45)
    whole = references_over(t, np.ones(len(t), bool), f, [], cfg)
    store = CalibrationStore(tmp_path / "cal")
    cal = Calibrator(cfg)
    half = len(t) // 3
    for i in range(half):
        cal.push(t_start_s=float(t[i]), usable=True, features=f[i])
    store.save("dev/1", cal)
    restored = store.load("dev/1", cfg)
    out = [restored.push(t_start_s=float(t[i]), usable=True, features=f[i]) for i in range(half, len(t))]
    assert out == whole[half:]
    assert stat.S_IMODE(store.path("dev/1").stat().st_mode) == 0o600
    assert store.devices() == ["dev_1"]
    with pytest.raises(ValueError):
        store.load("dev/1", CalibrationConfig(minutes=5))
    assert store.reset("dev/1") and not store.reset("dev/1")


def test_reference_json_round_trip_keeps_nan():
    cfg = CalibrationConfig()
    t, f = session(45)
    f[:, FEATURES.index("hr_bpm")] = np.nan  # no beats found anywhere
    cal = Calibrator(cfg)
    for i in range(len(t)):
        cal.push(t_start_s=float(t[i]), usable=True, features=f[i])
    again = Calibrator.from_json(json.loads(json.dumps(cal.to_json())))
    assert again.reference is not None and cal.reference is not None
    assert np.isnan(again.reference.mean[FEATURES.index("hr_bpm")])
    assert again.reference.id == cal.reference.id


def test_relative_features_use_the_floor():
    x = np.array([[3.0, 10.0]], np.float32)
    out = relative_features(x, np.array([[1.0, 10.0]]), np.array([[0.0, 2.0]]), np.array([0.5, 0.5]))
    assert out.tolist() == [[4.0, 0.0]]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        CalibrationConfig(minutes=20, search_minutes=10)


def test_a_wearer_rarely_usable_at_first_is_calibrated_once_a_quiet_stretch_comes():
    cfg = CalibrationConfig(minutes=10, search_minutes=30)
    t, f = session(90, still=(50.0, 60.0))
    m = (t - T0) / 60.0
    usable = (m >= 40) | (np.arange(len(t)) % 3 == 0)  # the first 40 minutes: a third of the windows only
    refs = references_over(t, usable, f, [], cfg)
    first = next(i for i, r in enumerate(refs) if r)
    ref = refs[first]
    assert ref is not None
    # the search went on past its first 30 minutes (too few usable windows there) and settled as soon
    # as ten minutes with enough usable windows existed, on those windows only
    assert ref.kind == "calm" and ref.n_windows >= cfg.min_windows
    inside = (t >= ref.t_start_s) & (t + 20 <= ref.t_end_s)
    assert ref.n_windows == int((inside & usable).sum())
    assert T0 + 40 * 60 < t[first] <= T0 + 51 * 60
