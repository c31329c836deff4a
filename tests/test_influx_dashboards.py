"""The Grafana provisioning in deploy/: the dashboard is what ``deploy/grafana/dashboard.py``
writes, its structure holds, and every query (panels, variables, annotations), with Grafana's
macros filled in as Grafana fills them, runs against a real InfluxDB holding stored pipeline
output and returns the series the panel is meant to show. Grafana itself cannot run here
(not in Debian, no Docker)."""

from __future__ import annotations

import asyncio
import json
import re
import runpy
from pathlib import Path

import numpy as np
import pytest

from bus import Message
from storage import InfluxSink, RecordBuilder
from storage.alerts import AlertEngine, rule_from_mapping
from storage.influx import (
    AFFECT_MEASUREMENT,
    ALERT_MEASUREMENT,
    PHYSIO_MEASUREMENT,
    STATUS_MEASUREMENT,
)
from storage.physio import SIGNALS
from storage.records import CLASSES
from storage.states import window_state
from tests.conftest import REPO
from tests.servers import (
    NEEDS_INFLUXD,
    InfluxServer,
    V2WriteProxy,
    affect_meta,
    influx_proxy,
    influx_target,
    influxd,
    series_values,
)
from tests.test_storage_records import T0, pulse_wave

yaml = pytest.importorskip("yaml")

DEPLOY = REPO / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "affect.json"
__all__ = ["influx_proxy", "influxd"]

#: every name a query may mention: measurements, tags, fields (storage's schema)
SCHEMA_NAMES = {
    AFFECT_MEASUREMENT,
    PHYSIO_MEASUREMENT,
    STATUS_MEASUREMENT,
    ALERT_MEASUREMENT,
    *SIGNALS,
    "device",
    "task",
    "source",
    "model",
    "event",
    "rule",
    "text",
    "label",
    "state",
    "confidence",
    "status",
    "off_wrist",
    "motion",
    "missing_fraction",
    "t_start_s",
    "true_label",
    "p_baseline",
    "p_stress",
    "p_amusement",
    "p_low",
    "p_high",
    "value",
    "detail",
}
#: what each window of the session is (window end -> stress state); the other tasks follow the status
WINDOWS = {
    T0 + 20: "calibrating",
    T0 + 30: "baseline",
    T0 + 40: "uncertain",
    T0 + 50: "off_wrist",
    T0 + 60: "stress",
    T0 + 70: "low_quality",
    T0 + 80: "stress",
}
SECONDS = 80
DEVICES = {"dev1": ("replay", 66.0), "dev2": ("live", 90.0)}  # device: (source, heart rate)
RULE = rule_from_mapping(
    {
        "name": "stress",
        "task": "stress",
        "label": "stress",
        "raise_at": 0.7,
        "raise_for": "20s",
        "clear_below": 0.5,
        "clear_for": "20s",
        "cooldown": "30m",
        "max_gap": "1m",
    }
)


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def targets() -> list[tuple[dict, dict]]:
    return [(p, t) for p in dashboard()["panels"] for t in p.get("targets", [])]


def annotation_queries() -> list[dict]:
    return [a for a in dashboard()["annotations"]["list"] if "query" in a]


def test_dashboard_is_what_the_code_writes() -> None:
    code = runpy.run_path(str(DEPLOY / "grafana" / "dashboard.py"))
    assert DASHBOARD.read_text() == code["render"](), "run: python deploy/grafana/dashboard.py > " + str(DASHBOARD)


