"""Transfer to a new task: the frozen representation and the old tasks' answers do not move,
the new task's network does; ``train --init --freeze encoders`` writes a checkpoint that loads."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from inference.checkpoint import load_checkpoint
from inference.dataset import Normalizer, WindowSet, windows_from_messages
from inference.model import M3Sense, ModelConfig
from inference.train import TrainConfig, to_tensors, train_model
from inference.transfer import frozen_parts, transfer_model
from tests.conftest import run_cli
from tests.model_helpers import one_torch_thread, window  # noqa: F401  (autouse fixture)

# the shape both tests share; each sets its fusion, tasks and classes
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
CLASSES = ModelConfig().classes


def windows(cfg: ModelConfig, n: int = 24) -> WindowSet:
    """Windows whose anxiety label follows a class-dependent signal."""
    ws = [
        window(
            device=f"d{i % 3}",
            t0=10.0 * i,
            level=float(i % 2),
            seed=i,
            labels={"anxiety": ("low", "high")[i % 2], "stress": "baseline"},
        )
        for i in range(n)
    ]
    return windows_from_messages(
        [w.to_message() for w in ws],
        modalities=cfg.modalities,
        shapes={m: cfg.input_shape(m) for m in cfg.modalities},
        tasks=cfg.tasks,
        classes=cfg.classes,
        source="test",
    )


@pytest.mark.parametrize("fusion", ["cam", "hamlet"])
def test_frozen_parts_and_old_answers_do_not_move(fusion):
    torch.manual_seed(0)
    source = M3Sense(replace(TINY, fusion=fusion, tasks=("stress", "emotion"), classes=CLASSES)).eval()
    model = transfer_model(source, ("anxiety",), CLASSES, seed=1)
    assert model.cfg.tasks == ("stress", "emotion", "anxiety")
    assert set(frozen_parts(model)) == {
        "encoders",
        "fusion",
        "recognition",
        "task_encoders.stress",
        "task_encoders.emotion",
        "heads.stress",
        "heads.emotion",
    }
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ws = windows(model.cfg)
    ws = ws.subset(np.flatnonzero(ws.labels[:, 2] >= 0))
    ws = replace(ws, labels=np.where(np.array([False, False, True])[None, :], ws.labels, -1))
    data = to_tensors(ws, Normalizer.fit(ws))
    train_model(model, TrainConfig(epochs=2, batch_size=8, seed=1), data, None)
    after = model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    # only the new task's networks learned; BatchNorm statistics of the frozen parts stayed too
    assert moved and all(k.startswith(("task_encoders.anxiety.", "heads.anxiety.")) for k in moved)
    assert any(k.startswith("heads.anxiety.") for k in moved)
    x = {m: data.inputs[m][:6] for m in model.cfg.modalities}
    old = source(x, data.present[:6], ("stress", "emotion"))
    new = model.eval()(x, data.present[:6], ("stress", "emotion"))
    for t in ("stress", "emotion"):
        assert torch.allclose(old.logits[t], new.logits[t], atol=1e-6)


def test_a_task_the_checkpoint_has_gets_a_fresh_head_on_its_own_encoder():
    torch.manual_seed(0)
    source = M3Sense(replace(TINY, tasks=("stress", "anxiety"), classes=CLASSES)).eval()
    model = transfer_model(source, ("anxiety",), CLASSES, seed=2)
    assert model.cfg.tasks == ("stress", "anxiety")
    old, new = source.state_dict(), model.state_dict()
    assert torch.equal(old["task_encoders.anxiety.net.0.weight"], new["task_encoders.anxiety.net.0.weight"])
    assert not torch.equal(old["heads.anxiety.net.0.weight"], new["heads.anxiety.net.0.weight"])
    assert "task_encoders.anxiety" not in frozen_parts(model)


DATA = "synthetic?minutes=4&subjects=3&seed=4"


def test_train_init_freeze_encoders_command(tmp_path):
    """A stress+emotion checkpoint learns anxiety from other recordings: the new checkpoint
    loads, answers all three, says what it started from, and its old tasks' weights are the
    base's, bit for bit."""
    base = tmp_path / "base.safetensors"
    run_cli(
        "train",
        "--data",
        f"{DATA}&tasks=stress,emotion",
        "--tasks",
        "stress,emotion",
        "--epochs",
        "1",
        "--threads",
        "1",
        "--out",
        str(base),
        check=True,
    )
    new = tmp_path / "new.safetensors"
    proc = run_cli(
        "train",
        "--init",
        str(base),
        "--freeze",
        "encoders",
        "--tasks",
        "anxiety",
        "--data",
        "synthetic?minutes=4&subjects=3&seed=9",
        "--epochs",
        "1",
        "--threads",
        "1",
        "--json",
        "--out",
        str(new),
        check=True,
    )
    assert set(json.loads(proc.stdout)) == {"anxiety"}
    ckpt = load_checkpoint(new)
    assert ckpt.config.tasks == ("stress", "emotion", "anxiety")
    init = ckpt.provenance["init"]
    assert init["learned"] == ["anxiety"] and init["model"] == load_checkpoint(base).model_id
    assert "encoders" in init["frozen"] and "heads.stress" in init["frozen"]
    assert (
        ckpt.provenance["tasks_learned_from"]["stress"]
        == load_checkpoint(base).provenance["tasks_learned_from"]["stress"]
    )
    a, b = load_file(str(base)), load_file(str(new))
    for k, v in a.items():
        if k != "fusion.query.weight":
            assert torch.equal(v, b[k]), k
    assert torch.equal(a["fusion.query.weight"], b["fusion.query.weight"][:, :2])


def test_init_errors_are_one_line(tmp_path):
    proc = run_cli("train", "--init", str(tmp_path / "none.safetensors"), "--tasks", "anxiety", "--data", DATA)
    assert proc.returncode == 2 and "go together" in proc.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    (tmp_path / "bad.safetensors").write_bytes(b"not weights")
    proc = run_cli("train", "--init", str(bad), "--freeze", "encoders", "--tasks", "anxiety", "--data", DATA)
    assert proc.returncode == 2 and "not an m3sense-checkpoint file" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
