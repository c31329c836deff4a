"""``WindowConfig(stagger=True)`` / ``preprocess --stagger``: each device's windows on its own grid
phase, so a fleet on one clock does not close every window at the same instant."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from m3sense.cli import build_parser
from preprocess import Preprocessor, Window, WindowConfig, recording_windows
from preprocess.cli import window_config
from preprocess.windower import grid_phase_s
from replay import LabelInterval, Recording, read_source
from storage.connect import read_affect
from storage.target import parse_sink
from tests.conftest import run_cli
from tests.preprocess_helpers import T0, chunk_messages, make_recording

STAGGER = WindowConfig(stagger=True)


def shifted(rec: Recording, dt: float) -> Recording:
    """The same recording ``dt`` seconds later (samples, labels, everything)."""
    signals = {m: replace(s, t0_s=s.t0_s + dt) for m, s in rec.signals.items()}
    labels = tuple(replace(iv, start_s=iv.start_s + dt, end_s=iv.end_s + dt) for iv in rec.labels)
    return replace(rec, signals=signals, labels=labels)


def content(w: Window) -> tuple:
    """What a window holds, without where it sits in time."""
    arrays = {m: (w.signals[m].tobytes(), w.masks[m].tobytes()) for m in w.signals}
    return arrays, w.present, w.quality, w.labels


def test_the_phase_is_a_whole_number_of_quarter_seconds_below_the_hop_and_stable() -> None:
    ids = [f"e4-{i:04d}" for i in range(400)]
    for hop in (5.0, 20.0, 0.25):
        phases = [grid_phase_s(d, hop) for d in ids]
        assert all(0 <= p < hop and (p / 0.25).is_integer() for p in phases)
        assert len(set(phases)) == round(hop / 0.25)  # 400 ids reach every phase
    # CRC-32, not Python's salted hash: the same in every process and release (a store, a replay
    # and a restarted preprocess must agree on where a device's windows fall)
    assert [grid_phase_s(d, 5.0) for d in ("dev1", "dev2", "e4-A01234")] == [1.25, 1.75, 4.5]
    assert 0 <= grid_phase_s("odd\udc80id", 5.0) < 5.0  # an id with a lone surrogate, as the bus may decode one


@pytest.mark.parametrize("device", ["dev1", "e4-A01234", "dev3"])
def test_a_staggered_device_cuts_the_windows_of_its_data_shifted_by_its_phase(device: str) -> None:
    """Staggered windows of a recording are, bit for bit, the plain grid's windows of the same
    recording started ``phase`` seconds earlier: same samples, filters, quality and labels."""
    label = LabelInterval(start_s=T0 + 12, end_s=T0 + 44, task="stress", label="stress")
    rec = make_recording(70.0, seed=4, device=device, labels=(label,))
    phase = grid_phase_s(device, 5.0)
    assert phase > 0
    staggered = recording_windows(rec, STAGGER)
    plain = recording_windows(shifted(rec, -phase))
    assert [w.t_start_s for w in staggered] == [w.t_start_s + phase for w in plain]
    assert all((w.t_start_s - phase) % 5.0 == 0 for w in staggered)
    assert [content(a) for a in staggered] == [content(b) for b in plain]
    assert any(w.labels["stress"] == "stress" for w in staggered)


def test_staggered_windows_do_not_depend_on_how_the_stream_was_cut() -> None:
    rec = make_recording(60.0, seed=2, device="e4-A01234")
    whole = recording_windows(rec, STAGGER)
    pre = Preprocessor(STAGGER)
    cut: list[Window] = []
    sizes = {"bvp": 7, "acc": 5, "eda": 3, "temp": 2}
    for msg in chunk_messages(rec, {m: range(0, rec.signals[m].n, k) for m, k in sizes.items()}):
        cut += pre.push(msg, now_s=msg.t0_s)
    cut += pre.flush()
    assert [w.t_start_s for w in cut] == [w.t_start_s for w in whole]
    assert [content(a) for a in cut] == [content(b) for b in whole]


def test_a_fleet_on_one_clock_closes_its_windows_spread_over_the_hop() -> None:
    """20 wristbands started together: on the plain grid every window ends on the same 5 s
    ticks; staggered, their ends fall on many different instants of the hop."""
    base = make_recording(45.0, seed=6)
    fleet = [replace(base, device=f"ward-{i}") for i in range(20)]
    plain_ends = {w.t_end_s % 5.0 for r in fleet for w in recording_windows(r)}
    staggered = [recording_windows(r, STAGGER) for r in fleet]
    ends = {w.t_end_s % 5.0 for ws in staggered for w in ws}
    assert plain_ends == {0.0}
    assert len(ends) >= 10
    assert all(len(ws) >= 4 for ws in staggered)  # each still gets a window every hop
    assert np.isfinite([w.t_end_s for ws in staggered for w in ws]).all()


def test_the_command_line_turns_it_on_and_leaves_it_off_by_default() -> None:
    parser = build_parser()
    assert window_config(parser.parse_args(["preprocess", "--stagger"])).stagger
    assert not window_config(parser.parse_args(["preprocess"])).stagger
    assert window_config(parser.parse_args(["preprocess", "--stagger", "--hop-s", "20"])).hop_s == 20.0


def test_run_with_stagger_stores_every_device_on_its_own_phase(tmp_path: Path) -> None:
    """``run --stagger`` hands the flag to preprocess: the stored window ends are the staggered
    offline windows of each recording, and they are not on the plain grid."""
    out = tmp_path / "sim"
    run_cli("simulate", str(out), "--minutes", "2", "--seed", "77", "--subjects", "2", check=True)
    db = tmp_path / "affect.db"
    run_cli("run", str(out), "--stagger", "--sink", f"sqlite:///{db}", "--tasks", "anxiety", timeout=300, check=True)
    records = read_affect(parse_sink(f"sqlite:///{db}"))
    recordings = read_source(out)
    assert len(recordings) == 2
    for rec in recordings:
        expected = [w.t_end_s for w in recording_windows(rec, STAGGER)]
        stored = sorted(r.time_s for r in records if r.device == rec.device)
        assert stored == expected and len(stored) >= 15
        phase = grid_phase_s(rec.device, 5.0)
        assert {t % 5.0 for t in stored} == {phase}
    assert len({grid_phase_s(rec.device, 5.0) for rec in recordings}) == 2  # two devices, two phases
