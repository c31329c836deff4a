"""An LSL consumer in its own process, as LabRecorder would be: resolve streams by source id,
connect, say ``ready`` on stdout, read until each stream has the expected sample count (or
the deadline passes), then print one JSON object describing what arrived.

    python tests/lsl_inlet.py '{"m3sense/dev/EDA": 720, ...}' TIMEOUT_S
"""

from __future__ import annotations

import json
import math
import sys
import time

import numpy as np
import pylsl


def channels(info: pylsl.StreamInfo) -> tuple[list[str], list[str]]:
    labels, units = [], []
    ch = info.desc().child("channels").child("channel")
    while not ch.empty():
        labels.append(ch.child_value("label"))
        units.append(ch.child_value("unit"))
        ch = ch.next_sibling("channel")
    return labels, units


def main() -> None:
    expected: dict[str, int] = json.loads(sys.argv[1])
    deadline = time.monotonic() + float(sys.argv[2])
    inlets = {}
    for sid in expected:
        found = pylsl.resolve_byprop("source_id", sid, 1, max(0.1, deadline - time.monotonic()))
        if not found:
            print(json.dumps({"error": f"{sid} not found"}), flush=True)
            sys.exit(1)
        inlet = pylsl.StreamInlet(found[0], max_buflen=600, recover=False)
        inlet.open_stream(timeout=max(0.1, deadline - time.monotonic()))
        inlets[sid] = inlet
    print("ready", flush=True)

    got: dict[str, tuple[list, list]] = {sid: ([], []) for sid in expected}
    while time.monotonic() < deadline and any(len(got[s][1]) < n for s, n in expected.items()):
        idle = True
        for sid, inlet in inlets.items():
            values, stamps = inlet.pull_chunk(timeout=0.0, max_samples=4096)
            if stamps:
                idle = False
                got[sid][0].extend(values)
                got[sid][1].extend(stamps)
        if idle:
            time.sleep(0.02)

    out = {}
    for sid, inlet in inlets.items():
        info = inlet.info(timeout=5.0)
        labels, units = channels(info)
        offset = float(info.desc().child("m3sense").child_value("lsl_minus_unix_s"))
        values, stamps = got[sid]
        unix = (np.asarray(stamps) - offset).tolist()
        numeric = info.channel_format() != pylsl.cf_string
        out[sid] = {
            "name": info.name(),
            "type": info.type(),
            "nominal_srate": info.nominal_srate(),
            "channel_count": info.channel_count(),
            "labels": labels,
            "units": units,
            "device": info.desc().child("m3sense").child_value("device"),
            "manufacturer": info.desc().child("acquisition").child_value("manufacturer"),
            "n": len(stamps),
            "unix_s": unix,
            "sums": np.nansum(np.asarray(values, dtype=np.float64), axis=0).tolist() if numeric and values else None,
            "values": None if numeric else values,
            "numbers": (
                [[None if math.isnan(v) else v for v in row] for row in values]
                if numeric and len(values) < 50
                else None
            ),
        }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
