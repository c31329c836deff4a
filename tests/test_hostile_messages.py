"""One hostile message never kills a stage (issue 12): each of preprocess, infer and store runs
as its own process on a loopback hub, takes a batch of well-formed hostile messages, then a
valid stream; it must stay alive, turn the valid stream into output, and say in its counters
what it dropped and why."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
import zmq
import zmq.asyncio

from bus import Hub, Message, Subscriber, encode
from bus.message import HEADER_SIZE
from inference.checkpoint import save_checkpoint
from inference.dataset import Normalizer
from inference.model import M3Sense, ModelConfig
from replay import recording_messages
from tests.conftest import Proc
from tests.model_helpers import quality, window
from tests.preprocess_helpers import T0, make_recording
from tests.servers import affect_meta


def _frames(msg: Message) -> list[bytes]:
    return [bytes(f) for f in encode(msg)]


def _deep_json(msg: Message, depth: int) -> list[bytes]:
    """``msg`` with its JSON tail replaced by one nested ``depth`` deep (the encoder would refuse it)."""
    topic, head, *rest = _frames(msg)
    fixed = HEADER_SIZE + 4 * np.asarray(msg.samples).ndim
    tail = b'{"x":{"a":' + b"[" * depth + b"]" * depth + b"}}"
    flags = head[3] | 1  # a JSON tail follows
    return [topic, head[:3] + bytes([flags]) + head[4:fixed] + tail, *rest]


def _raw(modality: str, t0: float, fs: float, samples: np.ndarray, device: str = "dev1") -> Message:
    return Message(kind="raw", device=device, modality=modality, seq=0, t0_s=t0, fs_hz=fs, samples=samples)


class RawSender:
    """Frames straight onto the hub, in order, as any process on the host could send them.

    An XPUB socket learns the subscriptions the hub forwards: once it has seen ``prefixes``,
    nothing it sends on them is dropped on the way to those subscribers. It closes with linger
    0, dropping what it has not sent yet: close it once the receiver has answered.
    """

    def __init__(self, hub: Hub) -> None:
        self._sock = zmq.asyncio.Context.instance().socket(zmq.XPUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(hub.endpoints.publishers)

    async def wait_for(self, prefixes: Sequence[str]) -> None:
        pending = {b"\x01" + p.encode() for p in prefixes}
        while pending:
            pending.discard(await asyncio.wait_for(self._sock.recv(), 30))

    async def send(self, frames: list[bytes]) -> None:
        await self._sock.send_multipart(frames)

    def close(self) -> None:
        self._sock.close(linger=0)


def _send_and_collect(hub: Hub, wait: list[str], output: str, frames: list[list[bytes]]) -> list[Message]:
    """Send ``frames`` once ``wait`` topics have subscribers, then collect ``output`` up to its end marker."""

    async def scenario() -> list[Message]:
        sender = RawSender(hub)
        try:
            async with Subscriber(hub.address, [output]) as sub:
                await sender.wait_for(wait)
                for f in frames:
                    await sender.send(f)
                got: list[Message] = []
                while not got or got[-1].meta.get("event") != "end":
                    got.append(await sub.recv(60))
                return got
        finally:
            sender.close()

    return asyncio.run(scenario())


def _counters(line: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"(\w+) (\d+)", line)}


def _last_report(proc: Proc, prefix: str) -> str:
    """Stop the stage (SIGTERM) and return its last stderr line starting with ``prefix``: the
    final counters, which only a stage that survived everything prints."""
    proc.popen.terminate()
    assert proc.popen.wait(timeout=30) in (0, 130)  # 130: stopped by the signal, as asked
    lines = [line for line in proc.stderr.read().splitlines() if line.startswith(prefix)]
    assert "Traceback" not in "\n".join(lines)
    return lines[-1]


def test_preprocess_survives_hostile_messages(hub: Hub, procs: list[Proc]) -> None:
    pre = Proc(["preprocess", "--bus", hub.address, "--report-every", "600"])
    procs.append(pre)
    pre.wait_for_stderr("subscribed")
    eda = _raw("eda", T0, 4.0, np.ones(6))
    hostile = [
        _deep_json(eda, 100_000),  # 200 kB tail: json_size
        _deep_json(eda, 20_000),  # 40 kB, 20,000 deep: json_depth
        _frames(_raw("eda", T0, 1e-300, np.ones(6))),  # bus: rate
        _frames(_raw("eda", 1e300, 4.0, np.ones(6))),  # bus: time
        _frames(
            Message(
                kind="label",
                device="dev1",
                modality="label",
                seq=0,
                t0_s=T0,
                fs_hz=0.0,
                meta={"task": ["stress"], "label": "stress", "start_s": T0, "end_s": T0 + 60},
            )
        ),
        _frames(_raw("eda", T0, 4.0, np.ones(10 * 2**20 // 8))),  # 10 MB of EDA: oversized
        _frames(_raw("bvp", T0, 1000.0, np.ones(11))),  # 1 kHz BVP: bad_rate
    ]
    rec = make_recording(40.0, seed=3, device="dev1")
    valid = [msg for _, msg in recording_messages(rec)]

    got = _send_and_collect(
        hub, ["raw/", "label/", "status/", "window/dev1/"], "window/dev1/", hostile + [_frames(msg) for msg in valid]
    )
    windows = got[:-1]
    assert [w.t0_s - T0 for w in windows] == [0.0, 5.0, 10.0, 15.0, 20.0]
    c = _counters(_last_report(pre, "preprocess:"))
    assert {k: c.get(f"bus_malformed_{k}") for k in ("json_size", "json_depth", "rate", "time")} == {
        "json_size": 1,
        "json_depth": 1,
        "rate": 1,
        "time": 1,
    }
    assert c["bad_labels"] == 1 and c["oversized"] == 1 and c["bad_rate"] == 1
    assert c["windows"] == len(windows) and c["devices_closed"] == 1


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    config = ModelConfig(
        cnn_channels=(8, 4),
        embed_dim=16,
        lstm_hidden=16,
        fusion_dim=16,
        task_dim=24,
        fc_dims=(24, 16),
        latent_dim=8,
        head_hidden=8,
    )
    norm = Normalizer(per_window=("bvp",), mean={"eda": 2.0, "temp": 33.0}, std={"eda": 1.0, "temp": 1.0})
    return save_checkpoint(tmp_path_factory.mktemp("hostile") / "tiny", M3Sense(config), norm, {"trained_on": ["test"]})


def test_infer_survives_hostile_windows(hub: Hub, procs: list[Proc], tiny_model: Path) -> None:
    infer = Proc(
        [
            "infer",
            "--bus",
            hub.address,
            "--model",
            str(tiny_model),
            "--tasks",
            "stress",
            "--backend",
            "torch",
            "--threads",
            "1",
            "--state-dir",
            "none",
            "--max-wait-ms",
            "0",
        ]
    )
    procs.append(infer)
    infer.wait_for_stderr("listening on", timeout=120)
    good = [window(device="w1", t0=T0 + 5 * k, seed=k).to_message() for k in range(3)]

    def with_meta(msg: Message, **meta) -> list[bytes]:
        return _frames(dataclasses.replace(msg, meta={**msg.meta, **meta}))

    hostile = [
        _deep_json(good[0], 100_000),  # bus: json_size
        with_meta(good[0], quality="x"),  # once an AttributeError in infer
        with_meta(good[0], t_end="soon"),
        with_meta(good[0], quality={**quality().to_dict(), "missing_fraction": [0.1]}),
    ]
    end = Message(kind="window", device="w1", modality="window", seq=0, t0_s=T0 + 40, fs_hz=0.0, meta={"event": "end"})

    got = _send_and_collect(
        hub,
        ["window/", "affect/w1/"],
        "affect/w1/",
        hostile + [_frames(dataclasses.replace(msg, seq=seq)) for seq, msg in enumerate([*good, end])],
    )
    assert [m.meta["t_start"] for m in got[:-1]] == [m.t0_s for m in good]
    assert all(m.meta["tasks"]["stress"]["status"] in ("ok", "uncertain") for m in got[:-1])
    c = _counters(_last_report(infer, "infer: ") + ",")
    assert c["bus_malformed_json_size"] == 1
    assert c["malformed_quality"] == 2 and c["malformed_t_end"] == 1
    assert c["windows"] == len(good) and c["answered"] == len(good)


def test_store_survives_hostile_messages(hub: Hub, procs: list[Proc], tmp_path: Path) -> None:
    db = tmp_path / "m3.db"
    store = Proc(["store", "--bus", hub.address, "--sink", f"sqlite:{db}", "--flush-interval", "0.1"])
    procs.append(store)
    store.wait_for_stderr("<-")
    t_end = T0 + 20
    affect = Message(
        kind="affect", device="dev1", modality="affect", seq=0, t0_s=t_end, fs_hz=0.0, meta=affect_meta(t_end)
    )
    topic, head, samples = _frames(affect)
    huge_int = head.replace(f'"t_end":{t_end}'.encode(), b'"t_end":1' + b"0" * 400, 1)
    assert huge_int != head
    hostile = [
        _deep_json(affect, 100_000),  # bus: json_size
        [topic, huge_int, samples],  # t_end 10^400: bus json_number
        _frames(
            Message(
                kind="affect",
                device="dev1",
                modality="affect",
                seq=0,
                t0_s=t_end,
                fs_hz=0.0,
                meta={**affect_meta(t_end), "t_end": 1e300},
            )
        ),  # a float, but no time: time
        _frames(_raw("bvp", T0, 1e9, np.ones(11))),  # bus: rate
        _frames(_raw("bvp", T0, 1000.0, np.ones(11))),  # once a LinAlgError: rate
    ]
    bvp = np.sin(2 * np.pi * 1.2 * np.arange(64 * 30) / 64)
    valid = [_raw("bvp", T0 + i / 4, 64.0, bvp[16 * i : 16 * (i + 1)]) for i in range(4 * 30)]

    async def scenario() -> None:
        sender = RawSender(hub)
        try:
            await sender.wait_for(["affect/", "status/", "raw/bvp/"])
            for frames in hostile:
                await sender.send(frames)
            for seq, msg in enumerate(valid):
                await sender.send(_frames(dataclasses.replace(msg, seq=seq)))
            await sender.send(_frames(affect))
            # the end marker: once the store reports it, everything before it is in the sink
            await sender.send(
                _frames(
                    Message(
                        kind="affect",
                        device="dev1",
                        modality="affect",
                        seq=1,
                        t0_s=t_end,
                        fs_hz=0.0,
                        meta={"event": "end"},
                    )
                )
            )
            # the sender closes with linger 0: only once the store has everything
            await asyncio.to_thread(store.wait_for_stderr, "end of device dev1")
        finally:
            sender.close()

    asyncio.run(scenario())
    summary = _last_report(store, "store:")
    assert "5 malformed messages dropped (json_number 1, json_size 1, rate 2, time 1)" in summary
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM affect").fetchone()[0] == 3  # one per task
        assert conn.execute("SELECT count(*) FROM physio WHERE signal = 'hr_bpm'").fetchone()[0] > 0
