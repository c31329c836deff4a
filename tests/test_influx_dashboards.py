"""The Grafana provisioning in deploy/: every dashboard query, with Grafana's macros filled in
as Grafana fills them, runs against a real InfluxDB holding stored data and returns the
series the panel is meant to show. Grafana itself cannot run here (not in Debian, no Docker)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import numpy as np
import pytest

from bus import Message
from storage import InfluxSink, RecordBuilder, parse_sink
from storage.influx import AFFECT_MEASUREMENT, PHYSIO_MEASUREMENT, STATUS_MEASUREMENT
from storage.physio import SIGNALS
from tests.conftest import REPO
from tests.servers import NEEDS_INFLUXD, InfluxServer, V2WriteProxy, affect_meta, influx_proxy, influxd, series_values
from tests.test_storage_records import T0, pulse_wave

yaml = pytest.importorskip("yaml")

DEPLOY = REPO / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "affect.json"
__all__ = ["influx_proxy", "influxd"]

#: every name a query may mention: measurements, tags, fields (storage's schema)
SCHEMA_NAMES = {
    AFFECT_MEASUREMENT, PHYSIO_MEASUREMENT, STATUS_MEASUREMENT, *SIGNALS,
    "device", "task", "source", "model", "event",
    "label", "confidence", "status", "off_wrist", "motion", "missing_fraction", "t_start_s", "true_label",
    "p_baseline", "p_stress", "p_amusement", "p_low", "p_high", "value", "detail",
}
LOW_QUALITY_ENDS = {T0 + 50}
DEVICES = {"dev1": ("replay", 66.0), "dev2": ("live", 90.0)}  # device: (source, heart rate)


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def targets() -> list[tuple[dict, dict]]:
    return [(p, t) for p in dashboard()["panels"] for t in p.get("targets", [])]


def test_provisioning_files_fit_together() -> None:
    datasources = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/influxdb.yaml").read_text())
    providers = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/m3sense.yaml").read_text())
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert datasources["apiVersion"] == 1 and providers["apiVersion"] == 1
    (ds,) = datasources["datasources"]
    assert ds["type"] == "influxdb" and "${INFLUX_READ_TOKEN}" in ds["secureJsonData"]["httpHeaderValue1"]
    # the datasource points at the compose service and database the store writes to
    assert ds["url"] == "http://influxdb:8086" and "influxdb" in compose["services"]
    store_sink = compose["services"]["store"]["command"][compose["services"]["store"]["command"].index("--sink") + 1]
    assert parse_sink(store_sink).database == ds["jsonData"]["dbName"]
    assert not any("TOKEN" in str(arg) and "$" not in str(arg) for arg in compose["services"]["store"]["command"])
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


def test_queries_name_only_what_storage_writes() -> None:
    queries = [t["query"] for _, t in targets()] + [v["query"] for v in dashboard()["templating"]["list"]]
    for q in queries:
        names = set(re.findall(r'"([^"]+)"', re.sub(r'AS "[^"]+"', "", q)))
        assert names <= SCHEMA_NAMES, (q, names - SCHEMA_NAMES)


def grafana_interpolate(query: str, *, start_s: float, end_s: float, interval: str, variables: dict[str, list[str]]) -> str:
    """What Grafana sends for a raw InfluxQL query: ``$timeFilter`` as an epoch-ms range,
    ``$__interval`` as a duration, and a multi-value variable inside a regex as ``(a|b)``."""
    q = query.replace("$timeFilter", f"time >= {int(start_s * 1000)}ms and time <= {int(end_s * 1000)}ms")
    q = q.replace("$__interval", interval)
    for name, values in variables.items():
        q = q.replace(f"${name}", "(" + "|".join(re.escape(v) for v in values) + ")")
    assert not re.search(r"\$[A-Za-z_{]", q), q  # every macro and variable filled in
    return q


def session_messages(device: str, source: str, bpm: float, seconds: int = 60) -> list[Message]:
    """What reaches the store for one device: status, raw EDA/TEMP/HR/BVP, affect per 10 s."""
    def msg(kind: str, modality: str, t0: float, fs: float, samples=None, meta=None) -> Message:
        return Message(kind=kind, device=device, modality=modality, seq=0, t0_s=t0, fs_hz=fs,
                       samples=np.zeros(0) if samples is None else np.asarray(samples, dtype=np.float64),
                       meta=meta or {})

    out = [msg("status", "status", T0, 0, meta={"event": "start", "source": source})]
    bvp = pulse_wave(bpm, seconds, seed=len(device))
    for k in range(seconds):
        out += [msg("raw", "eda", T0 + k, 4.0, np.full(4, 1.0 + k / 100)),
                msg("raw", "temp", T0 + k, 4.0, np.full(4, 32.5)),
                msg("raw", "hr", T0 + k, 1.0, [bpm]),
                msg("raw", "bvp", T0 + k, 64.0, bvp[64 * k: 64 * (k + 1)])]
        t_end = T0 + k + 1
        if t_end >= T0 + 20 and (t_end - T0) % 10 == 0:
            out.append(msg("affect", "affect", t_end, 0, meta=affect_meta(
                t_end, source=source, low_quality=t_end in LOW_QUALITY_ENDS,
                labels={"stress": "baseline" if t_end < T0 + 40 else "stress"},
                truth={"stress": "baseline" if t_end < T0 + 40 else "stress", "anxiety": "high", "emotion": "low"})))
    out.append(msg("status", "status", T0 + seconds, 0, meta={"event": "end"}))
    return out


@NEEDS_INFLUXD
def test_every_dashboard_query_returns_its_series(influxd: InfluxServer, influx_proxy: V2WriteProxy,
                                                  tmp_path: Path) -> None:
    async def store() -> None:
        async with InfluxSink(parse_sink(influx_proxy.sink()), spool_dir=tmp_path / "spool") as sink:
            builder = RecordBuilder()
            for device, (source, bpm) in DEVICES.items():
                for m in session_messages(device, source, bpm):
                    await sink.write(builder.push(m))
            await sink.write(builder.flush())
            await sink.flush()
        assert sink.counters.written > 0 and sink.counters.pending == sink.counters.rejected == 0

    asyncio.run(store())
    variables = {"device": sorted(DEVICES), "source": ["live", "replay"]}

    def run(query: str) -> list[dict]:
        q = grafana_interpolate(query, start_s=T0 - 60, end_s=T0 + 120, interval="10s", variables=variables)
        return series_values(influxd.query(q))

    for var in dashboard()["templating"]["list"]:
        values = {r["value"] for r in series_values(influxd.query(var["query"]))}
        assert values == set(variables[var["name"]])

    ends = [T0 + s for s in (20, 30, 40, 50, 60)]
    for panel, target in targets():
        rows = run(target["query"])
        assert rows, f"{panel['title']} / {target['refId']} returned nothing"
        assert {r.get("device") for r in rows} == set(DEVICES), panel["title"]  # one series per device
        values = [v for r in rows for k, v in r.items() if k not in ("time", "device") and v is not None]
        assert values, panel["title"]
        if panel["type"] == "state-timeline" and target["refId"] == "A":
            by_device = {d: [r["predicted"] for r in sorted(rows, key=lambda r: r["time"]) if r["device"] == d]
                         for d in DEVICES}
            if panel["title"].startswith("Stress"):
                # raw points: the labels written, one per window; the low-quality window has none
                expected = ["baseline" if t < T0 + 40 else "stress" for t in ends if t not in LOW_QUALITY_ENDS]
                assert by_device == {d: expected for d in DEVICES}
            else:
                assert all(len(v) == len(ends) - len(LOW_QUALITY_ENDS) for v in by_device.values())
        if panel["type"] == "state-timeline" and target["refId"] == "B":
            assert len(rows) == 2 * len(ends) and all(r["true"] in ("baseline", "stress", "high", "low") for r in rows)
        if "probabilities" in panel["title"]:
            assert all(0.0 <= v <= 1.0 for v in values)
        if panel["title"] == "Heart rate":
            for device, (_, bpm) in DEVICES.items():
                mine = [r for r in rows if r["device"] == device and r.get("from BVP") is not None]
                if target["refId"] == "A":  # BVP beats, once the detector has 10 s of beats
                    assert mine and np.median([r["from BVP"] for r in mine]) == pytest.approx(bpm, abs=3)
                else:
                    assert {r["device"] for r in rows if r["device"] == device} and all(
                        r["device"] == bpm for r in rows if r["device"] == device and False) is True
        if target["query"].startswith('SELECT count("status") AS "low-quality windows"'):
            assert sum(r["low-quality windows"] for r in rows) == len(DEVICES) * len(LOW_QUALITY_ENDS)
        if panel["type"] == "table":
            assert sorted(r["event"] for r in rows) == ["end", "end", "start", "start"]
