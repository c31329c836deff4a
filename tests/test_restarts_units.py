"""The pieces that make a restart visible: incarnations on the wire, the gap tracker, the
window ledger, and a publisher's flush across a hub restart."""

from __future__ import annotations

import asyncio
import logging
import struct

import numpy as np
import pytest

from bus import Hub, Message, Publisher, Subscriber, decode, encode, free_bus_address
from bus.sequence import GapTracker
from storage.positions import LedgerFile, WindowLedger


def _msg(seq: int = 3, incarnation: int = 0) -> Message:
    return Message(
        kind="raw",
        device="d1",
        modality="eda",
        seq=seq,
        t0_s=1.7e9,
        fs_hz=4.0,
        samples=np.arange(6.0),
        meta={"k": 1},
        incarnation=incarnation,
    )


def test_the_incarnation_crosses_the_wire_and_version_1_headers_still_decode() -> None:
    back = decode([bytes(f) for f in encode(_msg(incarnation=0x1234_5678_9ABC))])
    assert (back.version, back.incarnation, back.seq, back.meta) == (2, 0x1234_5678_9ABC, 3, {"k": 1})
    assert decode([bytes(f) for f in encode(_msg(), incarnation=77)]).incarnation == 77  # a publisher's stamp
    # a version-1 header: no incarnation field, dimensions at byte 28
    topic, _head, samples = [
        bytes(f)
        for f in encode(
            Message(kind="raw", device="d1", modality="eda", seq=5, t0_s=1.7e9, fs_hz=4.0, samples=np.arange(6.0))
        )
    ]
    v1 = struct.pack("<BBBBqdd", 1, 0, 1, 0, 5, 1.7e9, 4.0) + struct.pack("<I", 6)
    old = decode([topic, v1, samples])
    assert (old.version, old.incarnation, old.seq, old.n) == (1, 0, 5, 6)
    with pytest.raises(ValueError):
        encode(_msg(incarnation=2**64))


def test_a_restarted_publisher_is_a_counted_restart_not_late_messages() -> None:
    t = GapTracker()
    for seq in range(10):
        t.observe("affect/d/", seq, incarnation=111)
    assert t.observe("affect/d/", 0, incarnation=222) == 0  # it restarted and we saw its first message
    assert t.observe("affect/d/", 4, incarnation=222) == 3  # then 1..3 went missing
    assert t.observe("affect/d/", 2, incarnation=333) == 2  # another restart, 0 and 1 of it never came
    assert t.observe("affect/d/", 1, incarnation=333) == 0  # a real late message
    s = t.stats
    assert (s.restarts, s.gaps, s.late, s.restarts_by_topic["affect/d/"]) == (2, 5, 1, 2)
    # version-1 senders (incarnation 0) keep the old rule: numbers alone
    old = GapTracker()
    old.observe("raw/eda/d/", 5)
    assert old.observe("raw/eda/d/", 0) == 0 and old.stats.late == 1 and old.stats.restarts == 0


def _answer(inc: str, seq: int, t_start: float, hop: float | None = 5.0) -> dict:
    meta = {"window_incarnation": inc, "window_seq": seq}
    return meta if hop is None else {**meta, "hop_s": hop}