def test_dashboard_structure() -> None:
    """A structural schema: what Grafana needs to load it, and what makes it honest."""
    d = dashboard()
    assert set(d) >= {"uid", "title", "panels", "templating", "annotations", "schemaVersion", "time"}
    cells: set[tuple[int, int]] = set()
    for p in d["panels"]:
        assert p["type"] in {"state-timeline", "timeseries", "table"} and p["title"]
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24 and g["h"] > 0
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"{p['title']} overlaps another panel"
        cells |= mine
        assert p["targets"] and all(re.fullmatch(r"[A-Z]", t["refId"]) for t in p["targets"])
        custom = p["fieldConfig"]["defaults"].get("custom", {})
        if p["type"] != "table":  # a gap is drawn as a gap: never bridged, and a long silence inserts a break
            assert custom["spanNulls"] is False and custom["insertNulls"] > 0
        if p["type"] == "state-timeline":
            task = p["title"].split(":")[0].lower()
            (mapping,) = p["fieldConfig"]["defaults"]["mappings"]
            # every state the store can write for this task has its own colour and text
            states = set(CLASSES[task]) | {
                window_state(None, s, w)
                for s in ("ok", "low_quality", "calibrating", "uncertain")
                for w in (True, False)
            }
            assert states <= set(mapping["options"]), states - set(mapping["options"])
            colours = [o["color"] for o in mapping["options"].values()]
            assert len(colours) == len(set(colours))
            assert any('"state"' in t["query"] for t in p["targets"])
    for a in annotation_queries():
        assert a["enable"] and a["textColumn"] and "$timeFilter" in a["query"]
    names = {a["name"] for a in d["annotations"]["list"]}
    assert {"Alerts", "Gaps and wear"} <= names
    titles = {p["title"] for p in d["panels"]}
    assert {"Confidence", "Battery", "Alerts"} <= titles and any(t.startswith("Gaps") for t in titles)


def test_provisioning_files_fit_together() -> None:
    datasources = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/influxdb.yaml").read_text())
    providers = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/m3sense.yaml").read_text())
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert datasources["apiVersion"] == 1 and providers["apiVersion"] == 1
    (ds,) = datasources["datasources"]
    assert ds["type"] == "influxdb" and "${INFLUX_READ_TOKEN}" in ds["secureJsonData"]["httpHeaderValue1"]
    # the datasource points at the compose service and database the store writes to
    assert ds["url"] == "http://influxdb:8086" and "influxdb" in compose["services"]
    store = compose["services"]["store"]["command"]
    influx_sinks = [store[i + 1] for i, a in enumerate(store) if a == "--sink" and store[i + 1].startswith("influx")]
    assert [influx_target(s).database for s in influx_sinks] == [ds["jsonData"]["dbName"]]
    assert not any("TOKEN" in str(arg) and "$" not in str(arg) for arg in store)
    # the dashboards folder is mounted where the provider looks
    (provider,) = providers["providers"]
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in mounts

    d = dashboard()
    assert re.fullmatch(r"[A-Za-z0-9_-]{8,40}", d["uid"]) and d["id"] is None
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for panel, target in targets():
        assert panel["datasource"]["uid"] == target["datasource"]["uid"] == ds["uid"]
        assert "$timeFilter" in target["query"] and target["rawQuery"] is True
    for panel in d["panels"]:
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs))
    for var in d["templating"]["list"]:
        assert var["datasource"]["uid"] == ds["uid"]
    for a in annotation_queries():
        assert a["datasource"]["uid"] == ds["uid"]


def test_queries_name_only_what_storage_writes() -> None:
    queries = (
        [t["query"] for _, t in targets()]
        + [v["query"] for v in dashboard()["templating"]["list"]]
        + [a["query"] for a in annotation_queries()]
    )
    for q in queries:
        names = set(re.findall(r'"([^"]+)"', re.sub(r'AS "[^"]+"', "", q)))
        assert names <= SCHEMA_NAMES, (q, names - SCHEMA_NAMES)


def grafana_interpolate(
    query: str, *, start_s: float, end_s: float, interval: str, variables: dict[str, list[str]]
) -> str:
    """What Grafana sends for a raw InfluxQL query: ``$timeFilter`` as an epoch-ms range,
    ``$__interval`` as a duration, and a multi-value variable inside a regex as ``(a|b)``."""
    q = query.replace("$timeFilter", f"time >= {int(start_s * 1000)}ms and time <= {int(end_s * 1000)}ms")
    q = q.replace("$__interval", interval)
    for name, values in variables.items():
        q = q.replace(f"${name}", "(" + "|".join(re.escape(v) for v in values) + ")")
    assert not re.search(r"\$[A-Za-z_{]", q), q  # every macro and variable filled in
    return q


