"""Publisher, hub and subscriber over real loopback sockets: readiness, flush, no silent loss."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import zmq

from bus import Hub, Message, Publisher, Subscriber, encode, free_bus_address, hub_endpoints
from bus.endpoints import BadBusAddress


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_endpoints_derive_from_one_address() -> None:
    ep = hub_endpoints("tcp://127.0.0.1:5555")
    assert (ep.publishers, ep.subscribers) == ("tcp://127.0.0.1:5555", "tcp://127.0.0.1:5556")
    ep = hub_endpoints("ipc:///tmp/m3")
    assert (ep.publishers, ep.subscribers) == ("ipc:///tmp/m3.in", "ipc:///tmp/m3.out")
    for bad in ("127.0.0.1:5555", "tcp://127.0.0.1", "tcp://127.0.0.1:65535", "ipc://"):
        with pytest.raises(BadBusAddress):
            hub_endpoints(bad)


def test_publisher_started_first_waits_for_subscriber_and_loses_nothing(hub: Hub) -> None:
    addr = hub.address
    n = 2000

    async def main() -> None:
        async with Publisher(addr) as pub:
            waiting = asyncio.create_task(pub.wait_for_subscribers(["raw/bvp/d1/", "raw/eda/d1/"], 30))
            done, _ = await asyncio.wait({waiting}, timeout=0.2)
            assert not done  # nobody has subscribed yet
            async with Subscriber(addr, ["raw/"]) as sub:
                assert await waiting == []
                for i in range(n):
                    await pub.publish(
                        "raw", "d1", "bvp", t0_s=i * 11 / 64, fs_hz=64.0, samples=np.full(11, i, dtype=np.float64)
                    )
                await pub.flush()
                got = [await sub.recv(10) for _ in range(n)]
                assert [m.seq for m in got] == list(range(n))
                assert all(m.samples[0] == m.seq for m in got)
                assert sub.stats.gaps == 0 and sub.stats.received == n

    run(main())


def test_wait_for_subscribers_reports_uncovered_topics_at_timeout(hub: Hub) -> None:
    async def main() -> None:
        async with Subscriber(hub.address, ["raw/bvp/"]), Publisher(hub.address) as pub:
            left = await pub.wait_for_subscribers(["raw/bvp/a/", "raw/eda/a/"], 0.5)
            assert left == ["raw/eda/a/"]

    run(main())


def test_malformed_messages_are_counted_and_dropped_without_stopping(hub: Hub) -> None:
    async def main() -> None:
        async with Subscriber(hub.address, ["raw/"]) as sub, Publisher(hub.address) as pub:
            assert await pub.wait_for_subscribers(["raw/bvp/x/"], 10) == []
            rogue = zmq.asyncio.Context.instance().socket(zmq.PUB)
            rogue.setsockopt(zmq.LINGER, 0)
            rogue.connect(hub.endpoints.publishers)
            await pub.publish("raw", "x", "bvp", t0_s=0.0, fs_hz=64.0, samples=np.zeros(11))
            await pub.flush()
            assert (await sub.recv(10)).seq == 0
            # The rogue socket's first messages may be lost before it connects; send until counted.
            good = [
                bytes(f)
                for f in encode(
                    Message(kind="raw", device="x", modality="bvp", seq=7, t0_s=0.0, fs_hz=64.0, samples=np.zeros(2))
                )
            ]
            future_version = [good[0], b"\x63" + good[1][1:], good[2]]
            for _ in range(200):
                await rogue.send_multipart([b"raw/bvp/x/", b"{not a header", b"\x00"])
                await rogue.send_multipart(future_version)
                try:
                    await sub.recv(0.05)
                except TimeoutError:
                    pass
                if sub.stats.malformed["header"] and sub.stats.malformed["version"]:
                    break
            rogue.close(linger=0)
            await pub.publish("raw", "x", "bvp", t0_s=1.0, fs_hz=64.0, samples=np.ones(11))
            await pub.flush()
            msg = await sub.recv(10)
            assert msg.seq == 1 and sub.stats.gaps == 0
            assert sub.stats.malformed["header"] >= 1 and sub.stats.malformed["version"] >= 1

    run(main())


def test_sequence_jump_is_reported_as_missing_messages(hub: Hub) -> None:
    async def main() -> None:
        async with Subscriber(hub.address, ["status/"]) as sub, Publisher(hub.address) as pub:
            assert await pub.wait_for_subscribers(["status/d/"], 10) == []
            await pub.publish("status", "d", t0_s=0.0, fs_hz=0.0, meta={"event": "a"})
            for _ in range(4):  # numbered but never sent: a lost message each
                pub.next_seq("status/d/")
            await pub.publish("status", "d", t0_s=1.0, fs_hz=0.0, meta={"event": "b"})
            await pub.flush()
            assert [(await sub.recv(10)).meta["event"] for _ in range(2)] == ["a", "b"]
            assert sub.stats.gaps == 4

    run(main())


def test_shutdown_without_a_hub_does_not_hang() -> None:
    addr = free_bus_address()  # nothing listens there

    async def main() -> None:
        async with Publisher(addr, flush_timeout_s=0.3) as pub:
            await pub.publish("raw", "d", "eda", t0_s=0.0, fs_hz=4.0, samples=np.zeros(6))
        async with Subscriber(addr) as sub:
            with pytest.raises(TimeoutError):
                await sub.recv(0.1)

    run(main())


def test_hub_refuses_an_address_in_use(hub: Hub) -> None:
    with pytest.raises(OSError):
        Hub(hub.address).start()
