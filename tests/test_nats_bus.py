"""The bus on NATS JetStream (``--bus nats://``), against a real ``nats-server -js`` on a loopback port.

What must hold: topics map to subjects and back (device ids with ``.`` included); the codec's
frames cross intact, arrays and metadata too, and a broken payload is a counted malformed message;
a durable consumer gets what was sent while its stage was away; ``m3sense run`` on NATS stores
exactly the rows the ZeroMQ ``run`` stores; and an inference worker killed with SIGKILL in the
middle of a stream, once restarted, resumes its durable consumer: every window of every device is
stored, once, and none is counted lost.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from bus import Publisher, Subscriber
from bus.message import MalformedMessage
from bus.nats_backend import (
    NatsPublisher,
    NatsSubscriber,
    filter_for,
    pack,
    subject_for,
    topic_of,
    unpack,
)
from bus.partitions import partition_of
from tests.conftest import Proc, run_cli
from tests.nats_servers import (
    NEEDS_NATS,
    NatsCluster,
    NatsServer,
    nats_cluster,
    nats_server,
)
from tests.servers import free_port
from tests.test_restarts import Pipeline, model, recording

__all__ = ["model", "nats_cluster", "nats_server", "recording"]  # fixtures used below


@pytest.mark.parametrize(
    ("topic", "subject"),
    [
        ("raw/bvp/S2/", "m3s.{}.raw.bvp.S2"),
        ("window/dev.1/", "m3s.{}.window.dev%2E1"),
        ("affect/a%2Eb/", "m3s.{}.affect.a%252Eb"),
        ("status/A0:1-x_y/", "m3s.{}.status.A0:1-x_y"),
    ],
)
def test_topics_map_to_subjects_and_back(topic: str, subject: str) -> None:
    subject = subject.format(f"{partition_of(topic.split('/')[-2]):02d}")  # the device's partition
    assert subject_for(topic) == subject
    assert topic_of(subject) == topic


def test_a_stage_filters_on_the_narrowest_subject_covering_its_prefixes() -> None:
    assert filter_for(["window/"]) == "m3s.*.window.>"
    assert filter_for(["raw/bvp/", "raw/eda/"]) == "m3s.*.raw.>"
    assert filter_for(["raw/", "label/", "status/"]) == "m3s.>"
    assert filter_for([""]) == "m3s.>"
    assert filter_for(["window/d.1/"]) == "m3s.*.window.d%2E1.>"
    assert filter_for(["raw/", "label/", "status/"], 7) == "m3s.07.>"  # one partition of a worker group


def test_payload_framing_round_trips_and_refuses_what_does_not_fit() -> None:
    frames = [b"head", b"", np.arange(3, dtype=np.int16).tobytes()]
    assert [bytes(f.buffer) for f in unpack(pack(frames))] == frames
    payload = pack(frames)
    for broken in (payload[:-1], payload + b"x", payload[:3], (10**6).to_bytes(4, "little") + payload[4:]):
        with pytest.raises(MalformedMessage) as err:
            unpack(broken)
        assert err.value.reason == "framing"


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


@NEEDS_NATS
def test_publish_and_receive_arrays_and_metadata(nats_server: NatsServer) -> None:
    bus = nats_server.bus
    acc = np.arange(96, dtype=np.int16).reshape(32, 3)
    arrays = {"bvp": np.linspace(0, 1, 3840, dtype=np.float32), "mask": np.array([True, False])}
    meta = {"t_end": 1700000060.5, "labels": {"stress": "rest"}, "lineage": [1, 2, 3]}

    async def scenario() -> None:
        async with (
            NatsSubscriber(bus, ["raw/acc/", "window/"], consumer="roundtrip") as sub,
            Subscriber(bus, ["window/"]) as live,
        ):
            async with Publisher(bus) as pub:
                assert isinstance(pub, NatsPublisher) and isinstance(live, NatsSubscriber)
                assert await pub.wait_for_subscribers(["raw/acc/dev.1/", "window/dev.1/"], 5) == []
                assert await pub.wait_for_subscribers(["raw/bvp/dev.1/"], 0.3) == ["raw/bvp/dev.1/"]
                await pub.publish("raw", "dev.1", "acc", t0_s=1700000000.0, fs_hz=32.0, samples=acc)
                await pub.publish("raw", "dev.1", "bvp", t0_s=1700000000.0, fs_hz=64.0, samples=np.ones(64))
                await pub.publish("window", "dev.1", t0_s=1700000000.5, fs_hz=0.0, arrays=arrays, meta=meta)
                assert await pub.flush() and pub.refused == 0
            first, second = await sub.recv(5), await sub.recv(5)
            assert (first.topic, first.seq, first.fs_hz, first.t0_s) == ("raw/acc/dev.1/", 0, 32.0, 1700000000.0)
            assert _same(first.samples, acc)
            assert second.topic == "window/dev.1/" and second.meta == meta
            assert second.arrays.keys() == arrays.keys() and all(_same(second.arrays[k], arrays[k]) for k in arrays)
            assert (await live.recv(5)).meta == meta  # a plain subscription sees the flow too
            with pytest.raises(TimeoutError):
                await sub.recv(0.3)  # raw/bvp/ was not asked for
            assert sub.stats.received == 2 and sub.stats.gaps == 0 and not sub.stats.malformed

    asyncio.run(scenario())


@NEEDS_NATS
def test_a_durable_consumer_gets_what_was_sent_while_its_stage_was_away(nats_server: NatsServer) -> None:
    bus = nats_server.bus

    async def scenario() -> list[int]:
        async with Publisher(bus) as pub:
            async with NatsSubscriber(bus, ["status/"], consumer="away") as sub:
                await pub.publish("status", "d1", t0_s=1.0, fs_hz=0.0, meta={"i": 0})
                assert (await sub.recv(5)).meta == {"i": 0}
            for i in range(1, 6):  # nobody listens now
                await pub.publish("status", "d1", t0_s=1.0 + i, fs_hz=0.0, meta={"i": i})
            assert await pub.flush()
        async with NatsSubscriber(bus, ["status/"], consumer="away") as again:
            got = [(await again.recv(5)).meta["i"] for _ in range(5)]
            with pytest.raises(TimeoutError):
                await again.recv(0.5)  # the first one was acknowledged: not delivered twice
        return got

    assert asyncio.run(scenario()) == [1, 2, 3, 4, 5]


@NEEDS_NATS
def test_a_three_server_cluster_loses_nothing_when_a_server_dies(nats_cluster: NatsCluster) -> None:
    """The stream is kept on all three servers: kill -9 the one the publisher talks to mid-stream,
    and the durable consumer still gets every message once, in order."""
    bus = nats_cluster.bus

    async def scenario() -> tuple[list[int], int]:
        async with Publisher(bus, flush_timeout_s=60) as pub, NatsSubscriber(bus, ["raw/"], consumer="cluster") as sub:
            assert isinstance(pub, NatsPublisher)  # a nats:// address makes one
            assert await pub.wait_for_subscribers(["raw/eda/d1/"], 10) == []
            for i in range(200):
                await pub.publish("raw", "d1", "eda", t0_s=1000.0 + i, fs_hz=4.0, samples=np.full(4, float(i)))
            assert await pub.flush()
            got = [(await sub.recv(10)).seq for _ in range(100)]
            victim = next(s for s in nats_cluster.servers if str(s.port) in pub._nc.connected_url.netloc)
            victim.kill()
            for i in range(200, 400):
                await pub.publish("raw", "d1", "eda", t0_s=1000.0 + i, fs_hz=4.0, samples=np.full(4, float(i)))
            assert await pub.flush()
            got += [(await sub.recv(30)).seq for _ in range(300)]
            with pytest.raises(TimeoutError):
                await sub.recv(1.0)
            return got, pub.refused

    got, refused = asyncio.run(scenario())
    assert got == list(range(400)) and refused == 0


def test_an_unreachable_nats_server_is_one_line() -> None:
    proc = run_cli("tap", "--bus", f"nats://127.0.0.1:{free_port()}", "--idle-exit-s", "1", timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    said = [line for line in lines if "unreachable" in line]
    assert said == lines[-1:] and "nats-server -js" in said[0], proc.stderr  # one line, the last
    assert "Traceback" not in proc.stderr


def test_hub_refuses_a_nats_address_in_one_line() -> None:
    proc = run_cli("hub", "--bus", "nats://127.0.0.1:4222", timeout=60)
    assert proc.returncode == 2 and "no hub" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def short_recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("nats") / "rec"
    run_cli("simulate", str(src), "--minutes", "3", "--seed", "11", "--subjects", "1", "--no-faults", check=True)
    return src


def _rows(db: Path) -> dict[str, list[tuple]]:
    with sqlite3.connect(db) as conn:
        tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}


@NEEDS_NATS
def test_run_on_nats_stores_what_run_on_zeromq_stores(
    nats_server: NatsServer, short_recording: Path, model: Path, tmp_path: Path
) -> None:
    stored = {}
    for name, bus in (("zeromq", []), ("nats", ["--bus", nats_server.bus])):
        db = tmp_path / f"{name}.db"
        proc = run_cli(
            "run",
            str(short_recording),
            *bus,
            "--sink",
            f"sqlite:{db}",
            "--model",
            str(model),
            "--tasks",
            "stress,emotion",
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "none lost" in proc.stderr.splitlines()[-1]
        stored[name] = _rows(db)
    assert len(stored["nats"]["affect"]) > 20
    assert stored["nats"] == stored["zeromq"]


def _assert_every_window_once(pipe: Pipeline, truth: dict, why_none_lost: str) -> None:
    """Every window of every device stored, none counted lost, each row (two tasks) once."""
    windows, lost = pipe.stored()
    assert windows == {device: len(expected) for device, expected in truth.items()}, (windows, lost)
    assert lost == {}, why_none_lost
    with sqlite3.connect(pipe.db) as conn:
        per_window = conn.execute("SELECT count(*), count(DISTINCT device || task || t_start_s) FROM affect").fetchone()
    assert per_window[0] == per_window[1] == 2 * sum(len(e) for e in truth.values())  # two tasks, once each


@NEEDS_NATS
def test_kill_9_of_the_store_gets_back_what_it_had_not_flushed(
    nats_server: NatsServer, procs: list[Proc], tmp_path: Path, model: Path, recording, monkeypatch
) -> None:
    """The store acknowledges a message only after the flush that stores its records: killed with
    -9 between flushes (1 s apart, so the kill lands with answers in hand), the restarted store
    gets those messages again and every window is stored exactly once, none counted lost."""
    monkeypatch.setenv("M3SENSE_NATS_ACK_WAIT_S", "3")  # what the dead store held comes again after 3 s
    src, truth = recording
    pipe = Pipeline(nats_server.bus, procs, tmp_path, model, store_flush_s=1.0)
    pipe.replay_killing(src, "store")
    _assert_every_window_once(pipe, truth, "a store killed between flushes gets its unflushed messages again")


def test_the_store_refuses_a_flush_interval_the_nats_ack_wait_would_outrun() -> None:
    proc = run_cli(
        "store", "--bus", f"nats://127.0.0.1:{free_port()}", "--sink", "sqlite:x.db", "--flush-interval-s", "20"
    )
    assert proc.returncode == 2 and "ack wait" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@NEEDS_NATS
def test_kill_9_of_infer_resumes_its_durable_consumer(
    nats_server: NatsServer, procs: list[Proc], tmp_path: Path, model: Path, recording, monkeypatch
) -> None:
    monkeypatch.setenv("M3SENSE_NATS_ACK_WAIT_S", "3")  # what the dead worker held comes again after 3 s
    src, truth = recording
    pipe = Pipeline(nats_server.bus, procs, tmp_path, model)
    pipe.replay_killing(src, "infer")
    _assert_every_window_once(pipe, truth, "a resumed durable consumer loses no window")
    restarted = pipe.stages["infer"].popen
    restarted.terminate()
    answered = re.search(r"infer: answered (\d+)", restarted.communicate(timeout=30)[1])
    assert answered and int(answered.group(1)) > 0, "the kill came after the stream: it tested nothing"


def test_a_step_is_tried_again_while_its_stream_has_no_leader_and_not_for_ever() -> None:
    """A bucket made a moment ago on a cluster answers its first requests with "no response from
    stream" (seen in bench_scale: a worker died at start-up): tried again until it answers; a
    refusal of another kind, or no leader for longer than the time allowed, is raised."""
    import nats.errors
    import nats.js.errors

    from bus.nats_backend import while_electing

    calls: list[int] = []

    async def elected_on_third_call() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise nats.js.errors.NoStreamResponseError if len(calls) == 1 else nats.errors.NoRespondersError
        return "put"

    assert asyncio.run(while_electing(elected_on_third_call)) == "put" and len(calls) == 3

    async def refused() -> None:
        raise nats.js.errors.BadRequestError

    with pytest.raises(nats.js.errors.BadRequestError):
        asyncio.run(while_electing(refused))

    async def never() -> None:
        raise nats.js.errors.NoStreamResponseError

    with pytest.raises(nats.js.errors.NoStreamResponseError):
        asyncio.run(while_electing(never, timeout_s=0.5))