def window_meta(t_end: float, source: str) -> dict:
    """The inference node's message for one window of :data:`WINDOWS`."""
    state = WINDOWS[t_end]
    label = state if state in CLASSES["stress"] else "stress"
    meta = affect_meta(
        t_end,
        source=source,
        low_quality=state in ("off_wrist", "low_quality"),
        labels={"stress": label},
        truth={"stress": label, "anxiety": "high", "emotion": "low"},
    )
    if state == "low_quality":  # mostly missing, on the wrist
        meta["quality"].update(off_wrist=False, missing_fraction=0.8)
    for result in meta["tasks"].values():
        if state in ("calibrating", "uncertain"):
            result.update(label=None, status=state, confidence=None if state == "calibrating" else 0.4)
    return meta


def session_messages(device: str, source: str, bpm: float) -> list[Message]:
    """What reaches the store for one device: status (start, battery, a sample gap, end),
    raw EDA/TEMP/HR/BVP, and an affect message per 10 s as :data:`WINDOWS` says."""

    def msg(kind: str, modality: str, t0: float, fs: float, samples=None, meta=None) -> Message:
        return Message(
            kind=kind,
            device=device,
            modality=modality,
            seq=0,
            t0_s=t0,
            fs_hz=fs,
            samples=np.zeros(0) if samples is None else np.asarray(samples, dtype=np.float64),
            meta=meta or {},
        )

    out = [
        msg("status", "status", T0, 0, meta={"event": "start", "source": source}),
        msg("status", "status", T0 + 1, 0, meta={"event": "battery", "battery": 0.8}),
        msg(
            "status",
            "status",
            T0 + 45,
            0,
            meta={"event": "gap", "stream": "bvp", "missing_samples": 160, "duration_s": 2.5, "cause": "lost_packets"},
        ),
        msg("status", "status", T0 + SECONDS - 1, 0, meta={"event": "battery", "battery": 0.75}),
    ]
    bvp = pulse_wave(bpm, SECONDS, seed=len(device))
    for k in range(SECONDS):
        out += [
            msg("raw", "eda", T0 + k, 4.0, np.full(4, 1.0 + k / 100)),
            msg("raw", "temp", T0 + k, 4.0, np.full(4, 32.5)),
            msg("raw", "hr", T0 + k, 1.0, [bpm]),
            msg("raw", "bvp", T0 + k, 64.0, bvp[64 * k : 64 * (k + 1)]),
        ]
        t_end = T0 + k + 1
        if t_end in WINDOWS:
            out.append(msg("affect", "affect", t_end, 0, meta=window_meta(t_end, source)))
    out.append(msg("status", "status", T0 + SECONDS, 0, meta={"event": "end"}))
    return out


