"""``m3sense run --sink sqlite:… --sink mqtt://… --alerts RULES`` over a replayed (simulated)
session, against a real Mosquitto: the retained states equal the last stored record per
device and task, Home Assistant discovery is there, the store went offline when it stopped,
and the alert events stored are those the rules give over the stored timeline, published too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from storage.alerts import AlertEngine, load_rules
from storage.sqlite import read_affect, read_alerts
from tests.conftest import run_cli
from tests.servers import MosquittoServer

__all__ = ["mosquitto"]  # the fixture, used below
from tests.servers import mosquitto

RULES = """
[[rule]]
name = "anxious"
task = "anxiety"
label = "high"
raise_at = 0.5
raise_for = "1m"
clear_below = 0.5
clear_for = "1m"

[[rule]]
name = "calm"
task = "anxiety"
label = "low"
raise_at = 0.5
raise_for = "1m"
clear_below = 0.5
clear_for = "1m"
"""


@pytest.mark.slow
def test_run_into_sqlite_and_mqtt_with_alerts(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    source = tmp_path / "sim"
    run_cli("simulate", str(source), "--minutes", "8", "--seed", "9041", "--subjects", "1", "--mark-rest", check=True)
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    pw = tmp_path / "mqtt-password"
    pw.write_text(mosquitto.password)
    db = tmp_path / "run.db"
    proc = run_cli(
        "run",
        str(source),
        "--sink",
        f"sqlite:{db}",
        "--sink",
        mosquitto.sink(),
        "--alerts",
        str(rules),
        "--mqtt-password-file",
        str(pw),
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "none lost" in proc.stderr.splitlines()[-1]

    seen = mosquitto.retained("m3sense/#", "homeassistant/#")
    stored = read_affect(db)
    last = {}
    for r in stored:
        last[(r.device, r.task)] = r
    assert {k[1] for k in last} == {"stress", "anxiety", "emotion"}
    for (device, task), r in last.items():
        state = json.loads(seen[f"m3sense/{device}/{task}/state"])
        assert (state["t"], state["label"], state["confidence"], state["status"]) == (
            r.time_s,
            r.label,
            r.confidence,
            r.status,
        )

    configs = [json.loads(p) for t, p in seen.items() if t.startswith("homeassistant/")]
    ids = {c["unique_id"] for c in configs}
    assert (
        len(ids) == len(configs)
        and {f"m3sense_sim01_{k}" for k in ("stress", "anxiety_confidence", "eda", "skin_temperature", "heart_rate")}
        <= ids
    )
    assert {c["device"]["identifiers"][0] for c in configs} == {"m3sense_sim01"}
    assert seen["m3sense/status"] == "offline" and seen["m3sense/sim01/availability"] == "offline"

    events = read_alerts(db)
    again = sorted(AlertEngine(load_rules(rules)).push(stored), key=lambda e: (e.time_s, e.device, e.rule))
    assert events == again and any(e.event == "raise" for e in events)
    published = json.loads(seen["m3sense/sim01/alert"])
    assert (published["t"], published["rule"], published["event"]) == (
        events[-1].time_s,
        events[-1].rule,
        events[-1].event,
    )
