"""Each stage's counters, scraped over HTTP from a running stage (``--metrics-port``)."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from bus import Hub, Message, Publisher, Subscriber
from replay import recording_messages
from replay.chunks import topics_of
from tests.conftest import Proc
from tests.preprocess_helpers import T0, make_recording
from tests.servers import affect_meta
from tests.test_hostile_messages import RawSender, _deep_json


def _read(url: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def _url(proc: Proc, stage: str) -> str:
    line = proc.wait_for_stderr(f"{stage}: metrics on http://", timeout=120)
    found = re.search(r"(http://\S+/metrics)", line)
    assert found is not None, line
    return found.group(1)


def test_preprocess_serves_its_counters(hub: Hub, procs: list[Proc]) -> None:
    pre = Proc(["preprocess", "--bus", hub.address, "--metrics-port", "0"])
    procs.append(pre)
    url = _url(pre, "preprocess")
    pre.wait_for_stderr("subscribed")
    rec = make_recording(40.0, seed=3, device="dev1")
    valid = [msg for _, msg in recording_messages(rec)]
    off_rate = Message(kind="raw", device="dev1", modality="bvp", seq=0, t0_s=T0, fs_hz=1000.0, samples=np.ones(11))

    async def scenario() -> int:
        sender = RawSender(hub)
        try:
            async with Subscriber(hub.address, ["window/dev1/"]) as sub, Publisher(hub.address) as pub:
                assert await pub.wait_for_subscribers([*topics_of(rec), "window/dev1/"], 30) == []
                await sender.wait_for(["raw/"])
                await sender.send(_deep_json(valid[1], 100_000))  # malformed: json_size
                await pub.send(off_rate)  # refused by preprocess: bad_rate
                for msg in valid[:-1]:
                    await pub.send(msg)
                await pub.send(valid[-1])
                windows = 0
                while (await sub.recv(60)).meta.get("event") != "end":
                    windows += 1
                return windows
        finally:
            sender.close()

    windows = asyncio.run(scenario())
    stage = (("stage", "preprocess"),)
    latency = ("m3sense_latency_seconds_count", stage)
    # the stage times a message once it has published what the message made, so the end marker
    # can arrive here before the last message's time is in the histogram: read until it is
    deadline = time.monotonic() + 10
    m = _read(url)
    while m[latency] < len(valid) + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
        m = _read(url)
    assert m[("m3sense_messages_total", stage)] == len(valid) + 1
    assert m[("m3sense_malformed_total", (("kind", "json_size"), ("stage", "preprocess")))] == 1
    assert m[("m3sense_drops_total", (("kind", "bad_rate"), ("stage", "preprocess")))] == 1
    assert m[("m3sense_gaps_total", stage)] == 0
    assert m[("m3sense_published_total", stage)] == windows + 1  # the windows and the end marker
    assert m[latency] == len(valid) + 1
    assert m[("m3sense_queue_depth", stage)] == 0  # the device ended: nothing buffered
    assert ("process_start_time_seconds", ()) in m


def test_the_store_serves_the_windows_it_lost(hub: Hub, procs: list[Proc], tmp_path) -> None:
    store = Proc(
        [
            "store",
            "--bus",
            hub.address,
            "--sink",
            f"sqlite:{tmp_path / 'a.db'}",
            "--positions",
            "none",
            "--metrics-port",
            "0",
            "--flush-interval",
            "0.1",
        ]
    )
    procs.append(store)
    url = _url(store, "store")
    store.wait_for_stderr("<-")

    def answer(seq: int, window: int) -> Message:
        t_end = T0 + 20 + 5 * window
        meta = {
            **affect_meta(t_end),
            "t_start": t_end - 20,
            "window_incarnation": "ab",
            "window_seq": window,
            "hop_s": 5.0,
        }
        return Message(kind="affect", device="dev1", modality="affect", seq=seq, t0_s=t_end, fs_hz=0.0, meta=meta)

    async def scenario() -> None:
        async with Publisher(hub.address) as pub:
            assert await pub.wait_for_subscribers(["affect/dev1/"], 30) == []
            for seq, window in enumerate([0, 1, 4, 5]):  # windows 2 and 3 never came
                await pub.send(answer(seq, window))
            await pub.send(
                Message(
                    kind="affect",
                    device="dev1",
                    modality="affect",
                    seq=4,
                    t0_s=T0 + 60,
                    fs_hz=0.0,
                    meta={"event": "end", "window_incarnation": "ab", "window_seq": 6},
                )
            )
            await asyncio.to_thread(store.wait_for_stderr, "end of device dev1")

    asyncio.run(scenario())
    m = _read(url)
    assert m[("m3sense_lost_windows_total", (("device", "dev1"), ("stage", "store")))] == 2
    assert m[("m3sense_messages_total", (("stage", "store"),))] == 5
    assert m[("m3sense_upstream_restarts_total", (("stage", "store"),))] == 0