def test_the_ledger_counts_lost_windows_by_number_then_by_grid() -> None:
    ledger = WindowLedger()
    t0 = 1_700_000_000.0
    assert ledger.observe("d", _answer("a", 0, t0), t0) is None
    assert ledger.observe("d", _answer("a", 1, t0 + 5), t0 + 5) is None
    loss = ledger.observe("d", _answer("a", 5, t0 + 25), t0 + 25)  # an inference restart lost 2, 3, 4
    assert loss is not None and (loss.windows, loss.by) == (3, "sequence")
    assert ledger.observe("d", _answer("a", 5, t0 + 25), t0 + 25) is None  # a duplicate is not a loss
    loss = ledger.observe("d", _answer("b", 0, t0 + 60), t0 + 60)  # preprocess restarted: 30 .. 55 lost
    assert loss is not None and (loss.windows, loss.by) == (6, "grid")
    assert ledger.observe("d", _answer("b", 1, t0 + 65, hop=None), t0 + 65) is None
    assert ledger.observe("d", _answer("b", 2, t0 + 70), t0 + 70, end=True) is None  # the device's end
    assert ledger.observe("d", _answer("c", 0, t0 + 900), t0 + 900) is None  # a new stream after an end
    assert ledger.lost == {"d": 9}
    assert ledger.observe("x", {"window_seq": 3}, t0) is None  # no lineage: nothing can be said
    first = ledger.observe("y", _answer("z", 4, t0), t0)  # windows 0 .. 3 of that stream never came
    assert first is not None and (first.windows, first.by) == (4, "sequence")


def test_the_ledger_survives_a_restart_through_its_file(tmp_path) -> None:
    t0 = 1_700_000_000.0
    ledger = WindowLedger()
    ledger.observe("d", _answer("a", 7, t0), t0)
    snapshot = ledger.to_json()
    ledger.observe("d", _answer("a", 8, t0 + 5), t0 + 5)  # handed to the sink after the snapshot: not flushed
    path = tmp_path / "state" / "positions.json"
    LedgerFile(path).save(snapshot)
    assert path.stat().st_mode & 0o777 == 0o600
    again = LedgerFile(path).load()
    loss = again.observe("d", _answer("a", 12, t0 + 25), t0 + 25)  # 8 was never flushed: 8 .. 11 lost
    assert loss is not None and (loss.windows, loss.by) == (4, "sequence")
    assert WindowLedger.from_json("not json").to_json() == "{}"
    assert WindowLedger.from_json('{"d": ["a", -1, null, null], "e": [1, 2]}').to_json() == "{}"


def test_a_publishers_flush_comes_back_at_once_after_a_hub_restart(caplog: pytest.LogCaptureFixture) -> None:
    """The issue: after a hub restart every publisher's flush waited 30 s and said the hub was not running."""
    address = free_bus_address()

    async def main() -> tuple[bool, int]:
        hub = Hub(address).start()
        try:
            async with Publisher(address, flush_timeout_s=20) as pub, Subscriber(address, ["raw/"]) as sub:
                assert await pub.wait_for_subscribers(["raw/eda/d1/"], 10) == []
                await pub.publish("raw", "d1", "eda", t0_s=1.7e9, fs_hz=4.0, samples=np.zeros(6))
                assert await pub.flush()
                await sub.recv(10)
                hub.stop()
                for k in range(20):  # sent while the hub is down: lost, and counted as a gap later
                    await pub.publish("raw", "d1", "eda", t0_s=1.7e9 + 1.5 * k, fs_hz=4.0, samples=np.zeros(6))
                await asyncio.sleep(3)  # the hub is down for a while (a restart by hand, a crash)
                hub = Hub(address).start()  # the same address: every socket reconnects by itself
                flushed = await pub.flush()
                # the subscriptions travel to the new hub on their own; what is sent before they
                # arrive is lost, and visible as a sequence gap at the next message that gets through
                for k in range(21, 100):
                    await pub.publish("raw", "d1", "eda", t0_s=1.7e9 + 1.5 * k, fs_hz=4.0, samples=np.zeros(6))
                    try:
                        got = await sub.recv(0.25)
                        break
                    except TimeoutError:
                        pass
                assert sub.stats.gaps == got.seq - 1
                return flushed, got.seq
        finally:
            hub.stop()

    with caplog.at_level(logging.WARNING, logger="bus.sockets"):
        flushed, seq = asyncio.run(asyncio.wait_for(main(), 60))
    assert flushed and seq >= 1
    assert not [r for r in caplog.records if "flush timed out" in r.getMessage()]
