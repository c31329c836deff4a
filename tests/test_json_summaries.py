"""The ``--json`` end summaries of ``hub``, ``tap`` (``--summary-json``), ``ble stream`` and
``simulate``: each command runs as a real process and each field is checked against something
known independently of the command's own counting (the files on disk, what a raw ZeroMQ
publisher sent, what a tap saw on the bus, the lines the tap printed)."""

from __future__ import annotations

import asyncio
import json
import signal
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import zmq

from bus import Hub, Publisher, free_bus_address
from bus.endpoints import hub_endpoints
from bus.message import Message
from tests.conftest import Proc, run_cli

COMMON = {"command", "exit_code", "reason"}


def _one_object(stdout: str) -> dict:
    (line,) = stdout.splitlines()  # one object, nothing else on stdout
    return json.loads(line)


def test_simulate_json_says_what_it_wrote(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    proc = run_cli(
        "simulate", str(out), "--minutes", "0.5", "--seed", "3", "--subjects", "2", "--labels", "stress", "--json"
    )
    assert proc.returncode == 0, proc.stderr
    report = _one_object(proc.stdout)
    assert set(report) == COMMON | {"out", "subjects", "minutes", "seed", "labels", "faults", "recordings"}
    assert (report["command"], report["exit_code"], report["reason"]) == ("simulate", 0, "done")
    assert report["out"] == str(out) and report["minutes"] == 0.5 and report["seed"] == 3
    assert report["labels"] == "stress" and report["faults"] is True
    on_disk = sorted(p for p in out.iterdir() if p.is_dir())
    assert report["subjects"] == len(on_disk) == 2
    assert [r["folder"] for r in report["recordings"]] == [str(p) for p in on_disk]
    assert proc.stderr.splitlines() == [str(p) for p in on_disk]  # the folders' lines moved to stderr
    for rec, folder in zip(report["recordings"], on_disk, strict=True):
        assert rec["device"] == folder.name
        assert rec["files"] == sorted(p.name for p in folder.iterdir())
        assert {"EDA.csv", "BVP.csv", "ACC.csv", "TEMP.csv", "IBI.csv", "labels.csv"} <= set(rec["files"])
        eda = (folder / "EDA.csv").read_text().splitlines()  # start, rate, then one row per sample
        assert rec["recorded_s"] == pytest.approx((len(eda) - 2) / float(eda[1]), abs=0.5)
        assert rec["recorded_s"] == pytest.approx(30, abs=1)
        label_rows = (folder / "labels.csv").read_text().splitlines()[1:]
        assert rec["label_intervals"] == len(label_rows) > 0
        assert {row.split(",")[2] for row in label_rows} == {"stress"}


def test_simulate_without_json_keeps_the_folders_on_stdout(tmp_path: Path) -> None:
    proc = run_cli("simulate", str(tmp_path / "s"), "--minutes", "0.5", "--seed", "1", check=True)
    assert proc.stdout.splitlines() == [str(tmp_path / "s" / "sim01")]


def test_hub_json_counts_what_publishers_sent_through_it() -> None:
    """A raw ZeroMQ publisher sends known frames once a subscriber's subscription has reached it:
    the hub's frames and bytes are exactly those."""
    bus = free_bus_address()
    hub = Proc(["hub", "--bus", bus, "--json"])
    try:
        hub.wait_for_stderr("hub: publishers connect")
        ep = hub_endpoints(bus)
        ctx = zmq.Context()
        pub, sub = ctx.socket(zmq.XPUB), ctx.socket(zmq.SUB)
        try:
            pub.connect(ep.publishers)
            sub.connect(ep.subscribers)
            sub.setsockopt(zmq.SUBSCRIBE, b"t/")
            assert pub.poll(10_000), "the subscription never reached the publisher"
            assert pub.recv() == b"\x01t/"
            messages = [[b"t/a", b"x" * (10 * i), struct.pack("<d", i)] for i in range(7)]
            for m in messages:
                pub.send_multipart(m)
            for m in messages:
                assert sub.poll(10_000) and sub.recv_multipart() == m
        finally:
            pub.close(linger=0)
            sub.close(linger=0)
            ctx.term()
        hub.popen.send_signal(signal.SIGTERM)
        out, err = hub.popen.communicate(timeout=30)
    finally:
        hub.stop()
    assert hub.popen.returncode == 0, err
    report = _one_object(out)
    assert set(report) == COMMON | {"frames", "bytes", "uptime_s", "refused_unknown_keys", "refused_without_curve"}
    assert (report["command"], report["exit_code"], report["reason"]) == ("hub", 0, "done")
    assert report["frames"] == sum(len(m) for m in messages) == 21
    assert report["bytes"] == sum(len(f) for m in messages for f in m)
    assert report["uptime_s"] > 0
    assert report["refused_unknown_keys"] is None and report["refused_without_curve"] is None  # no keys
    assert f"hub: forwarded {report['frames']} frames, {report['bytes']} bytes" in err


def test_hub_json_after_ctrl_c_says_so() -> None:
    hub = Proc(["hub", "--bus", free_bus_address(), "--json"])
    try:
        hub.wait_for_stderr("hub: publishers connect")
        hub.popen.send_signal(signal.SIGINT)
        out, err = hub.popen.communicate(timeout=30)
    finally:
        hub.stop()
    assert hub.popen.returncode == 130, err
    report = _one_object(out)
    assert (report["exit_code"], report["reason"], report["frames"], report["bytes"]) == (
        130,
        "interrupted (Ctrl-C)",
        0,
        0,
    )


def _message(topic_device: str, seq: int) -> Message:
    return Message(
        kind="raw",
        device=topic_device,
        modality="eda",
        seq=seq,
        t0_s=1_700_000_000.0 + seq,
        fs_hz=4.0,
        samples=np.full(4, 0.5),
        meta={},
    )


def test_tap_summary_json_is_one_last_line_after_the_messages(hub: Hub) -> None:
    """Sequence numbers 0, 1, 2, 5, 6: five messages received and two missing. The message lines
    keep their form (no command field); the summary is the one line after them."""
    seqs = [0, 1, 2, 5, 6]
    tap_args = ["--json", "--summary-json", "--topic", "raw/eda/", "--count", "5", "--idle-exit-s", "30"]
    tap = Proc(["tap", "--bus", hub.address, *tap_args])
    try:
        tap.wait_for_stderr("tap: subscribed")

        async def publish() -> None:
            async with Publisher(hub.address) as pub:
                assert not await pub.wait_for_subscribers(["raw/eda/d1/"], 10)
                for seq in seqs:
                    await pub.send(_message("d1", seq))

        asyncio.run(publish())
        out, err = tap.popen.communicate(timeout=30)
    finally:
        tap.stop()
    assert tap.popen.returncode == 0, err
    *lines, last = [json.loads(line) for line in out.splitlines()]
    assert [m["seq"] for m in lines] == seqs and all("command" not in m and "topic" in m for m in lines)
    assert set(last) == COMMON | {"received", "missing", "late", "malformed"} and "topic" not in last
    assert (last["command"], last["exit_code"], last["reason"]) == ("tap", 0, "done")
    assert last["received"] == len(lines) == 5
    assert last["missing"] == 2 and last["late"] == 0 and last["malformed"] == 0
    assert "tap: received 5, missing 2, late 0, malformed 0" in err  # the text summary stays


def test_tap_json_alone_prints_only_message_lines(hub: Hub) -> None:
    """--json keeps its meaning: every stdout line is a message (scripts read them as such)."""
    tap = Proc(["tap", "--bus", hub.address, "--json", "--topic", "raw/eda/", "--count", "3", "--idle-exit-s", "10"])
    try:
        tap.wait_for_stderr("tap: subscribed")

        async def publish() -> None:
            async with Publisher(hub.address) as pub:
                assert not await pub.wait_for_subscribers(["raw/eda/d2/"], 10)
                for seq in range(3):
                    await pub.send(_message("d2", seq))

        asyncio.run(publish())
        out, err = tap.popen.communicate(timeout=30)
    finally:
        tap.stop()
    assert tap.popen.returncode == 0, err
    assert [json.loads(line)["topic"] for line in out.splitlines()] == ["raw/eda/d2/"] * 3


def test_ble_stream_json_says_what_it_published(hub: Hub, tmp_path: Path) -> None:
    """A virtual wristband that loses its link every 6 (virtual) seconds, streamed 10x faster than
    real time: the summary's samples, connects, disconnects, gaps and beats are what a tap saw on
    the bus. The stream starts first and waits for the tap (--wait-s), whose one subscription to
    everything covers every topic at once, so the tap misses nothing and its idle clock starts only
    when messages are about to flow."""
    ble = Proc(
        [
            *("ble", "stream", "--bus", hub.address, "--virtual", "1", "--minutes", "1", "--time-scale", "10"),
            *("--duration-s", "20", "--disconnect-every-s", "6", "--wait-s", "30", "--json"),
        ]
    )
    tap_file = tmp_path / "tap.jsonl"
    try:
        with tap_file.open("w") as fh:
            tap = Proc(["tap", "--bus", hub.address, "--json", "--idle-exit-s", "3"], stdout=fh)
            try:
                out, err = ble.popen.communicate(timeout=60)
                assert tap.popen.wait(timeout=30) == 0
            finally:
                tap.stop()
    finally:
        ble.stop()
    assert ble.popen.returncode == 0, err
    report = _one_object(out)
    assert set(report) == COMMON | {"devices"}
    assert (report["command"], report["exit_code"], report["reason"]) == ("ble stream", 0, "done")
    (dev,) = report["devices"]
    assert json.dumps(dev) in err  # the same object as the stderr line
    seen = [json.loads(line) for line in tap_file.read_text().splitlines()]
    assert {m["device"] for m in seen} == {dev["device"]}
    samples: Counter[str] = Counter()
    for m in seen:
        if m["kind"] == "raw" and m["modality"] in ("bvp", "eda", "temp", "acc"):
            samples[m["modality"]] += m["n"]
    assert dev["samples"] == dict(samples) and set(samples) == {"bvp", "eda", "temp", "acc"}
    events = Counter(m["event"] for m in seen if m["kind"] == "status")
    assert dev["connects"] == events["connected"] >= 2  # it reconnected after the link drops
    assert dev["disconnects"] == events["disconnected"] >= 1
    assert dev["connect_failures"] == events["connect_failed"]
    assert dev["beats"] == sum(1 for m in seen if m["kind"] == "raw" and m["modality"] == "ibi")
    gaps: Counter[str] = Counter()
    for m in seen:
        if m["kind"] == "status" and m["event"] == "gap":
            gaps[m["stream"]] += m["missing_samples"]
    assert dev["missing_samples"] == dict(gaps)
