"""Inference hands storage typed answers: :class:`inference.predict.AffectMeta` on one side of
the bus, :func:`storage.records.affect_records` on the other, through the real codec."""

from __future__ import annotations

import dataclasses

import pytest

from bus import Message, decode, encode
from inference.answer import Answer
from inference.predict import AffectMeta, affect_meta
from storage.records import affect_records

T0 = 1_700_000_000.0


def window(labels: dict | None) -> Message:
    meta = {
        "t_end": T0 + 20.0,
        "source": "replay",
        "quality": {"off_wrist": False, "motion": True, "missing_fraction": 0.25},
    }
    if labels is not None:
        meta["labels"] = labels
    return Message(kind="window", device="sim01", modality="window", seq=3, t0_s=T0, fs_hz=0.0, meta=meta)


ANSWERS = {
    "stress": Answer(
        label="stress",
        confidence=0.7,
        probs={"baseline": 0.1, "stress": 0.7, "amusement": 0.2},
        status="ok",
        model="m-1",
        calibration="rest@1700000000-1700000300",
    ),
    "anxiety": Answer(label=None, confidence=None, probs={}, status="low_quality", model="m-1", calibration=None),
}


@pytest.mark.parametrize("labels", [{"stress": "baseline", "anxiety": None}, None, {"stress": None}])
def test_answers_reach_storage_as_the_records_they_were(labels: dict | None) -> None:
    typed = AffectMeta.for_window(window(labels), ANSWERS, "m-1")
    assert typed.answers["stress"] is ANSWERS["stress"] and typed.t_end_s == T0 + 20.0
    msg = Message(
        kind="affect",
        device="sim01",
        modality="affect",
        seq=0,
        t0_s=T0 + 20.0,
        fs_hz=0.0,
        meta=affect_meta(window(labels), ANSWERS, "m-1"),
    )
    records = {r.task: r for r in affect_records(decode([bytes(f) for f in encode(msg)]))}
    assert set(records) == set(ANSWERS)
    for task, answer in ANSWERS.items():
        r = records[task]
        assert (r.label, r.confidence, dict(r.probs), r.status, r.model, r.calibration) == (
            answer.label,
            answer.confidence,
            dict(answer.probs),
            answer.status,
            answer.model,
            answer.calibration,
        )
        assert (r.time_s, r.t_start_s, r.source, r.motion, r.missing_fraction) == (T0 + 20.0, T0, "replay", True, 0.25)
        assert r.true_label == (labels or {}).get(task)
    # no truth at all: the wire form carries no "labels" (stores tell "unknown" from "none")
    assert ("labels" in msg.meta) == any(v is not None for v in (labels or {}).values())


def test_typed_meta_is_frozen() -> None:
    typed = AffectMeta.for_window(window(None), ANSWERS, "m-1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        typed.__setattr__("model", "other")
