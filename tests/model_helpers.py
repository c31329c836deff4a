"""Hand-built windows for the model and training tests: real ``preprocess.Window`` objects
whose class-dependent signals a small model can learn in a few epochs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from preprocess.window import MODALITIES, Quality, Window, array_shape


def quality(**kw) -> Quality:
    base: dict[str, Any] = dict(
        off_wrist=False,
        motion=False,
        missing_fraction=0.0,
        missing={m: 0.0 for m in MODALITIES},
        off_wrist_fraction=0.0,
        motion_fraction=0.0,
        flat=(),
        saturated=(),
        eda_artifact=False,
        invalid_samples=0,
        late_samples=0,
        duplicate_samples=0,
        timing_mismatch=False,
        usable=True,
    )
    return Quality(**(base | kw))


def window(device="d1", t0=0.0, labels=None, present=None, level=0.0, q=None, seed=0) -> Window:
    """A window whose EDA level and BVP rate depend on ``level`` (a class-dependent signal)."""
    rng = np.random.default_rng(seed)
    t = np.arange(1280) / 64.0
    signals = {
        "bvp": (np.sin(2 * np.pi * (1.0 + 0.5 * level) * t) * 50 + rng.normal(0, 5, 1280)).astype(np.float32),
        "eda": (2.0 + 3.0 * level + rng.normal(0, 0.1, 80)).astype(np.float32),
        "temp": (33.0 - 0.5 * level + rng.normal(0, 0.05, 80)).astype(np.float32),
        "acc": rng.normal(0, 0.02, (640, 3)).astype(np.float32),
    }
    present = {m: True for m in MODALITIES} | (present or {})
    return Window(
        device=device,
        t_start_s=t0,
        t_end_s=t0 + 20.0,
        signals=signals,
        masks={m: np.ones(array_shape(m)[0], bool) for m in MODALITIES},
        present=present,
        quality=q or quality(),
        labels={"stress": None, "anxiety": None, "emotion": None} | (labels or {}),
        source="replay",
    )


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is several times faster than
    two threads fighting other processes for the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
