"""Host-side timestamps, lost-packet gaps, drift correction, beats and the per-device pipeline."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from ingest import codec
from ingest.beats import Beat, BeatDetector, HeartRate
from ingest.device import DeviceIngest
from ingest.timing import StreamClock

FS, SPP = 64.0, 11
PKT_S = SPP / FS


def arrivals(
    n: int,
    *,
    start: float = 1000.0,
    rate_ratio: float = 1.0,
    jitter_s: float = 0.02,
    latency_s: float = 0.03,
    seed: int = 0,
) -> np.ndarray:
    """When packet k's notification reaches the host: its last sample was taken at
    start + (k + 1) * PKT_S / rate_ratio, then BLE latency plus non-negative jitter."""
    rng = np.random.default_rng(seed)
    return start + (np.arange(n) + 1) * PKT_S / rate_ratio + latency_s + rng.uniform(0, jitter_s, n)


def run(clock: StreamClock, times: np.ndarray, counters: list[int | None] | None = None) -> list:
    counters = counters if counters is not None else [k % 64 for k in range(len(times))]
    return [clock.push(float(t), SPP, c) for t, c in zip(times, counters)]


def test_first_packet_anchors_and_samples_advance_at_the_nominal_rate() -> None:
    clock = StreamClock(fs_hz=FS, samples_per_packet=SPP, counter_modulus=64)
    stamps = run(clock, arrivals(200))
    assert stamps[0].t0_s == pytest.approx(arrivals(1)[0] - PKT_S)
    steps = np.diff([s.t0_s for s in stamps])
    assert np.all(np.abs(steps - PKT_S) <= 0.005 * PKT_S + 1e-12)  # only slews, never jumps
    assert all(s.missing == 0 for s in stamps)


@settings(max_examples=25, deadline=None)
@given(st.floats(-300e-6, 300e-6), st.floats(0.0, 0.08), st.integers(0, 2**16))
def test_drift_is_corrected_and_samples_never_postdate_their_arrival(ppm: float, jitter: float, seed: int) -> None:
    """A wristband crystal off by up to 300 ppm over 20 minutes: without correction the
    timeline would be off by up to 0.36 s; with it, the latency floor stays near zero."""
    n = int(20 * 60 / PKT_S)
    times = arrivals(n, rate_ratio=1 + ppm, jitter_s=jitter, latency_s=0.03, seed=seed)
    clock = StreamClock(fs_hz=FS, samples_per_packet=SPP, counter_modulus=64)
    stamps = run(clock, times)
    ends = np.array([s.t0_s for s in stamps]) + PKT_S
    lead = times - ends  # arrival minus the claimed end of the packet's samples
    assert lead[-200:].min() > -0.02  # no sample is placed (much) after it could have been seen
    assert lead[-200:].min() < 0.02 + 0.03 + jitter  # and none drifts away from its arrival
    steps = np.diff(ends)
    assert steps.min() > 0


def test_counter_gap_skips_exactly_the_lost_samples() -> None:
    times = arrivals(30)
    keep = [k for k in range(30) if k not in (10, 11, 12, 20)]
    clock = StreamClock(fs_hz=FS, samples_per_packet=SPP, counter_modulus=64)
    stamps = run(clock, times[keep], [k % 64 for k in keep])
    gaps = [(s.missing, s.cause) for s in stamps if s.missing]
    assert gaps == [(33, "counter"), (11, "counter")]
    t0 = stamps[0].t0_s
    after = stamps[keep.index(21)]
    assert after.t0_s == pytest.approx(t0 + 21 * PKT_S, abs=0.01)  # time was not compressed


def test_counter_that_wrapped_during_a_long_silence() -> None:
    times = arrivals(300)
    keep = list(range(50)) + list(range(250, 300))  # 200 packets lost: three wraps of a 6-bit counter
    clock = StreamClock(fs_hz=FS, samples_per_packet=SPP, counter_modulus=64)
    stamps = run(clock, times[keep], [k % 64 for k in keep])
    assert [s.missing for s in stamps if s.missing] == [200 * SPP]


def test_implausible_counter_is_counted_not_believed() -> None:
    times = arrivals(20)
    counters: list[int | None] = [k % 64 for k in range(20)]
    counters[7] = 40  # a corrupt counter
    clock = StreamClock(fs_hz=FS, samples_per_packet=SPP, counter_modulus=64)
    stamps = run(clock, times, counters)
    assert sum(s.missing for s in stamps) == 0
    assert clock.stats.anomalies["counter_implausible"] >= 1


def test_without_counters_late_arrivals_make_gaps() -> None:
    tfs, tspp = 4.0, 4  # TEMP: one packet a second, no counter
    times = 500.0 + np.arange(1, 21) + 0.03
    keep = [k for k in range(20) if k not in (5, 6)]
    clock = StreamClock(fs_hz=tfs, samples_per_packet=tspp)
    stamps = [clock.push(float(times[k]), tspp) for k in keep]
    assert [(s.missing, s.cause) for s in stamps if s.missing] == [(8, "arrival")]


def test_relink_snaps_to_the_old_sample_grid() -> None:
    clock = StreamClock(fs_hz=FS, samples_per_packet=SPP, counter_modulus=64)
    times = arrivals(20)
    run(clock, times[:10])
    next_t = clock.next_t_s
    assert next_t is not None  # ten packets are on the timeline
    clock.relink()
    s = clock.push(float(times[15]), SPP, 3)  # counter restarted after the reconnect
    assert s.cause == "reconnect" and s.missing == 5 * SPP
    assert (s.t0_s - next_t) * FS == pytest.approx(s.missing)


# -- beats ------------------------------------------------------------------------------------


def pulse_wave(ibis: np.ndarray, fs: float = FS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """BVP-like signal with a systolic peak at each beat; returns (signal, beat times)."""
    beats = np.cumsum(ibis)
    t = np.arange(int((beats[-1] + 1.0) * fs)) / fs
    x = np.zeros_like(t)
    for b in beats:
        x += 80 * np.exp(-0.5 * ((t - b) / 0.07) ** 2) + 25 * np.exp(-0.5 * ((t - b - 0.3) / 0.08) ** 2)
    return x + np.random.default_rng(seed).normal(0, 1.0, t.size), beats


def test_beats_recover_the_intervals_of_a_pulse_wave() -> None:
    rng = np.random.default_rng(3)
    ibis = 0.8 + 0.05 * np.sin(np.arange(120) / 4) + rng.normal(0, 0.01, 120)
    x, truth = pulse_wave(ibis)
    out = BeatDetector(fs_hz=FS).push(1000.0, x)
    got = np.array([b.ibi_s for b in out.beats])
    assert len(got) >= 100  # a couple lost to warm-up and the first interval
    # each detected interval matches a true one (the filter delays all beats alike)
    t_beats = np.array([b.t_s for b in out.beats]) - 1000.0
    idx = np.searchsorted(truth, t_beats - 0.1)
    assert np.abs(got - ibis[idx]).max() < 0.02
    hr = np.array([h.bpm for h in out.hr])
    assert np.abs(hr[-20:] - 60 / 0.8).max() < 4


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(1, 200), min_size=1, max_size=40))
def test_beats_do_not_depend_on_chunking(cuts: list[int]) -> None:
    x, _ = pulse_wave(np.full(40, 0.75), seed=1)
    whole = BeatDetector(fs_hz=FS).push(50.0, x)
    det = BeatDetector(fs_hz=FS)
    beats: list[Beat] = []
    hrs: list[HeartRate] = []
    i = 0
    for c in [*cuts, len(x)]:
        chunk = x[i : i + c]
        if chunk.size:
            out = det.push(50.0 + i / FS, chunk)
            beats += out.beats
            hrs += out.hr
        i += c
        if i >= len(x):
            break
    if i < len(x):
        out = det.push(50.0 + i / FS, x[i:])
        beats += out.beats
        hrs += out.hr
    assert [b.t_s for b in beats] == pytest.approx([b.t_s for b in whole.beats])
    assert [h.bpm for h in hrs] == pytest.approx([h.bpm for h in whole.hr])


def test_missed_beat_interval_is_rejected() -> None:
    x, _ = pulse_wave(np.full(40, 0.8))
    k = int(20.8 * FS)  # flatten one beat: the interval around it would be 1.6 s
    x[k - 20 : k + 40] = 0
    out = BeatDetector(fs_hz=FS).push(0.0, x)
    assert all(abs(b.ibi_s - 0.8) < 0.05 for b in out.beats)


# -- the per-device pipeline -------------------------------------------------------------------


def test_device_ingest_counts_and_reports_bad_packets_and_gaps() -> None:
    ing = DeviceIngest(derive_heart=False)
    good = codec.encode_acc(np.zeros((6, 3), dtype=np.int16), counter=0)
    out = ing.packet("acc", good, 10.0)
    assert [e.modality for e in out] == ["acc"] and out[0].samples.dtype == np.int16
    bad = ing.packet("acc", good[:7], 10.1)  # packet 1 arrives damaged: its samples are a gap at once
    assert [e.meta["event"] for e in bad] == ["bad_packet", "gap"] and bad[0].meta["reason"] == "truncated"
    assert bad[1].meta["missing_samples"] == 6 and bad[1].meta["cause"] == "bad_packet"
    unknown = ing.packet("gyro", b"\x00", 10.2)
    assert unknown[0].meta["reason"] == "unknown"
    jump = ing.packet("acc", codec.encode_acc(np.zeros((6, 3), dtype=np.int16), counter=3), 10.0 + 4 * 6 / 32)
    gap = next(e for e in jump if e.kind == "status")  # packet 2 never came
    assert gap.meta["event"] == "gap" and gap.meta["missing_samples"] == 6 and gap.meta["cause"] == "counter"
    assert jump[-1].t0_s == pytest.approx(out[0].t0_s + 3 * 6 / 32)
    assert ing.stats.bad == {"acc:truncated": 1, "gyro:unknown": 1} and ing.stats.missing_samples["acc"] == 12


def test_device_ingest_battery_tag_and_on_wrist() -> None:
    ing = DeviceIngest(derive_heart=False)
    battery = ing.packet("battery", codec.encode_battery(0.42), 5.0)
    assert battery[0].modality == "battery" and battery[0].samples.tolist() == [0.42]
    assert battery[1].meta == {"event": "battery", "source": "live", "battery": 0.42}
    tag = ing.packet("button", codec.encode_button(True), 6.0)
    assert tag[0].modality == "tag" and tag[0].t0_s == 6.0 and tag[0].samples.size == 0
    assert ing.packet("button", codec.encode_button(False), 6.5) == []
    on = ing.packet("eda", codec.encode_eda([2.0] * 6, counter=0), 7.0)
    off = ing.packet("eda", codec.encode_eda([0.0] * 6, counter=1), 8.5)
    assert [e.meta["on_wrist"] for e in on + off if e.meta.get("event") == "on_wrist"] == [True, False]


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_lost_packets_are_found_exactly_with_counters_or_without(data: st.DataObject) -> None:
    """Whatever is lost (bursts up to a few wraps of the 6-bit counter) and however late
    packets are (up to 0.4 of a packet with counters, 0.2 without), the gaps add up to exactly the lost samples and
    every packet lands on its own place of the sample grid (which may slew, never jump)."""
    n = 400
    lost = set(data.draw(st.lists(st.integers(1, n - 2), max_size=60)))
    burst_at = data.draw(st.integers(1, n - 200))
    if data.draw(st.booleans()):
        lost |= set(range(burst_at, burst_at + data.draw(st.integers(1, 180))))
    with_counter = data.draw(st.booleans())
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    # arrival times alone resolve a lost packet while the jitter stays under a quarter packet
    jitter = 0.4 if with_counter else 0.2
    times = 1000.0 + (np.arange(n) + 1) * PKT_S + 0.03 + rng.uniform(0, jitter * PKT_S, n)
    clock = StreamClock(fs_hz=FS, samples_per_packet=SPP, counter_modulus=64 if with_counter else None)
    kept = [k for k in range(n) if k not in lost]
    stamps = {k: clock.push(float(times[k]), SPP, k % 64 if with_counter else None) for k in kept}
    assert sum(s.missing for s in stamps.values()) == SPP * sum(1 for k in lost if k < kept[-1])
    # consecutive packets sit as many packets apart as they should, up to the drift slew
    for k1, k2 in pairwise(kept):
        step = stamps[k2].t0_s - stamps[k1].t0_s
        assert abs(step - (k2 - k1) * PKT_S) <= 0.005 * PKT_S + 1e-9, (k1, k2)


@pytest.mark.parametrize("burst", [62, 63, 64, 65])
def test_a_burst_of_one_counter_wrap_less_one_is_loss_not_a_repeat(burst: int) -> None:
    """63 lost packets leave the 6-bit counter one short of where it was, as a repeated packet
    does; the arrival time tells them apart (Hypothesis found this one)."""
    clock = StreamClock(fs_hz=FS, samples_per_packet=SPP, counter_modulus=64)
    kept = [k for k in range(200) if not 10 <= k < 10 + burst]
    stamps = [clock.push(1000.0 + (k + 1) * PKT_S + 0.03, SPP, k % 64) for k in kept]
    assert sum(s.missing for s in stamps) == SPP * burst


def test_reconnect_backoff_grows_caps_and_spreads() -> None:
    import random

    from ingest.ble import LinkConfig, backoff_s

    cfg = LinkConfig(backoff_initial_s=0.5, backoff_max_s=30.0)
    rng = random.Random(1)
    for attempt, ceiling in [(0, 0.5), (1, 1.0), (3, 4.0), (6, 30.0), (500, 30.0)]:
        delays = [backoff_s(attempt, cfg, rng) for _ in range(200)]
        assert 0.5 * ceiling <= min(delays) and max(delays) <= ceiling
        assert len({round(d, 6) for d in delays}) > 150  # jittered: no two wristbands in lockstep


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_heart_rate_follows_the_simulators_heart(seed: int) -> None:
    """The synthetic generator knows its heart rate; the BVP-derived rate must follow it.
    HR.csv, like the E4's, holds its last value over stretches where the E4 kept no beats (arm
    movement), so it is the truth only for seconds with IBI rows behind them."""
    from replay import simulate_recordings

    rec = simulate_recordings(minutes=5, seed=seed, off_wrist=False, motion=False)[0]
    bvp, hr = rec.signals["bvp"], rec.signals["hr"]
    out = BeatDetector(fs_hz=bvp.fs_hz).push(bvp.t0_s, bvp.values)
    t = np.array([h.t_s for h in out.hr])
    truth = np.interp(t, hr.t0_s + np.arange(hr.n) / hr.fs_hz, hr.values)
    err = np.abs(np.array([h.bpm for h in out.hr]) - truth)
    assert len(t) > 0.8 * rec.duration_s / 1.0 - 20
    backed = np.searchsorted(rec.ibi_t_s, t) - np.searchsorted(rec.ibi_t_s, t - 10.0) >= 3
    assert backed.sum() > 60 and np.median(err[backed]) < 3.0


def test_an_open_circuit_reads_as_off_wrist() -> None:
    ing = DeviceIngest(derive_heart=False)
    saturated = bytes.fromhex("ffffff" * 6 + "0000")  # the largest resistance the E4 can send
    events = [e.meta for e in ing.packet("eda", saturated, 1.0) if e.kind == "status"]
    assert events == [{"event": "on_wrist", "source": "live", "on_wrist": False}]
