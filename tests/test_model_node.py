"""The inference node: micro-batching (pure) and window/ → affect/ over a real loopback hub."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
import torch

from bus import Hub, Message, Publisher, Subscriber
from inference.checkpoint import load_checkpoint, save_checkpoint
from inference.dataset import Normalizer
from inference.model import M3Sense, ModelConfig
from inference.node import MicroBatcher, serve
from inference.predict import Predictor
from tests.model_helpers import quality, window

TINY = ModelConfig(
    cnn_channels=(8, 4),
    embed_dim=16,
    lstm_hidden=16,
    fusion_dim=16,
    task_dim=24,
    fc_dims=(24, 16),
    latent_dim=8,
    head_hidden=8,
)


def win(device: str, t0: float, **kw) -> Message:
    return window(device=device, t0=t0, **kw).to_message()


def end(device: str) -> Message:
    return Message(kind="window", device=device, modality="window", seq=0, t0_s=0.0, fs_hz=0.0, meta={"event": "end"})


def test_batches_by_size_then_by_age():
    b = MicroBatcher(max_batch=3, max_wait_s=0.05)
    assert b.push(win("a", 0), now_s=10.0) == [] and b.deadline_s == pytest.approx(10.05)
    assert b.push(win("b", 0), now_s=10.01) == []
    (full,) = b.push(win("a", 5), now_s=10.02)
    assert [m.device for m in full.windows] == ["a", "b", "a"] and b.deadline_s is None
    b.push(win("c", 0), now_s=11.0)
    assert b.due(11.04) == []
    (late,) = b.due(11.05)
    assert [m.device for m in late.windows] == ["c"] and b.flush() == []


def test_end_marker_flushes_pending_windows_first():
    b = MicroBatcher(max_batch=8, max_wait_s=1.0)
    b.push(win("a", 0), now_s=0.0)
    b.push(win("b", 0), now_s=0.0)
    out = b.push(end("a"), now_s=0.1)
    assert [len(d.windows) for d in out] == [2, 0]
    assert out[-1].ends[0].device == "a" and b.deadline_s is None


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Predictor:
    torch.manual_seed(1)
    norm = Normalizer(per_window=("bvp",), mean={"eda": 2.0, "temp": 33.0}, std={"eda": 1.0, "temp": 1.0})
    path = save_checkpoint(tmp_path_factory.mktemp("node") / "tiny", M3Sense(TINY), norm, {"trained_on": ["test"]})
    return Predictor(
        load_checkpoint(path),
        tasks=("stress", "emotion"),
        backend="onnx",
        threads=1,
        cache_dir=tmp_path_factory.mktemp("onnx"),
    )


def test_node_answers_every_window_of_every_device(predictor: Predictor, hub: Hub):
    devices = ("w1", "w2", "w3")
    sent = [win(d, 1000.0 + 5 * k, seed=k) for k in range(4) for d in devices]
    sent.insert(5, win("w2", 990.0, q=quality(off_wrist=True, usable=False)))

    async def main() -> None:
        ready = asyncio.Event()
        node = asyncio.create_task(
            serve(hub.address, predictor, max_batch=4, max_wait_s=0.02, on_ready=lambda _bus: ready.set())
        )
        async with Subscriber(hub.address, ["affect/"]) as sub, Publisher(hub.address) as pub:
            await asyncio.wait_for(ready.wait(), 30)
            topics = [f"window/{d}/" for d in devices] + [f"affect/{d}/" for d in devices]
            assert await pub.wait_for_subscribers(topics, 30) == []
            for m in sent:
                await pub.send(dataclasses.replace(m, seq=pub.next_seq(m.topic)))
            for d in devices:
                await pub.send(dataclasses.replace(end(d), seq=pub.next_seq(f"window/{d}/")))
            await pub.flush()
            got = [await sub.recv(30) for _ in range(len(sent) + len(devices))]
        node.cancel()
        await asyncio.gather(node, return_exceptions=True)

        affect = [m for m in got if m.meta.get("event") != "end"]
        ends = [m for m in got if m.meta.get("event") == "end"]
        assert sorted(m.device for m in ends) == sorted(devices)
        for d in devices:  # a device's end marker comes after all its answers
            mine = [i for i, m in enumerate(got) if m.device == d]
            assert got[mine[-1]].meta.get("event") == "end"
        assert sorted((m.device, m.meta["t_start"]) for m in affect) == sorted((m.device, m.t0_s) for m in sent)
        for m in affect:
            assert m.kind == "affect" and m.topic == f"affect/{m.device}/"
            assert m.t0_s == m.meta["t_end"] and m.meta["model"] == predictor.model_id
            assert set(m.meta["tasks"]) == {"stress", "emotion"}
            low = m.meta["quality"]["off_wrist"]
            for res in m.meta["tasks"].values():
                if low:
                    assert res["status"] == "low_quality" and res["label"] is None
                else:
                    assert res["status"] == "ok" and abs(sum(res["probs"].values()) - 1) < 1e-5

    asyncio.run(main())
