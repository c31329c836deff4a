"""bench/bench_scale.py's pure parts: which packet completes each window, and the fleet of devices."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from preprocess import recording_windows
from replay import simulate_recordings
from replay.chunks import recording_messages


def _bench() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "bench" / "bench_scale.py"
    spec = importlib.util.spec_from_file_location("bench_scale", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return _bench()


def test_window_deadlines_name_the_packet_that_completes_each_window(bench: ModuleType) -> None:
    rec = simulate_recordings(minutes=1.5, seed=3, subjects=1)[0]
    deadlines = bench.window_deadlines(rec)
    windows = recording_windows(rec)
    assert sorted(deadlines) == sorted(round(w.t_end_s, 3) for w in windows)
    dues = {due - rec.start_s for due, _ in recording_messages(rec)}
    for t_end, offset in deadlines.items():
        assert offset in dues  # the due time of a message the replay sends
        # a window needs data up to its end (or the recording's last sample, for the last one) and
        # past it by the filters' delay: never more than one EDA packet (1.5 s) plus the 1 s FIR delay
        end = t_end - rec.start_s
        assert min(end, max(dues)) <= offset <= end + 2.5 + 1e-9


def test_fleet_splits_devices_among_gateways(bench: ModuleType) -> None:
    whole = [r.device for r in bench.fleet(5, 30, seed=1)]
    shares = [[r.device for r in bench.fleet(5, 30, seed=1, gateway=g, gateways=2)] for g in range(2)]
    assert whole == bench.device_ids(5)
    assert sorted(shares[0] + shares[1]) == whole and not set(shares[0]) & set(shares[1])
