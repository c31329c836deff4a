"""The Grafana dashboard ``dashboards/affect.json``, as code.

    python deploy/grafana/dashboard.py > deploy/grafana/dashboards/affect.json

The JSON is checked in (Grafana provisions files, not Python) and the tests check that it
is exactly what this script writes, that its structure holds (ids, grid, datasources,
macros, one colour for every state the store writes) and that every query, annotations
included, returns its series from a real InfluxDB holding stored pipeline output.

Plain dicts, no SDK: the panels use a handful of options, spelled as Grafana 11 saves them.
"""

from __future__ import annotations

import json
import sys

DATASOURCE = {"type": "influxdb", "uid": "m3sense-influxql"}
FILTER = '"device" =~ /^$device$/ AND "source" =~ /^$source$/'
#: a gap between windows longer than this is drawn as "no data", never bridged by the state before it
GAP_MS = 30_000

TASK_CLASSES = {"stress": ("baseline", "amusement", "stress"), "anxiety": ("low", "high"), "emotion": ("low", "high")}
CLASS_COLOURS = {"baseline": "green", "amusement": "yellow", "stress": "red", "low": "green", "high": "orange"}
#: the states of a window without a label (storage.states.window_state), each drawn as its own
NO_LABEL_STATES = {
    "low_quality": ("low quality", "#8f8f8f"),
    "off_wrist": ("off wrist", "#4d4d4d"),
    "calibrating": ("calibrating", "blue"),
    "uncertain": ("uncertain", "purple"),
    "no_label": ("no label", "#b0b0b0"),
}


def target(ref: str, query: str, fmt: str = "time_series") -> dict:
    return {"refId": ref, "datasource": DATASOURCE, "query": query, "rawQuery": True, "resultFormat": fmt}


def legend(**extra) -> dict:
    return {
        "legend": {"showLegend": True, "displayMode": "list", "placement": "bottom"},
        "tooltip": {"mode": extra.pop("tooltip", "single"), "sort": "none"},
        **extra,
    }


def state_mappings(task: str) -> list[dict]:
    options = {c: {"color": CLASS_COLOURS[c], "index": i, "text": c} for i, c in enumerate(TASK_CLASSES[task])}
    for i, (state, (text, colour)) in enumerate(NO_LABEL_STATES.items(), start=len(options)):
        options[state] = {"color": colour, "index": i, "text": text}
    return [{"type": "value", "options": options}]


def state_panel(pid: int, task: str, y: int) -> dict:
    where = f"""WHERE $timeFilter AND "task" = '{task}' AND {FILTER} GROUP BY "device\""""
    return {
        "id": pid,
        "type": "state-timeline",
        "title": f"{task.capitalize()}: predicted and true",
        "description": (
            f"One band per device: the {task} state of each window (timestamp = window end): its label, "
            "or why it has none (low quality, off wrist, calibrating, uncertain), each in its own colour. "
            f"No window for more than {GAP_MS // 1000} s shows as empty (no data). "
            "The 'true' band is ground truth carried by replays."
        ),
        "datasource": DATASOURCE,
        "gridPos": {"x": 0, "y": y, "w": 24, "h": 6},
        "targets": [
            target("A", f'SELECT "state" AS "predicted" FROM "affect" {where}'),
            target("B", f'SELECT "true_label" AS "true" FROM "affect" {where}'),
        ],
        "fieldConfig": {
            "defaults": {
                "color": {"mode": "thresholds"},
                "mappings": state_mappings(task),
                "custom": {"insertNulls": GAP_MS, "spanNulls": False, "fillOpacity": 80, "lineWidth": 0},
            },
            "overrides": [],
        },
        "options": legend(mergeValues=True, showValue="auto", alignValue="left", rowHeight=0.8),
    }


