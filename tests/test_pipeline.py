"""The whole pipeline: a synthetic recording through ``m3sense run`` into SQLite and InfluxDB,
read back with ``timeline --json``; and ``demo`` end to end."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from inference.checkpoint import load_checkpoint
from inference.predict import Predictor
from m3sense.commands import agreement
from preprocess import recording_windows
from replay import read_source
from storage.connect import read_affect
from storage.target import parse_sink
from tests.conftest import run_cli
from tests.servers import NEEDS_INFLUXD, InfluxServer, V2WriteProxy, influx_proxy, influxd, series_values

__all__ = ["influx_proxy", "influxd"]  # fixtures used below

TASKS = ("stress", "anxiety", "emotion")


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[float]], dict]:
    """Two synthetic wristbands (seeds the shipped weights never saw), their offline window ends
    and the labels the shipped weights give those windows offline, by (device, task, window end)."""
    out = tmp_path_factory.mktemp("pipeline") / "sim"
    run_cli("simulate", str(out), "--minutes", "8", "--seed", "9041", "--subjects", "2", check=True)
    windows = {rec.device: recording_windows(rec) for rec in read_source(out)}
    ends = {device: [w.t_end_s for w in ws] for device, ws in windows.items()}
    predictor = Predictor(load_checkpoint())
    offline = {}
    for device, ws in windows.items():
        for w, tasks in zip(ws, predictor.predict_messages([w.to_message() for w in ws])):
            offline.update({(device, t, w.t_end_s): r["label"] for t, r in tasks.items()})
    return out, ends, offline


def check_records(records: list, ends: dict[str, list[float]], offline: dict) -> None:
    keys = Counter((r.device, r.task, r.time_s) for r in records)
    assert max(keys.values()) == 1, "one record per window and task"
    for device, t_ends in ends.items():
        for task in TASKS:
            # the stored timestamps are exactly the window ends of the offline (training) path
            assert sorted(r.time_s for r in records if r.device == device and r.task == task) == sorted(t_ends)
    # ... and the stored answers are the model's offline answers for those windows (batches of
    # other sizes may move a probability in its last bits, never more than a rare near-tie)
    same = sum(offline[(r.device, r.task, r.time_s)] == r.label for r in records)
    assert same >= 0.99 * len(records)
    stats = agreement(records)
    for task in TASKS:
        s = stats[task]
        assert s["with_truth"] >= 20
        classes = {"stress": 3, "anxiety": 2, "emotion": 2}[task]
        # Anxiety and emotion learned from simulated people and agree well (about 0.9 offline);
        # the stress head learned from real WESAD people only and carries over to simulated
        # physiology in part (about 0.42 offline, model card), so it only has to beat guessing.
        margin = 0.05 if task == "stress" else 0.25
        assert s["agreement"] >= 1 / classes + margin, (task, s)


def test_run_into_sqlite_and_timeline(session: tuple[Path, dict, dict], tmp_path: Path) -> None:
    source, ends, offline = session
    db = tmp_path / "affect.db"
    proc = run_cli("run", str(source), "--sink", f"sqlite:///{db}", timeout=300, check=True)
    assert "end of device sim01" in proc.stderr and "end of device sim02" in proc.stderr
    records = read_affect(parse_sink(f"sqlite:///{db}"))
    check_records(records, ends, offline)
    # no confident answer from an off-wrist window
    assert all(r.label is None for r in records if r.off_wrist)
    lines = run_cli("timeline", "--sink", f"sqlite:///{db}", "--json", "--device", "sim02", check=True).stdout
    rows = [json.loads(line) for line in lines.splitlines()]
    assert len(rows) == 3 * len(ends["sim02"])
    assert {"time", "device", "task", "label", "confidence", "quality"} <= set(rows[0])
    assert {row["device"] for row in rows} == {"sim02"}


@NEEDS_INFLUXD
def test_run_into_influxdb(session: tuple[Path, dict, dict], influxd: InfluxServer, influx_proxy: V2WriteProxy,
                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source, ends, offline = session
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))  # the store's spool
    monkeypatch.setenv("INFLUX_TOKEN", "not-checked-by-1.6")
    sink = influx_proxy.sink()
    run_cli("run", str(source), "--sink", sink, timeout=300, check=True)
    assert influx_proxy.writes_v2 > 0
    check_records(read_affect(parse_sink(sink)), ends, offline)
    counted = series_values(influxd.query('SELECT count("confidence") FROM "affect" WHERE "task" = \'stress\''))
    predicted = sum(1 for d in ends for _ in ends[d])  # upper bound: low-quality windows carry no confidence
    assert 0 < counted[0]["count"] <= predicted
    rows = run_cli("timeline", "--sink", sink, "--json", check=True).stdout.splitlines()
    assert len(rows) == 3 * sum(len(v) for v in ends.values())


def test_demo_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = run_cli("demo", "--out", str(out), "--minutes", "6", "--devices", "2", timeout=300, check=True)
    assert "agreement" in proc.stdout
    assert (out / "timeline.png").stat().st_size > 10_000
    assert len(read_affect(parse_sink(f"sqlite:///{out / 'affect.db'}"))) > 0