@NEEDS_INFLUXD
def test_every_dashboard_query_returns_its_series(
    influxd: InfluxServer, influx_proxy: V2WriteProxy, tmp_path: Path
) -> None:
    async def store() -> None:
        async with InfluxSink(influx_target(influx_proxy.sink()), spool_dir=tmp_path / "spool") as sink:
            builder, alerts = RecordBuilder(), AlertEngine([RULE])
            for device, (source, bpm) in DEVICES.items():
                for m in session_messages(device, source, bpm):
                    records = builder.push(m)
                    if m.kind == "affect" and m.t0_s == T0 + 60:  # three messages of affect/ lost on the bus
                        records.append(builder.bus_gap(m, 3))
                    await sink.write([*records, *alerts.push(records)])
            await sink.write(builder.flush())
            await sink.flush()
        assert sink.counters.written > 0 and sink.counters.pending == sink.counters.rejected == 0

    asyncio.run(store())
    variables = {"device": sorted(DEVICES), "source": ["live", "replay"]}

    def run(query: str) -> list[dict]:
        q = grafana_interpolate(query, start_s=T0 - 60, end_s=T0 + 120, interval="10s", variables=variables)
        return series_values(influxd.query(q))

    for var in dashboard()["templating"]["list"]:
        offered = {r["value"] for r in series_values(influxd.query(var["query"]))}
        assert offered == set(variables[var["name"]])

    ends = sorted(WINDOWS)
    for panel, target in targets():
        rows = run(target["query"])
        title = panel["title"]
        assert rows, f"{title} / {target['refId']} returned nothing"
        assert {r.get("device") for r in rows} == set(DEVICES), title  # one series per device
        values = [v for r in rows for k, v in r.items() if k not in ("time", "device") and v is not None]
        assert values, title
        if panel["type"] == "state-timeline" and target["refId"] == "A":
            by_device = {
                d: [r["predicted"] for r in sorted(rows, key=lambda r: r["time"]) if r["device"] == d] for d in DEVICES
            }
            if title.startswith("Stress"):
                # one state per window: no window is missing, none borrows the label before it
                assert by_device == {d: [WINDOWS[t] for t in ends] for d in DEVICES}
            else:  # the session's anxiety and emotion labels are high and low throughout
                label = {"Anxiety": "high", "Emotion": "low"}[title.split(":")[0]]
                expected = [label if WINDOWS[t] in CLASSES["stress"] else WINDOWS[t] for t in ends]
                assert by_device == {d: expected for d in DEVICES}
        if panel["type"] == "state-timeline" and target["refId"] == "B":
            assert len(rows) == 2 * len(ends) and all(r["true"] in ("baseline", "stress", "high", "low") for r in rows)
        if "probabilities" in title or title == "Confidence":
            assert all(0.0 <= v <= 1.0 for v in values)
        if title == "Confidence":  # only windows with a label or an uncertain one carry a confidence
            assert len(rows) == len(DEVICES) * 4
        if title == "Windows without a label":
            assert sum(v for r in rows for k, v in r.items() if k not in ("time", "device")) == len(DEVICES)
        if title == "Heart rate" and target["refId"] == "A":
            for device, (_, bpm) in DEVICES.items():
                mine = [r["from BVP"] for r in rows if r["device"] == device]
                assert mine and np.median(mine) == pytest.approx(bpm, abs=3)
        if title == "Heart rate" and target["refId"] == "B":
            assert {r["device"]: r["from device"] for r in rows} == {d: bpm for d, (_, bpm) in DEVICES.items()}
        if title == "Battery":
            assert sorted(r["battery"] for r in rows) == [0.75, 0.75, 0.8, 0.8]
        if title.startswith("Gaps"):
            key = "wristband gap (s)" if target["refId"] == "A" else "bus messages lost"
            assert sorted(r[key] for r in rows) == ([2.5, 2.5] if target["refId"] == "A" else [3.0, 3.0])
        if title == "Device status events":
            assert sorted(r["event"] for r in rows) == sorted(
                ["start", "battery", "gap", "bus_gap", "battery", "end"] * len(DEVICES)
            )
        if title == "Alerts":  # the rule raised once per device, at the end of the window that decided it
            assert [(r["device"], r["event"], r["time"]) for r in sorted(rows, key=lambda r: r["device"])] == [
                (d, "raise", int((T0 + 80) * 1e6)) for d in sorted(DEVICES)
            ]

    for a in annotation_queries():
        rows = run(a["query"])
        assert rows and all(a["textColumn"] in r and a["titleColumn"] in r for r in rows), a["name"]
        if a["name"] == "Alerts":
            assert sorted((r.get("device"), r["event"], r["rule"]) for r in rows) == [(None, "raise", "stress")] * len(
                DEVICES
            )
        else:
            assert sorted(r["event"] for r in rows) == sorted(["bus_gap", "gap"] * len(DEVICES))