def series_panel(
    pid: int,
    title: str,
    queries: list[str],
    grid: tuple[int, int, int, int],
    *,
    unit: str | None = None,
    lo: float | None = None,
    hi: float | None = None,
    description: str | None = None,
    bars: bool = False,
) -> dict:
    x, y, w, h = grid
    defaults: dict = {
        "custom": {
            "drawStyle": "bars" if bars else "line",
            "spanNulls": False,
            "insertNulls": GAP_MS,
            "fillOpacity": 60 if bars else 0,
        }
    }
    if unit:
        defaults["unit"] = unit
    if lo is not None:
        defaults["min"] = lo
    if hi is not None:
        defaults["max"] = hi
    panel = {
        "id": pid,
        "type": "timeseries",
        "title": title,
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": [target(chr(ord("A") + i), q) for i, q in enumerate(queries)],
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": legend(tooltip="multi"),
    }
    if description:
        panel["description"] = description
    return panel


def per_interval(select: str, measurement: str, extra: str = "", fill: str = "none") -> str:
    return (
        f'SELECT {select} FROM "{measurement}" WHERE $timeFilter{extra} AND {FILTER} '
        f'GROUP BY time($__interval), "device" fill({fill})'
    )


def task_is(task: str) -> str:
    return f""" AND "task" = '{task}'"""


