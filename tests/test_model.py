"""The M3Sense network: every fusion variant × task subset × modality mask, on a tiny config."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
import torch

from inference.model import (
    FUSIONS,
    M3Sense,
    ModelConfig,
    UnimodalEncoder,
    count_parameters,
    kl_to_standard_normal,
)
from tests.model_helpers import one_torch_thread  # noqa: F401  (autouse fixture)

# the shape every variant below shares; each test sets its fusion and modalities
TINY = ModelConfig(
    window_s=2.5,  # bvp 160 samples (32 segments), eda/temp 10 (2 segments), acc 80
    cnn_channels=(8, 4),
    embed_dim=16,
    lstm_hidden=16,
    fusion_dim=16,
    hamlet_heads=2,
    task_dim=24,
    fc_dims=(24, 16),
    latent_dim=8,
    head_hidden=8,
)
MODALITIES = ("bvp", "eda", "temp", "acc")
TASK_SUBSETS = [("stress",), ("anxiety", "emotion"), ("stress", "anxiety", "emotion")]
MASKS = {
    "all": (1, 1, 1, 1),
    "no_eda": (1, 0, 1, 1),  # a watch without EDA
    "bvp_only": (1, 0, 0, 0),
    "mixed_rows": None,  # a different mask in every row, one row with nothing present
}


def tiny(fusion: str) -> ModelConfig:
    return replace(TINY, fusion=fusion, modalities=MODALITIES)


def batch(cfg: ModelConfig, b: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(b, *cfg.input_shape(m), generator=g) for m in cfg.modalities}


def mask_for(name: str, b: int) -> torch.Tensor:
    if MASKS[name] is None:
        rows = list(itertools.product((0, 1), repeat=len(MODALITIES)))[:b]
        return torch.tensor(rows, dtype=torch.bool)
    return torch.tensor([MASKS[name]] * b, dtype=torch.bool)


@pytest.fixture(scope="module", params=FUSIONS)
def model(request) -> M3Sense:
    torch.manual_seed(333)
    return M3Sense(tiny(request.param))


@pytest.mark.parametrize("tasks", TASK_SUBSETS, ids="+".join)
@pytest.mark.parametrize("mask_name", list(MASKS))
def test_shapes_finite_backward(model: M3Sense, tasks, mask_name):
    cfg, b = model.cfg, 6
    model.train()
    mask = mask_for(mask_name, b)
    out = model(batch(cfg, b, 1), mask, tasks)
    assert list(out.logits) == list(tasks)
    for t in tasks:
        assert out.logits[t].shape == (b, len(cfg.classes[t]))
        assert out.mu[t].shape == out.logvar[t].shape == (b, cfg.latent_dim)
        assert torch.isfinite(out.logits[t]).all()
    zero = torch.zeros(())  # the sums' start: a tensor, so that the loss is one
    loss = sum(
        (torch.nn.functional.cross_entropy(out.logits[t], torch.zeros(b, dtype=torch.long)) for t in tasks), zero
    )
    loss = loss + 0.3 * sum((kl_to_standard_normal(out.mu[t], out.logvar[t]).mean() for t in tasks), zero)
    model.zero_grad()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    # the shared unimodal encoder of a present modality learns; an absent one gets no gradient
    for i, m in enumerate(cfg.modalities):
        encoder = model.encoders[m]
        assert isinstance(encoder, UnimodalEncoder)
        lstm_grad = encoder.lstm.get_parameter("weight_hh_l0").grad
        assert lstm_grad is not None
        assert (lstm_grad.abs().sum() > 0) == bool(mask[:, i].any()), m


@pytest.mark.parametrize("mask_name", list(MASKS))
def test_eval_is_deterministic(model: M3Sense, mask_name):
    model.eval()
    x, mask = batch(model.cfg, 5, 2), mask_for(mask_name, 5)
    with torch.no_grad():
        a, b = model(x, mask), model(x, mask)
    for t in model.cfg.tasks:
        assert torch.equal(a.logits[t], b.logits[t])


@pytest.mark.parametrize("mask_name", ["no_eda", "bvp_only", "mixed_rows"])
def test_masked_modality_has_no_effect(model: M3Sense, mask_name):
    """Replacing a missing modality's data (even with NaN) changes no output."""
    model.eval()
    b = 7
    x, mask = batch(model.cfg, b, 3), mask_for(mask_name, b)
    other = {m: v.clone() for m, v in x.items()}
    for i, m in enumerate(model.cfg.modalities):
        missing = ~mask[:, i]
        other[m][missing] = torch.randn_like(other[m][missing]) * 50
        other[m][missing, :3] = float("nan")
    with torch.no_grad():
        a, c = model(x, mask), model(other, mask)
    for t in model.cfg.tasks:
        assert torch.isfinite(c.logits[t]).all()
        torch.testing.assert_close(a.logits[t], c.logits[t])


def test_present_modality_does_change_output(model: M3Sense):
    """The converse: a present modality is not ignored (guards the masking test from passing
    because the model ignores its inputs altogether)."""
    model.eval()
    x, mask = batch(model.cfg, 4, 4), mask_for("all", 4)
    other = dict(x, eda=x["eda"] + 3.0)
    with torch.no_grad():
        a, c = model(x, mask), model(other, mask)
    assert not torch.allclose(a.logits["stress"], c.logits["stress"])


def test_task_subset_matches_full_forward(model: M3Sense):
    """Computing one task alone gives the same answer as computing all of them."""
    model.eval()
    x, mask = batch(model.cfg, 3, 5), mask_for("no_eda", 3)
    with torch.no_grad():
        full, one = model(x, mask), model(x, mask, ("emotion",))
    torch.testing.assert_close(full.logits["emotion"], one.logits["emotion"])


def test_unknown_task_rejected():
    with pytest.raises(ValueError, match="subset"):
        M3Sense(tiny("cam"))(batch(tiny("cam"), 1, 0), mask_for("all", 1), ("workload",))


def test_paper_sized_cam_matches_table6():
    """CAM, three tasks, three modalities: within 10 % of the paper's 2,251 K parameters."""
    n = count_parameters(M3Sense(ModelConfig()))
    assert abs(n - 2_251_000) / 2_251_000 < 0.10, n


def test_config_json_roundtrip():
    cfg = tiny("hamlet")
    assert ModelConfig.from_json(cfg.to_json()) == cfg


def test_kl_is_zero_at_prior_and_positive_elsewhere():
    z = torch.zeros(2, 4)
    assert torch.equal(kl_to_standard_normal(z, z), torch.zeros(2))
    assert (kl_to_standard_normal(z + 1.0, z) > 0).all()
