"""Checkpoints (safetensors + JSON, one loader), ONNX parity with PyTorch, the predictor and
the affect message contents it produces."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from common.errors import DataError
from inference.answer import Answerer
from inference.checkpoint import load_checkpoint, save_checkpoint
from inference.dataset import Normalizer
from inference.model import M3Sense, ModelConfig
from inference.onnx_export import OnnxRunner, export_onnx
from inference.predict import Predictor, affect_meta
from tests.model_helpers import one_torch_thread, quality, window  # noqa: F401  (autouse fixture)

TINY = ModelConfig(
    fusion="cam",
    cnn_channels=(8, 4),
    embed_dim=16,
    lstm_hidden=16,
    fusion_dim=16,
    task_dim=24,
    fc_dims=(24, 16),
    latent_dim=8,
    head_hidden=8,
)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(333)
    model = M3Sense(TINY).eval()
    norm = Normalizer(per_window=("bvp",), mean={"eda": 2.0, "temp": 33.0}, std={"eda": 1.5, "temp": 0.5})
    path = save_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "tiny", model, norm, {"trained_on": ["synthetic(seed=1)"], "seed": 333}
    )
    return path, model


def inputs(b: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = {
        "bvp": rng.normal(0, 50, (b, 1280, 1)),
        "eda": rng.normal(2, 1, (b, 80, 1)),
        "temp": rng.normal(33, 1, (b, 80, 1)),
    }
    present = np.ones((b, 3), bool)
    present[1::3, 1] = False
    return {m: v.astype(np.float32) for m, v in x.items()}, present


def test_roundtrip_same_outputs_and_info(saved):
    path, model = saved
    ckpt = load_checkpoint(path)
    assert ckpt.config == TINY
    for a, b in zip(model.state_dict().values(), ckpt.model.state_dict().values()):
        assert torch.equal(a, b)
    info = load_checkpoint(path.with_suffix(".json")).info()  # either file names the checkpoint
    assert info["params"] == sum(p.numel() for p in model.parameters())
    assert info["fusion"] == "cam" and info["modalities"] == ["bvp", "eda", "temp"]
    assert info["tasks"]["stress"] == ["baseline", "stress", "amusement"]
    assert info["trained_on"] == ["synthetic(seed=1)"]
    assert ckpt.model_id.startswith("m3sense-cam-")
    doc = json.loads(path.with_suffix(".json").read_text())
    assert doc["inputs"]["shapes"]["bvp"] == [1280, 1] and doc["normalisation"]["bvp"] == {"mode": "per_window"}
    assert doc["provenance"]["code_version"]


def test_loader_refuses_foreign_and_pickled_files(saved, tmp_path):
    path, _ = saved
    with pytest.raises(DataError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "absent.safetensors")
    (tmp_path / "bad.json").write_text(json.dumps({"format": "something-else"}))
    (tmp_path / "bad.safetensors").write_bytes(path.read_bytes())
    with pytest.raises(DataError, match="not an m3sense-checkpoint"):
        load_checkpoint(tmp_path / "bad.safetensors")
    # a pickle under the weights name is rejected by safetensors, never unpickled
    (tmp_path / "evil.json").write_text(path.with_suffix(".json").read_text())
    (tmp_path / "evil.safetensors").write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(DataError, match="safetensors"):
        load_checkpoint(tmp_path / "evil")
    # weights that do not fit the config
    cfg = json.loads(path.with_suffix(".json").read_text())
    cfg["model"]["lstm_hidden"] = 32
    (tmp_path / "misfit.json").write_text(json.dumps(cfg))
    (tmp_path / "misfit.safetensors").write_bytes(path.read_bytes())
    with pytest.raises(DataError, match="do not fit"):
        load_checkpoint(tmp_path / "misfit.json")


@pytest.mark.parametrize("tasks", [None, ("anxiety",)])
def test_onnx_matches_pytorch(saved, tmp_path, tasks):
    path, _ = saved
    ckpt = load_checkpoint(path)
    onnx_path = export_onnx(ckpt.model, tmp_path / "m.onnx", tasks)
    runner = OnnxRunner(onnx_path, threads=1)
    assert runner.tasks == (tasks or TINY.tasks)
    x, present = inputs(5)
    xn = {m: ckpt.normalizer.apply(m, v) for m, v in x.items()}
    got = runner.run(xn, present)
    with torch.no_grad():
        ref = ckpt.model({m: torch.from_numpy(v) for m, v in xn.items()}, torch.from_numpy(present), runner.tasks)
    for t in runner.tasks:
        np.testing.assert_allclose(got[t], torch.softmax(ref.logits[t], -1).numpy(), atol=1e-5)
    x1, p1 = inputs(1, seed=3)  # the batch axis is dynamic
    assert runner.run({m: ckpt.normalizer.apply(m, v) for m, v in x1.items()}, p1)[runner.tasks[0]].shape[0] == 1


def test_predictor_backends_agree_and_answer_messages(saved, tmp_path):
    path, _ = saved
    ckpt = load_checkpoint(path)
    x, present = inputs(6, seed=1)
    a = Predictor(ckpt, backend="torch").probs(x, present)
    b = Predictor(ckpt, backend="onnx", threads=1, cache_dir=tmp_path).probs(x, present)
    for t in TINY.tasks:
        np.testing.assert_allclose(a[t], b[t], atol=1e-5)
        np.testing.assert_allclose(a[t].sum(axis=1), 1.0, atol=1e-5)

    pred = Predictor(ckpt, tasks=("stress", "emotion"), backend="onnx", cache_dir=tmp_path)
    msgs = [
        window(seed=1).to_message(),
        window(q=quality(off_wrist=True, usable=False)).to_message(),
        window(present={"eda": False}, seed=2).to_message(),
    ]
    out = pred.predict_messages(msgs)
    assert set(out[0]) == {"stress", "emotion"}
    ok = out[0]["stress"]
    assert ok["status"] == "ok" and ok["label"] in TINY.classes["stress"]
    assert ok["confidence"] == pytest.approx(max(ok["probs"].values()))
    assert out[1]["stress"] == {
        "label": None,
        "confidence": None,
        "probs": {},
        "status": "low_quality",
        "model": pred.model_id,
        "calibration": None,
    }
    assert out[2]["emotion"]["status"] == "ok"
    answers = Answerer({t: pred for t in pred.tasks}, model_id=pred.model_id).answer_windows(msgs[:1], None)[0]
    assert {t: a.to_json() for t, a in answers.items()} == out[0]
    meta = affect_meta(msgs[0], answers, pred.model_id)
    assert meta["t_start"] == msgs[0].t0_s and meta["t_end"] == msgs[0].t0_s + 20.0
    assert meta["model"] == ckpt.model_id and meta["quality"]["off_wrist"] is False
    json.dumps(meta)  # it must travel as message meta


def test_predictor_ignores_a_missing_modality(saved):
    """A watch without EDA: whatever sits in the EDA array, the answer is the same."""
    ckpt = load_checkpoint(saved[0])
    pred = Predictor(ckpt, backend="torch")
    w1 = window(present={"eda": False}, seed=4).to_message()
    arrays = dict(w1.arrays, eda=np.full(80, 37.0, np.float32))
    w2 = type(w1)(
        **{
            **{f: getattr(w1, f) for f in ("kind", "device", "modality", "seq", "t0_s", "fs_hz", "meta")},
            "arrays": arrays,
        }
    )
    a, b = pred.predict_messages([w1, w2])
    assert a == b
