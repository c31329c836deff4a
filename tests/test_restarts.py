"""``kill -9`` of each stage in the middle of a replay: every window lost is a stored ``bus_gap``
with its count, and a restarted preprocess keeps the replay's source and ground truth.

The stages run as processes on a hub, as a user starts them by hand. What should have been
stored is counted independently: the offline path cuts the very windows the live preprocess
cuts (``preprocess.offline.recording_windows``), so for each device the windows stored plus
the windows the store recorded as lost must equal the windows of the recording.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from pathlib import Path

import pytest
import torch

from bus import Hub, Subscriber
from inference.checkpoint import save_checkpoint
from inference.dataset import Normalizer
from inference.model import M3Sense, ModelConfig
from preprocess.offline import recording_windows
from replay.e4csv import read_source
from tests.conftest import Proc, run_cli

SPEED = "20"  # 6 minutes of signal in 18 s: time for a stage to die and come back in the middle
READY = {"store": "<-", "infer": "listening on", "preprocess": "subscribed"}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A tiny untrained network: what is answered does not matter here, only that each window is."""
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
    folder = tmp_path_factory.mktemp("restarts")
    return save_checkpoint(folder / "tiny", M3Sense(config), norm, {"trained_on": ["test"]})


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> tuple[Path, dict[str, dict[float, str | None]]]:
    """Two simulated wearers, 6 minutes, no faults; per device, each window's start and its
    emotion ground truth as the offline path cuts them."""
    src = tmp_path_factory.mktemp("restarts") / "rec"
    run_cli("simulate", str(src), "--minutes", "6", "--seed", "5", "--subjects", "2", "--no-faults", check=True)
    truth = {
        rec.device: {w.t_start_s: w.labels.get("emotion") for w in recording_windows(rec)} for rec in read_source(src)
    }
    return src, truth


class Pipeline:
    """store, infer and preprocess on the bus at ``bus`` (a hub's or a NATS server's address), each a
    process started (and restarted) by hand."""

    def __init__(self, bus: str, procs: list[Proc], tmp_path: Path, model: Path, store_flush_s: float = 0.2) -> None:
        self.db = tmp_path / "affect.db"
        self.args = {
            "store": [
                "store",
                "--bus",
                bus,
                "--sink",
                f"sqlite:{self.db}",
                "--flush-interval",
                str(store_flush_s),
                "--positions",
                str(tmp_path / "positions.json"),
            ],
            "infer": [
                "infer",
                "--bus",
                bus,
                "--model",
                str(model),
                "--tasks",
                "stress,emotion",
                "--state-dir",
                "none",
            ],
            "preprocess": ["preprocess", "--bus", bus],
        }
        self.bus, self.procs = bus, procs
        self.stages: dict[str, Proc] = {}
        for name in ("store", "infer", "preprocess"):
            self.start(name)

    def start(self, name: str) -> None:
        proc = Proc(self.args[name])
        self.procs.append(proc)
        proc.wait_for_stderr(READY[name], timeout=120)
        self.stages[name] = proc

    def kill_and_restart(self, name: str) -> None:
        self.stages[name].popen.send_signal(signal.SIGKILL)
        self.stages[name].popen.wait(timeout=10)
        self.start(name)

    def replay_killing(self, src: Path, name: str, after: int = 5) -> None:
        """Replay ``src``; once ``after`` answers are out, kill ``name`` and start it again; wait for
        the store to have every device."""

        async def scenario() -> None:
            async with Subscriber(self.bus, ["affect/"]) as sub:
                replay = Proc(["replay", str(src), "--bus", self.bus, "--speed", SPEED])
                self.procs.append(replay)
                for _ in range(after):
                    await sub.recv(120)
                await asyncio.to_thread(self.kill_and_restart, name)

        asyncio.run(scenario())
        for _ in range(2):
            self.stages["store"].wait_for_stderr("end of device", timeout=180)
        self.stages["store"].popen.terminate()
        assert self.stages["store"].popen.wait(timeout=30) in (0, 1, 130)

    def stored(self) -> tuple[dict[str, int], dict[str, int]]:
        """Per device: windows stored, and windows recorded lost (bus_gap rows in windows)."""
        with sqlite3.connect(self.db) as conn:
            windows = dict(conn.execute("SELECT device, count(DISTINCT t_start_s) FROM affect GROUP BY device"))
            lost = dict(
                conn.execute(
                    "SELECT device, sum(value) FROM device_status WHERE event = 'bus_gap' "
                    "AND json_extract(detail, '$.unit') = 'windows' GROUP BY device"
                )
            )
        return windows, {d: int(n) for d, n in lost.items()}


def _assert_every_window_accounted_for(pipe: Pipeline, truth: dict[str, dict[float, str | None]]) -> dict[str, int]:
    windows, lost = pipe.stored()
    assert set(windows) == set(truth)
    for device, expected in truth.items():
        assert windows[device] + lost.get(device, 0) == len(expected), (device, windows, lost, len(expected))
    assert sum(lost.values()) > 0, "the kill lost nothing: it came too late to test anything"
    return lost


@pytest.mark.parametrize("stage", ["store", "infer"])
def test_kill_9_of_a_stage_mid_replay_is_a_stored_gap_of_every_lost_window(
    stage: str, hub: Hub, procs: list[Proc], tmp_path: Path, model: Path, recording
) -> None:
    src, truth = recording
    pipe = Pipeline(hub.address, procs, tmp_path, model)
    pipe.replay_killing(src, stage)
    _assert_every_window_accounted_for(pipe, truth)


def test_kill_9_of_preprocess_keeps_source_and_ground_truth(
    hub: Hub, procs: list[Proc], tmp_path: Path, model: Path, recording
) -> None:
    src, truth = recording
    pipe = Pipeline(hub.address, procs, tmp_path, model)
    pipe.replay_killing(src, "preprocess")
    lost = _assert_every_window_accounted_for(pipe, truth)
    with sqlite3.connect(pipe.db) as conn:
        rows = conn.execute(
            "SELECT device, t_start_s, source, true_label FROM affect WHERE task = 'emotion'"
        ).fetchall()
        gaps = conn.execute("SELECT detail FROM device_status WHERE event = 'bus_gap'").fetchall()
    assert {source for _, _, source, _ in rows} == {"replay"}  # not "live": the restarted stage was told
    # every window, before and after the restart, carries the ground truth the offline path gives it
    assert [(d, t, label) for d, t, _, label in rows] == [(d, t, truth[d][t]) for d, t, _, _ in rows]
    assert sum(label is not None for *_, label in rows) > 0.9 * len(rows)
    assert all('"by":"grid"' in detail for (detail,) in gaps if '"unit":"windows"' in detail)
    assert sum(lost.values()) > 0