def build() -> dict:
    panels = [state_panel(i + 1, task, 6 * i) for i, task in enumerate(TASK_CLASSES)]
    y = 18
    panels.append(
        series_panel(
            4,
            "Confidence",
            [per_interval(f'mean("confidence") AS "{t}"', "affect", task_is(t)) for t in TASK_CLASSES],
            (0, y, 12, 8),
            unit="percentunit",
            lo=0,
            hi=1,
            description="Per task: the probability that the window's label is right (temperature-scaled). "
            "Windows without a label have none, so the line breaks there.",
        )
    )
    panels.append(
        series_panel(
            5,
            "Windows without a label",
            [
                per_interval(
                    f'count("state") AS "{s.replace("_", " ")}"',
                    "affect",
                    f"""{task_is("stress")} AND "state" = '{s}'""",
                )
                for s in ("low_quality", "off_wrist", "calibrating", "uncertain")
            ],
            (12, y, 12, 8),
            bars=True,
            description="Stress windows per interval that got no label, by reason (the other tasks share the quality "
            "reasons).",
        )
    )
    y += 8
    for pid, (task, classes) in enumerate(TASK_CLASSES.items(), start=6):
        select = ", ".join(f'mean("p_{c}") AS "{c}"' for c in classes)
        panels.append(
            series_panel(
                pid,
                f"{task.capitalize()} class probabilities",
                [per_interval(select, "affect", task_is(task))],
                (8 * (pid - 6), y, 8, 8),
                unit="percentunit",
                lo=0,
                hi=1,
            )
        )
    y += 8
    panels.append(
        series_panel(9, "EDA (1 Hz mean)", [per_interval('mean("eda_us") AS "eda"', "physio")], (0, y, 8, 8), unit="µS")
    )
    panels.append(
        series_panel(
            10,
            "Skin temperature (1 Hz mean)",
            [per_interval('mean("temp_c") AS "temp"', "physio")],
            (8, y, 8, 8),
            unit="celsius",
        )
    )
    panels.append(
        series_panel(
            11,
            "Heart rate",
            [
                per_interval('mean("hr_bpm") AS "from BVP"', "physio"),
                per_interval('mean("hr_device_bpm") AS "from device"', "physio"),
            ],
            (16, y, 8, 8),
            unit="bpm",
        )
    )
    y += 8
    panels.append(
        series_panel(
            12,
            "Signal quality per window",
            [per_interval('mean("missing_fraction") AS "missing fraction"', "affect", task_is("stress"))],
            (0, y, 8, 8),
            unit="percentunit",
            lo=0,
            hi=1,
        )
    )
    panels.append(
        series_panel(
            13,
            "Gaps: seconds lost at the wristband, messages lost on the bus",
            [
                per_interval('sum("value") AS "wristband gap (s)"', "device_status", """ AND "event" = 'gap'"""),
                per_interval('sum("value") AS "bus messages lost"', "device_status", """ AND "event" = 'bus_gap'"""),
            ],
            (8, y, 8, 8),
            bars=True,
            description="Sample gaps the ingest saw (lost BLE packets, in seconds of signal) and messages the store "
            "missed on the bus (sequence numbers that jumped). Both also mark the timelines as annotations.",
        )
    )
    panels.append(
        series_panel(
            14,
            "Battery",
            [per_interval('last("value") AS "battery"', "device_status", """ AND "event" = 'battery'""")],
            (16, y, 8, 8),
            unit="percentunit",
            lo=0,
            hi=1,
        )
    )
    y += 8
    panels.append(
        {
            "id": 15,
            "type": "table",
            "title": "Device status events",
            "datasource": DATASOURCE,
            "gridPos": {"x": 0, "y": y, "w": 12, "h": 8},
            "targets": [
                target(
                    "A",
                    'SELECT "event", "value", "detail" FROM "device_status" '
                    f'WHERE $timeFilter AND {FILTER} GROUP BY "device"',
                    "table",
                )
            ],
            "fieldConfig": {"defaults": {}, "overrides": []},
            "options": {"showHeader": True, "sortBy": [{"displayName": "Time", "desc": True}]},
        }
    )
    panels.append(
        {
            "id": 16,
            "type": "table",
            "title": "Alerts",
            "datasource": DATASOURCE,
            "gridPos": {"x": 12, "y": y, "w": 12, "h": 8},
            "targets": [
                target(
                    "A",
                    'SELECT "event", "task", "rule", "confidence", "text" FROM "alerts" '
                    'WHERE $timeFilter AND "device" =~ /^$device$/ GROUP BY "device"',
                    "table",
                )
            ],
            "fieldConfig": {"defaults": {}, "overrides": []},
            "options": {"showHeader": True, "sortBy": [{"displayName": "Time", "desc": True}]},
        }
    )

    def variable(name: str, label: str) -> dict:
        q = f'SHOW TAG VALUES FROM "affect" WITH KEY = "{name}"'
        return {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": DATASOURCE,
            "query": q,
            "definition": q,
            "refresh": 2,
            "includeAll": True,
            "multi": True,
            "current": {"text": "All", "value": "$__all"},
            "sort": 1,
        }

    annotations = [
        {
            "name": "Annotations & Alerts",
            "builtIn": 1,
            "type": "dashboard",
            "enable": True,
            "hide": True,
            "iconColor": "rgba(0, 211, 255, 1)",
            "datasource": {"type": "grafana", "uid": "-- Grafana --"},
        },
        {
            "name": "Alerts",
            "enable": True,
            "iconColor": "red",
            "datasource": DATASOURCE,
            "query": 'SELECT "text", "event", "task", "rule", "confidence" FROM "alerts" WHERE $timeFilter '
            'AND "device" =~ /^$device$/',
            "titleColumn": "event",
            "textColumn": "text",
            "tagsColumn": "task,rule",
        },
        {
            "name": "Gaps and wear",
            "enable": True,
            "iconColor": "orange",
            "datasource": DATASOURCE,
            "query": 'SELECT "detail", "event" FROM "device_status" WHERE $timeFilter AND "event" =~ '
            f"/^(gap|bus_gap|on_wrist|disconnected|connected)$/ AND {FILTER}",
            "titleColumn": "event",
            "textColumn": "detail",
            "tagsColumn": "event",
        },
    ]
    return {
        "uid": "m3sense-affect",
        "title": "m3sense: affect timeline",
        "id": None,
        "description": "Stress, anxiety and emotion per 20 s window from the E4 wristband, each window's state "
        "(label, or low quality / off wrist / calibrating / uncertain), confidence, alerts, gaps, "
        "1 Hz physiology, battery and device status; ground truth for replays.",
        "tags": ["m3sense", "affect"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 2,
        "editable": False,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [variable("device", "Device"), variable("source", "Source")]},
        "annotations": {"list": annotations},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
