"""The preprocess node on a real bus: streamed windows equal the offline path; the CLI end to end."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import pytest

from bus import Hub, Publisher, Subscriber, topic_for
from preprocess import Window, recording_windows
from preprocess.node import serve
from replay import LabelInterval, read_source, recording_messages, topics_of
from tests.conftest import Proc, run_cli
from tests.preprocess_helpers import T0, assert_same_windows, make_recording


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def test_streamed_windows_equal_offline_windows(hub: Hub, bus_address: str) -> None:
    recs = [
        make_recording(
            75.0,
            seed=11,
            device="wrist-a",
            motion=[(30.0, 33.0)],
            labels=(LabelInterval(start_s=T0 + 10, end_s=T0 + 60, task="emotion", label="high"),),
        ),
        make_recording(50.0, seed=12, device="wrist-b", t0_s=T0 + 2.5, off_wrist=[(20.0, 30.0)]),
    ]
    offline = {rec.device: recording_windows(rec) for rec in recs}
    messages = sorted(
        ((due, i, msg) for i, rec in enumerate(recs) for due, msg in recording_messages(rec)),
        key=lambda e: (e[0], e[1]),
    )
    reports: list[Counter] = []

    async def scenario() -> dict[str, list[Window]]:
        ready = asyncio.Event()
        node = asyncio.create_task(serve(bus_address, on_ready=lambda _bus: ready.set(), report=reports.append))
        await ready.wait()
        got: dict[str, list[Window]] = {rec.device: [] for rec in recs}
        async with Subscriber(bus_address, ["window/"]) as sub, Publisher(bus_address) as pub:
            topics = [t for rec in recs for t in topics_of(rec)] + [topic_for("window", r.device) for r in recs]
            assert await pub.wait_for_subscribers(topics, 30) == []  # the node's and ours
            for _, _, msg in messages:
                await pub.send(msg)
            await pub.flush()
            ended: list[str] = []
            while len(ended) < len(recs):
                msg = await sub.recv(30)
                if msg.meta.get("event") == "end":  # a device's end marker, after its last window
                    assert msg.meta["reason"] == "end" and msg.device not in ended
                    ended.append(msg.device)
                else:
                    assert msg.device not in ended
                    got[msg.device].append(Window.from_message(msg))
            node.cancel()
            with pytest.raises(asyncio.CancelledError):
                await node
            with pytest.raises(TimeoutError):
                await sub.recv(0.5)  # nothing more: the end messages had already closed both devices
        return got

    got = _run(scenario())
    for rec in recs:
        assert_same_windows(got[rec.device], offline[rec.device])
    assert [w.t_start_s - T0 for w in got["wrist-a"] if w.quality.motion] == [15.0, 20.0, 25.0, 30.0]
    assert any(w.quality.off_wrist for w in got["wrist-b"])
    assert any(w.labels["emotion"] == "high" for w in got["wrist-a"])
    final = reports[-1]
    assert final["windows"] == sum(len(w) for w in offline.values())
    assert final["devices_opened"] == final["devices_closed"] == 2 and final["devices_open"] == 0
    assert final["bus_missing"] == 0 and final["bus_malformed"] == 0


def test_cancelling_the_node_flushes_pending_windows(hub: Hub, bus_address: str) -> None:
    rec = make_recording(40.0, seed=13, device="cut")
    messages = [msg for _, msg in recording_messages(rec)][:-1]  # no end: the device is still open

    async def scenario() -> list[Window]:
        ready, took_all = asyncio.Event(), asyncio.Event()

        def report(counters) -> None:  # called after the node handled what it received
            if counters["bus_received"] >= len(messages):
                took_all.set()

        node = asyncio.create_task(
            serve(bus_address, on_ready=lambda _bus: ready.set(), report=report, report_every_s=0.05)
        )
        await ready.wait()
        async with Subscriber(bus_address, ["window/cut/"]) as sub, Publisher(bus_address) as pub:
            assert await pub.wait_for_subscribers([*topics_of(rec), "window/cut/"], 30) == []
            for msg in messages:
                await pub.send(msg)
            await pub.flush()
            first = [Window.from_message(await sub.recv(30)) for _ in range(4)]  # complete ones come on their own
            await took_all.wait()  # every sample is in the node's hands: the flushed window is whole
            node.cancel()
            with pytest.raises(asyncio.CancelledError):
                await node
            rest = [Window.from_message(await sub.recv(30))]  # [20, 40): the last that ends by the data's end
            end = await sub.recv(30)
            assert end.meta == {"event": "end", "reason": "shutdown", "source": "replay"}
            assert end.t0_s == rec.end_s
            return first + rest

    windows = _run(scenario())
    assert [w.t_start_s - T0 for w in windows] == [5.0 * k for k in range(5)]
    assert_same_windows(windows, recording_windows(rec))


@pytest.mark.slow
def test_cli_replay_preprocess_tap(tmp_path: Path, bus_address: str, procs: list[Proc]) -> None:
    """simulate → hub, preprocess, tap --json on window/ → replay --speed max, as processes."""
    out = tmp_path / "sim"
    run_cli("simulate", str(out), "--minutes", "2", "--seed", "5", "--subjects", "1", check=True)
    rec = read_source(out)[0]
    expected = recording_windows(rec)
    hub = Proc(["hub", "--bus", bus_address])
    procs.append(hub)
    hub.wait_for_stderr("subscribers")
    pre = Proc(["preprocess", "--bus", bus_address, "--report-every", "600"])
    procs.append(pre)
    pre.wait_for_stderr("subscribed")
    tap_file = (tmp_path / "windows.jsonl").open("w")
    tap = Proc(
        [
            "tap",
            "--bus",
            bus_address,
            "--topic",
            "window/",
            "--json",
            "--count",
            str(len(expected) + 1),
            "--idle-exit-s",
            "60",
        ],
        stdout=tap_file,
    )
    procs.append(tap)
    tap.wait_for_stderr("tap: subscribed")  # windows published before the tap listens would be lost to it
    run_cli("replay", str(out), "--bus", bus_address, "--speed", "max", "--wait", "60", check=True)
    assert tap.popen.wait(timeout=60) == 0
    tap_file.close()
    lines = [json.loads(line) for line in (tmp_path / "windows.jsonl").read_text().splitlines()]
    assert len(lines) == len(expected) + 1
    assert lines.pop()["event"] == "end"  # the device's end marker closes its window topic
    for line, w in zip(lines, expected):
        assert line["topic"] == f"window/{rec.device}/" and line["t0"] == w.t_start_s
        assert line["t_end"] == w.t_end_s and line["labels"] == dict(w.labels)
        assert set(line["present"]) == {"bvp", "eda", "temp", "acc"}
        q = line["quality"]
        assert isinstance(q["off_wrist"], bool) and isinstance(q["motion"], bool)
        assert q["missing_fraction"] == w.quality.missing_fraction
    pre.popen.terminate()
    assert pre.popen.wait(timeout=30) in (0, 130)
    err = pre.stderr.read()
    assert f"windows {len(expected)}" in err and "devices_closed 1" in err
