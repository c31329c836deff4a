"""simulate → hub + replay --speed max + tap --json --values, as separate processes:
the subscriber gets exactly the samples in the files."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from replay.chunks import recording_messages
from replay.e4csv import read_source
from tests.conftest import Proc, run_cli


def test_replayed_stream_equals_the_files(tmp_path: Path, bus_address: str, procs: list[Proc]) -> None:
    out = tmp_path / "sim"
    run_cli("simulate", str(out), "--minutes", "3", "--seed", "11", "--subjects", "2", check=True)
    recordings = read_source(out)  # what the files say
    expected_count = sum(1 for rec in recordings for _ in recording_messages(rec))

    hub = Proc(["hub", "--bus", bus_address])
    procs.append(hub)
    hub.wait_for_stderr("subscribers")
    tap_out = (tmp_path / "tap.jsonl").open("w")
    tap = Proc(
        ["tap", "--bus", bus_address, "--json", "--values", "--count", str(expected_count), "--idle-exit-s", "60"],
        stdout=tap_out,
    )
    procs.append(tap)
    replay = run_cli("replay", str(out), "--bus", bus_address, "--speed", "max", "--wait", "60", check=True)
    assert "2 device(s)" in replay.stderr
    assert tap.popen.wait(timeout=60) == 0
    tap_out.close()
    assert "missing 0, late 0, malformed 0" in tap.stderr.read()

    by_topic: dict[str, list[dict]] = defaultdict(list)
    for line in (tmp_path / "tap.jsonl").read_text().splitlines():
        rec = json.loads(line)
        by_topic[rec["topic"]].append(rec)
    assert sum(len(v) for v in by_topic.values()) == expected_count

    for rec in recordings:
        for modality, sig in rec.signals.items():
            msgs = by_topic[f"raw/{modality}/{rec.device}/"]
            assert [m["seq"] for m in msgs] == list(range(len(msgs)))
            values = np.concatenate(
                [np.asarray(m["values"], dtype=sig.values.dtype).reshape(-1, *sig.values.shape[1:]) for m in msgs]
            )
            np.testing.assert_array_equal(values, sig.values)  # exact: float64 text → JSON → float64
            assert msgs[0]["t0"] == sig.t0_s and msgs[0]["fs"] == sig.fs_hz
            last = msgs[-1]
            assert last["t0"] + (last["n"] - 1) / last["fs"] == sig.t0_s + (sig.n - 1) / sig.fs_hz
            # every chunk starts where the previous one ended: t0 = start + k / fs
            starts = np.array([m["t0"] for m in msgs])
            counts = np.cumsum([0] + [m["n"] for m in msgs[:-1]])
            np.testing.assert_allclose(starts, sig.t0_s + counts / sig.fs_hz, rtol=0, atol=1e-6)
        ibi = by_topic[f"raw/ibi/{rec.device}/"]
        np.testing.assert_array_equal([m["values"][0] for m in ibi], rec.ibi_s)
        labels = by_topic[f"label/{rec.device}/"]
        assert [(m["task"], m["label"], m["start_s"], m["end_s"]) for m in labels] == [
            (iv.task, iv.label, iv.start_s, iv.end_s) for iv in sorted(rec.labels, key=lambda iv: iv.start_s)
        ]
        status = by_topic[f"status/{rec.device}/"]
        assert [m["event"] for m in status] == ["start", "end"]
