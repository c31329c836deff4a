"""Alerts end to end in ``m3sense store --alerts deploy/alerts.toml``: a session with a known
timeline goes over the bus into a store writing SQLite, InfluxDB and MQTT at once; the stress
rule raises and clears at the window ends the rule says, the events are stored in both
databases, listed by ``m3sense alerts`` and published on MQTT."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

from bus import Hub, Publisher
from storage.node import device_topics
from tests.conftest import REPO, Proc, run_cli
from tests.servers import InfluxServer, MosquittoServer

__all__ = ["influx_v1", "influxd", "mosquitto"]  # fixtures used below
from tests.servers import influx_v1, influxd, mosquitto

T0 = 1_700_000_000.0
STEP = 10.0
RULES = REPO / "deploy" / "alerts.toml"  # stress: >= 0.7 for 5 min raises, < 0.5 for 2 min clears, cooldown 30 min


def meta(t_end: float, p_stress: float | None, status: str = "ok") -> dict:
    """An affect message's meta: p(stress) as given (None: a window with no answer), anxiety calm."""
    label = None if p_stress is None or status != "ok" else ("stress" if p_stress >= 0.5 else "baseline")
    stress = {
        "label": label,
        "confidence": None if label is None or p_stress is None else max(p_stress, 1 - p_stress),
        "probs": {} if p_stress is None else {"baseline": 1 - p_stress, "stress": p_stress},
        "status": status,
    }
    anxiety = {"label": "low", "confidence": 0.8, "probs": {"low": 0.8, "high": 0.2}, "status": "ok"}
    return {
        "t_end": t_end,
        "t_start": t_end - 60,
        "model": "m3sense-test",
        "source": "replay",
        "quality": {"off_wrist": status == "low_quality", "motion": False, "missing_fraction": 0.0},
        "tasks": {"stress": stress, "anxiety": anxiety},
    }


#: (p_stress, status) per window, every 10 s from T0: 5 min of stress (with two low-quality
#: windows inside), 1 min between the thresholds, 10 low-quality windows with p = 0.1 (they
#: must not clear), then calm for 2 min, then stress again within the cooldown.
TIMELINE = (
    [(0.85, "ok")] * 10
    + [(0.9, "low_quality")] * 2
    + [(0.8, "ok")] * 19
    + [(0.6, "ok")] * 6
    + [(0.1, "low_quality")] * 4
    + [(0.3, "ok")] * 13
    + [(0.95, "ok")] * 40
)
RAISE_AT = T0 + 300.0  # window 30: the first window at 0 s, every usable one since >= 0.7
CLEAR_AT = T0 + 410.0 + 120.0  # calm from window 41 (410 s) on, the low-quality p = 0.1 before it not counted
# stress again from 540 s: 5 min of dwell is reached at 840 s but the cooldown holds it until 300 + 1800 s,
# after the end of this session (its last window ends at 930 s): no third event


def test_store_raises_and_clears_at_the_right_window_ends_in_every_sink(
    tmp_path: Path, bus_address: str, influx_v1: InfluxServer, mosquitto: MosquittoServer
) -> None:
    db = tmp_path / "alerts.db"
    pw = tmp_path / "mqtt-password"
    pw.write_text(mosquitto.password)
    with Hub(bus_address):
        store = Proc(
            [
                "store",
                "--bus",
                bus_address,
                "--sink",
                f"sqlite:{db}",
                "--sink",
                influx_v1.sink(),
                "--sink",
                mosquitto.sink(),
                "--mqtt-password-file",
                str(pw),
                "--alerts",
                str(RULES),
                "--json",
            ]
        )
        try:
            store.wait_for_stderr("store: SqliteSink(")

            async def publish() -> None:
                async with Publisher(bus_address) as pub:
                    assert await pub.wait_for_subscribers(device_topics("dev1"), 30) == []
                    for i, (p, status) in enumerate(TIMELINE):
                        t = T0 + STEP * i
                        await pub.publish("affect", "dev1", t0_s=t, fs_hz=0, meta=meta(t, p, status))

            asyncio.run(publish())
            store.popen.send_signal(signal.SIGTERM)  # drains what reached the socket, then flushes every sink
            out, err = store.popen.communicate(timeout=60)
        finally:
            store.stop()
    assert store.popen.returncode == 0, err
    report = json.loads(out.splitlines()[-1])
    assert report["alerts"] == {"raised": 1, "cleared": 1}
    assert [s["dropped"] + s["refused"] + s["spooled"] for s in report["sinks"]] == [0, 0, 0]
    assert "alerts: 1 raised, 1 cleared" in err.splitlines()[-1]

    expected = [(RAISE_AT, "raise"), (CLEAR_AT, "clear")]
    for sink in (f"sqlite:{db}", influx_v1.sink()):
        lines = run_cli("alerts", "--sink", sink, "--json", check=True).stdout.splitlines()
        events = [json.loads(line) for line in lines]
        assert [(e["t_s"], e["event"]) for e in events] == expected, sink
        assert all(e["device"] == "dev1" and e["task"] == "stress" and e["rule"] == "stress" for e in events)
        assert abs(events[0]["confidence"] - (0.85 * 10 + 0.8 * 19) / 29) < 1e-9  # mean over the usable dwell
        assert abs(events[1]["confidence"] - 0.3) < 1e-9
    text = run_cli("alerts", "--sink", f"sqlite:{db}", "--device", "dev1", check=True).stdout
    assert "raise" in text and "clear" in text

    published = json.loads(mosquitto.retained("m3sense/dev1/alert")["m3sense/dev1/alert"])
    assert (published["t"], published["event"], published["rule"]) == (CLEAR_AT, "clear", "stress")
