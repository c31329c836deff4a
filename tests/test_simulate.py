"""The synthetic E4 generator: determinism, E4 formats, labels, phases, faults, and physiology
measured on the generated signals (not read back from the generator's parameters)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from scipy.signal import find_peaks

from common.errors import UserError
from replay.recording import PERIODIC, TASKS
from replay.simulate import simulate_recordings, simulate_sessions

START = 1_700_000_000.0
CLASSES = {"stress": {"baseline", "stress", "amusement"}, "anxiety": {"low", "high"}, "emotion": {"low", "high"}}


def times(sig) -> np.ndarray:
    return sig.t0_s + np.arange(sig.n) / sig.fs_hz


def outside(intervals, t: np.ndarray, before_s: float = 0.0, after_s: float = 0.0) -> np.ndarray:
    keep = np.ones(t.shape, bool)
    for a, b in intervals:
        keep &= ~((t >= a - before_s) & (t < b + after_s))
    return keep


def inside(intervals, t: np.ndarray) -> np.ndarray:
    return ~outside(intervals, t)


def first_phase(session, kind: str):
    return next(p for p in session.phases if p.kind == kind)


def assert_same_recording(a, b) -> None:
    assert a.device == b.device and a.labels == b.labels
    assert a.signals.keys() == b.signals.keys()
    for m in a.signals:
        sa, sb = a.signals[m], b.signals[m]
        assert (sa.t0_s, sa.fs_hz, sa.values.dtype) == (sb.t0_s, sb.fs_hz, sb.values.dtype)
        assert np.array_equal(sa.values, sb.values), m
    for name in ("ibi_t_s", "ibi_s", "tags_s"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


@pytest.fixture(scope="module")
def cohort():
    """Twelve 36-minute subjects with motion bursts, worn throughout (off-wrist stretches would
    confound the TEMP slope for minutes after re-wear; they have their own test)."""
    return simulate_sessions(minutes=36, seed=20, subjects=12, off_wrist=False)


@pytest.fixture(scope="module")
def faulty():
    return simulate_sessions(minutes=25, seed=5, subjects=3)


# --- determinism and identity -------------------------------------------------------------------


def test_same_seed_same_arrays_bit_for_bit():
    a = simulate_sessions(minutes=4, seed=123, subjects=2)
    b = simulate_sessions(minutes=4, seed=123, subjects=2)
    for x, y in zip(a, b):
        assert_same_recording(x.recording, y.recording)
        assert x.phases == y.phases and x.motion_s == y.motion_s and x.off_wrist_s == y.off_wrist_s


def test_seeds_and_subjects_differ_and_subjects_are_stable():
    one, two = simulate_recordings(minutes=3, seed=1, subjects=2)
    other = simulate_recordings(minutes=3, seed=2)[0]
    assert (one.device, two.device) == ("sim01", "sim02")
    for a, b in ((one, two), (one, other)):
        assert not np.array_equal(a.signals["eda"].values, b.signals["eda"].values)
        assert not np.array_equal(a.signals["bvp"].values, b.signals["bvp"].values)
    # A subject does not depend on how many subjects were asked for.
    assert_same_recording(two, simulate_recordings(minutes=3, seed=1, subjects=3)[1])


def test_subjects_differ_in_resting_physiology(cohort):
    hr = [np.mean(60.0 / s.recording.ibi_s[s.recording.ibi_t_s < first_phase(s, "baseline").end_s]) for s in cohort]
    eda = [np.median(s.recording.signals["eda"].values) for s in cohort]
    assert np.ptp(hr) > 10.0
    assert max(eda) / min(eda) > 3.0


def test_physiology_does_not_depend_on_label_mode_or_motion_switch():
    base = simulate_sessions(minutes=12, seed=9)[0]
    unlabelled = simulate_sessions(minutes=12, seed=9, labels="none")[0]
    still = simulate_sessions(minutes=12, seed=9, motion=False)[0]
    assert unlabelled.recording.labels == ()
    for m in PERIODIC:
        assert np.array_equal(base.recording.signals[m].values, unlabelled.recording.signals[m].values)
    assert still.motion_s == () and base.motion_s
    assert np.array_equal(base.recording.signals["temp"].values, still.recording.signals["temp"].values)
    eda = base.recording.signals["eda"]
    calm = outside(base.motion_s, times(eda))
    assert np.array_equal(eda.values[calm], still.recording.signals["eda"].values[calm])


@pytest.mark.parametrize(
    "kwargs", [{"minutes": 0.2}, {"minutes": float("nan")}, {"seed": -1}, {"subjects": 0}, {"labels": "valence"}]
)
def test_bad_arguments_are_refused(kwargs):
    args = {"minutes": 3, "seed": 0} | kwargs
    with pytest.raises(ValueError) as info:
        simulate_sessions(**args)
    assert isinstance(info.value, UserError)  # the CLI passes flags through: one line, exit 2


# --- formats ------------------------------------------------------------------------------------


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(minutes=st.floats(0.5, 6.0), seed=st.integers(0, 2**32), start_s=st.floats(1.4e9, 1.9e9))
def test_signals_have_e4_rates_dtypes_shapes_and_ranges(minutes, seed, start_s):
    s = simulate_sessions(minutes=minutes, seed=seed, start_s=start_s)[0]
    r = s.recording
    duration = minutes * 60.0
    assert r.source == "synthetic" and set(r.signals) == set(PERIODIC)
    for m, (fs, dtype) in PERIODIC.items():
        sig = r.signals[m]
        assert sig.fs_hz == fs and sig.values.dtype == dtype and sig.modality == m
        offset = 10.0 if m == "hr" else 0.0
        assert sig.t0_s == start_s + offset
        assert abs(sig.n - (duration - offset) * fs) <= 1.0
        assert np.isfinite(sig.values).all()
    acc = r.signals["acc"].values
    assert acc.shape == (r.signals["acc"].n, 3)
    assert acc.min() >= -128 and acc.max() <= 127
    assert np.median(np.linalg.norm(acc.astype(float), axis=1)) == pytest.approx(64.0, abs=2.5)
    eda = r.signals["eda"].values
    assert eda.min() >= 0.0 and eda.max() < 100.0
    temp = r.signals["temp"].values
    assert temp.min() > 20.0 and temp.max() < 40.0
    assert np.allclose(temp, np.round(temp, 2))
    assert np.all((r.signals["hr"].values > 35.0) & (r.signals["hr"].values < 200.0))
    # IBI rows: beats on the 64 Hz grid, increasing, inside the session, gaps where beats dropped.
    # A row is an interval between two kept consecutive beats: rows never overlap, so together
    # they fit in the session, and no heart beats faster than 200 bpm. A session of two minutes
    # or more keeps some; a shorter one may keep none, and then HR.csv holds one resting value.
    assert r.ibi_s.sum() <= duration and r.ibi_t_s.size <= duration * 200 / 60
    if minutes >= 2.0:
        assert r.ibi_t_s.size > 0
    hr = r.signals["hr"]
    if r.ibi_t_s.size == 0:
        assert np.ptp(hr.values) == 0
    elif r.ibi_t_s[0] < hr.t0_s + (hr.n - 1) / hr.fs_hz:  # some row inside HR.csv's averaging
        rates = 60.0 / r.ibi_s  # HR.csv means the rows' rates: it stays within them
        assert rates.min() - 0.01 <= hr.values.min() and hr.values.max() <= rates.max() + 0.01
    assert np.all(np.diff(r.ibi_t_s) > 0)
    assert np.all((r.ibi_s > 0.3) & (r.ibi_s < 1.6))
    assert np.all((r.ibi_t_s > start_s) & (r.ibi_t_s < start_s + duration))
    assert np.all(np.diff(r.ibi_t_s) >= r.ibi_s[1:] - 1e-6)
    assert np.allclose(r.ibi_s * 64.0, np.round(r.ibi_s * 64.0), atol=1e-6)
    # One tag per phase change, pressed just after it.
    assert r.tags_s.size == len(s.phases) - 1
    lag = r.tags_s - np.array([p.start_s for p in s.phases[1:]])
    assert np.all((lag >= 0.0) & (lag < 2.0))


def test_hr_csv_is_ten_second_mean_of_ibi_rows_held_over_gaps():
    r = simulate_recordings(minutes=6, seed=4)[0]
    hr = r.signals["hr"]
    held = None
    for k, end in enumerate(times(hr)):
        rows = (r.ibi_t_s >= end - 10.0) & (r.ibi_t_s < end)
        if rows.any():
            held = np.mean(60.0 / r.ibi_s[rows])
        if held is not None:
            assert hr.values[k] == pytest.approx(held, abs=0.006)


# --- phases and labels --------------------------------------------------------------------------


@pytest.mark.parametrize("minutes", [0.5, 3.0, 20.0, 70.0])
def test_phases_cover_the_session(minutes):
    for s in simulate_sessions(minutes=minutes, seed=31, subjects=2):
        r = s.recording
        assert len(s.phases) >= 3
        assert s.phases[0].start_s == r.start_s and s.phases[-1].end_s == pytest.approx(r.end_s)
        for a, b in zip(s.phases, s.phases[1:]):
            assert a.end_s == b.start_s and a.start_s < a.end_s
        assert s.phases[0].kind == "baseline"
        assert {"stress", "amusement"} <= {p.kind for p in s.phases}


def test_label_mode_all_gives_every_task_inside_its_phase():
    s = simulate_sessions(minutes=40, seed=3)[0]
    by_task = {task: [iv for iv in s.recording.labels if iv.task == task] for task in TASKS}
    for task, intervals in by_task.items():
        assert {iv.label for iv in intervals} == CLASSES[task]
        ends = [iv.end_s for iv in intervals]
        assert all(b.start_s >= a for a, b in zip(ends, intervals[1:]))
    for iv in s.recording.labels:
        phase = next(p for p in s.phases if p.start_s <= iv.start_s < p.end_s)
        assert phase.labels[iv.task] == iv.label
        # Conservative labels: a few unlabelled seconds at both phase edges.
        assert phase.start_s < iv.start_s < iv.end_s < phase.end_s
    # Three different labellings, not one relabelled: anticipation is anxious without the TSST
    # label, a chat is high emotion without amusement.
    assert {"anticipation", "chat", "meditation"} <= {p.kind for p in s.phases}

    def covered(task, label):
        return {iv.start_s for iv in s.recording.labels if iv.task == task and iv.label == label}

    assert covered("stress", "stress") < covered("anxiety", "high")
    assert covered("stress", "amusement") < covered("emotion", "high")
    assert not covered("anxiety", "high") & covered("emotion", "high")


@pytest.mark.parametrize("mode", TASKS)
def test_label_mode_single_task(mode):
    labels = simulate_recordings(minutes=10, seed=8, labels=mode)[0].labels
    assert labels and {iv.task for iv in labels} == {mode}
    assert {iv.label for iv in labels} == CLASSES[mode]


def test_label_mode_none_leaves_no_labels():
    assert simulate_recordings(minutes=5, seed=8, labels="none")[0].labels == ()


# --- faults -------------------------------------------------------------------------------------


def test_off_wrist_shows_zero_eda_falling_temp_no_pulse_and_still_acc(faulty):
    for s in faulty:
        r = s.recording
        assert s.off_wrist_s
        for a, b in s.off_wrist_s:
            eda, temp, bvp, acc = (r.signals[m] for m in ("eda", "temp", "bvp", "acc"))
            te, tt, tb, ta = times(eda), times(temp), times(bvp), times(acc)
            assert np.all(eda.values[(te >= a + 1.0) & (te < b)] < 0.03)
            before = temp.values[(tt >= a - 10.0) & (tt < a)].mean()
            at_end = temp.values[(tt >= b - 5.0) & (tt < b)].mean()
            assert at_end < before - 1.0
            assert bvp.values[(tb >= a) & (tb < b)].std() < 3.0
            assert acc.values[(ta >= a) & (ta < b)].astype(float).std(axis=0).max() < 1.0
            assert not np.any((r.ibi_t_s >= a) & (r.ibi_t_s < b + 0.5))
        # Worn and still: EDA is clearly on skin (above the 0.05 µS non-wear rules).
        eda = r.signals["eda"]
        worn = outside(s.off_wrist_s, times(eda), after_s=120.0)
        assert np.quantile(eda.values[worn], 0.01) > 0.05


def test_motion_bursts_raise_acc_and_corrupt_bvp(faulty):
    for s in faulty:
        r = s.recording
        assert s.motion_s
        acc, bvp = r.signals["acc"], r.signals["bvp"]
        ta, tb = times(acc), times(bvp)
        magnitude = np.linalg.norm(acc.values.astype(float), axis=1)
        moving, calm = inside(s.motion_s, ta), outside(s.motion_s + s.off_wrist_s, ta, 5.0, 5.0)
        assert magnitude[moving].std() > 3.0 * magnitude[calm].std()
        moving, calm = inside(s.motion_s, tb), outside(s.motion_s + s.off_wrist_s, tb, 5.0, 5.0)
        assert np.abs(bvp.values[moving]).max() > 200.0
        assert bvp.values[moving].std() > 3.0 * bvp.values[calm].std()
        # The E4 keeps few beats while the arm moves.
        beats_moving = inside(s.motion_s, r.ibi_t_s).sum() / sum(b - a for a, b in s.motion_s)
        beats_calm = outside(s.motion_s, r.ibi_t_s).sum() / (r.duration_s - sum(b - a for a, b in s.motion_s))
        assert beats_moving < 0.3 * beats_calm


def test_switches_turn_faults_off():
    s = simulate_sessions(minutes=15, seed=5, off_wrist=False, motion=False)[0]
    assert s.off_wrist_s == () and s.motion_s == ()
    assert np.quantile(s.recording.signals["eda"].values, 0.01) > 0.05


# --- physiology, measured -----------------------------------------------------------------------


def phase_measures(session, kind: str) -> dict[str, float]:
    """HR and RMSSD from IBI rows, EDA mean, SCR rate and TEMP slope over the phase after its
    first minute, EDA with motion bursts (and 30 s after them) left out."""
    r = session.recording
    p = first_phase(session, kind)
    a, b = p.start_s + 60.0, p.end_s
    eda, temp = r.signals["eda"], r.signals["temp"]
    te = times(eda)
    seg = (te >= a) & (te < b)
    clean = outside(session.motion_s, te, 10.0, 30.0)
    peaks, _ = find_peaks(eda.values[seg], prominence=0.01)
    scr_per_min = clean[seg][peaks].sum() / ((seg & clean).sum() / eda.fs_hz / 60.0)
    tt = times(temp)
    tseg = (tt >= a) & (tt < b)
    slope = np.polyfit((tt[tseg] - a) / 60.0, temp.values[tseg], 1)[0]
    rows = (r.ibi_t_s >= a) & (r.ibi_t_s < b)  # the E4 itself drops beats under motion
    consecutive = np.r_[False, np.isclose(np.diff(r.ibi_t_s), r.ibi_s[1:])]
    pairs = consecutive[1:] & rows[1:] & rows[:-1]
    enough = rows.sum() >= 20  # as in WESAD's TSST, some people keep almost no beats
    return {
        "hr": float(np.mean(60.0 / r.ibi_s[rows])) if enough else np.nan,
        "eda": float(eda.values[seg & clean].mean()),
        "scr": float(scr_per_min),
        "temp_slope": float(slope),
        "rmssd": float(np.sqrt(np.mean(np.diff(r.ibi_s)[pairs] ** 2))) if enough else np.nan,
    }


def test_stress_moves_wrist_physiology_the_literature_way(cohort):
    base = [phase_measures(s, "baseline") for s in cohort]
    stress = [phase_measures(s, "stress") for s in cohort]

    def change(key):
        d = np.array([s[key] - b[key] for s, b in zip(stress, base)])
        assert np.isfinite(d).sum() >= len(cohort) // 2
        return d[np.isfinite(d)]

    # Mostly, not always: each modality has its own non-responders (10-20 %), as in WESAD.
    most = 2 * len(cohort) // 3
    assert (change("hr") > 0).mean() >= 0.75 and change("hr").mean() > 8.0
    assert (change("eda") > 0).sum() >= most
    assert np.median([s["eda"] / b["eda"] for s, b in zip(stress, base)]) > 1.8
    assert (change("scr") > 0).sum() >= most and change("scr").mean() > 2.0
    assert (change("temp_slope") < 0).sum() >= most and change("temp_slope").mean() < -0.03
    assert (change("rmssd") < 0).mean() >= 0.75
    # Resting values in the E4 ranges of physiology.md.
    assert 60.0 < np.nanmean([b["hr"] for b in base]) < 85.0
    assert 0.015 < np.nanmedian([b["rmssd"] for b in base]) < 0.08


def test_meditation_is_calmer_than_baseline_and_amusement_is_close_to_it(cohort):
    assert sum("meditation" in {p.kind for p in s.phases} for s in cohort) >= 3
    sd: dict[str, list[float]] = {}
    for kind in ("baseline", "meditation", "amusement", "stress"):
        sd[kind] = []
        for s in (s for s in cohort if kind in {p.kind for p in s.phases}):
            p, acc = first_phase(s, kind), s.recording.signals["acc"]
            t = times(acc)
            keep = (t >= p.start_s + 10.0) & (t < p.end_s - 10.0) & outside(s.motion_s, t, 5.0, 5.0)
            sd[kind].append(np.linalg.norm(acc.values[keep].astype(float), axis=1).std())
    assert np.median(sd["meditation"]) < np.median(sd["baseline"]) < np.median(sd["stress"])
    hr_amuse = np.array([phase_measures(s, "amusement")["hr"] - phase_measures(s, "baseline")["hr"] for s in cohort])
    assert abs(np.nanmedian(hr_amuse)) < 6.0


def test_laughs_mark_the_pleasant_phases_with_brief_heart_rate_rises(cohort):
    """The emotion task's only cue: laughs in amusement and chat, none elsewhere, most 20 s
    windows of those phases holding one, each followed within seconds by a faster pulse."""
    pleasant = ("amusement", "chat")
    windows_with, windows = 0, 0
    rise = []
    for s in cohort:
        laughs = np.array(s.laughs_s)
        kind = [next(p.kind for p in s.phases if p.start_s <= x < p.end_s) for x in laughs]
        assert set(kind) <= set(pleasant)
        for p in (p for p in s.phases if p.kind in pleasant):
            starts = np.arange(p.start_s, p.end_s - 20.0, 20.0)
            windows += starts.size
            windows_with += sum(((laughs >= a) & (laughs < a + 20.0)).any() for a in starts)
        r = s.recording
        inst = 60.0 / r.ibi_s
        for x in laughs:
            before = inst[(r.ibi_t_s >= x - 8.0) & (r.ibi_t_s < x)]
            after = inst[(r.ibi_t_s >= x + 2.0) & (r.ibi_t_s < x + 6.0)]
            if before.size >= 3 and after.size >= 2:
                rise.append(after.mean() - before.mean())
    assert windows_with / windows > 0.5
    assert len(rise) > 50 and np.median(rise) > 3.0


def test_bvp_carries_the_pulse_of_the_beats():
    """Pulse peaks counted in the BVP of a seated phase give the heart rate of the IBI rows."""
    s = simulate_sessions(minutes=10, seed=12, subjects=4, motion=False, off_wrist=False)
    for session in s:
        r = session.recording
        p = first_phase(session, "baseline")
        bvp = r.signals["bvp"]
        seg = (times(bvp) >= p.start_s + 30.0) & (times(bvp) < p.end_s)
        x = bvp.values[seg]
        spread = np.quantile(x, 0.95) - np.quantile(x, 0.05)
        peaks, _ = find_peaks(x, distance=int(0.33 * bvp.fs_hz), prominence=0.5 * spread)
        hr_bvp = 60.0 * peaks.size / (seg.sum() / bvp.fs_hz)
        rows = (r.ibi_t_s >= p.start_s + 30.0) & (r.ibi_t_s < p.end_s)
        assert hr_bvp == pytest.approx(np.mean(60.0 / r.ibi_s[rows]), abs=4.0)
        assert 20.0 < spread < 150.0
