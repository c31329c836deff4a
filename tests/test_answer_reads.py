"""infer computes window features only for the windows something reads: an answer (the window
is not low quality) or a wearer's reference (usable by the calibration's own rule, which a
configuration may make looser than the answers' quality gate). These tests hold both sides."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from bus import Message
from inference.answer import Calibrations, load_answerer
from inference.calibration import CalibrationConfig
from preprocess import recording_windows
from replay import simulate_recordings


@pytest.fixture(scope="module")
def windows() -> list[Message]:
    recs = simulate_recordings(minutes=8, seed=11, subjects=1, mark_rest=True)
    return [w.to_message() for r in recs for w in recording_windows(r)]


def _with_quality(windows: list[Message], **quality) -> list[Message]:
    return [replace(w, meta={**w.meta, "quality": {**dict(w.meta.get("quality") or {}), **quality}}) for w in windows]


def _reference(windows: list[Message], config: CalibrationConfig):
    answerer = load_answerer()
    cal = Calibrations(config)
    answers = []
    for i in range(0, len(windows), 32):
        answers += answerer.answer_windows(windows[i : i + 32], cal)
    return cal.get(windows[0].device).reference, answers


def test_windows_too_gappy_to_answer_still_feed_a_loose_reference(windows) -> None:
    """40 % missing: below the answers' quality gate (30 %), within a configured 50 % for the
    reference: the reference is the one the same windows give when flagged complete."""
    loose = CalibrationConfig(minutes=2, search_minutes=4, max_missing_fraction=0.5)
    complete, _ = _reference(_with_quality(windows, missing_fraction=0.0), loose)
    gappy, answers = _reference(_with_quality(windows, missing_fraction=0.4), loose)
    assert complete is not None and gappy is not None
    assert all(a.status == "low_quality" for row in answers for a in row.values())
    np.testing.assert_array_equal(gappy.mean, complete.mean)
    np.testing.assert_array_equal(gappy.sd, complete.sd)


def test_off_wrist_windows_are_answered_low_quality_and_the_rest_as_before(windows) -> None:
    config = CalibrationConfig(minutes=2, search_minutes=4)
    _, before = _reference(windows, config)
    off = [replace(w, meta={**w.meta, "quality": {**w.meta["quality"], "off_wrist": True}}) for w in windows[-10:]]
    _, after = _reference(windows[:-10] + off, config)
    for a_row, b_row in zip(after[:-10], before[:-10]):  # the network's batches differ: the last bits may
        for task, a in a_row.items():
            b = b_row[task]
            assert (a.label, a.status, a.calibration) == (b.label, b.status, b.calibration)
            assert a.probs.keys() == b.probs.keys()
            assert all(abs(a.probs[c] - b.probs[c]) < 1e-5 for c in a.probs)
    assert all(a.status == "low_quality" and a.label is None for row in after[-10:] for a in row.values())


def test_windows_answered_but_too_gappy_for_a_reference_are_answered_from_their_features(windows) -> None:
    """20 % missing: answered (within the 30 % gate), not usable for a strict 10 % reference. The
    stress model reads their features: the answers equal those of the same windows complete."""
    strict = CalibrationConfig(minutes=2, search_minutes=4, max_missing_fraction=0.1)
    late = [i for i, w in enumerate(windows) if w.t0_s > windows[0].t0_s + 6 * 60]
    assert late
    k = late[0]
    _, complete = _reference(windows, strict)
    _, gappy = _reference(windows[:k] + _with_quality(windows[k:], missing_fraction=0.2), strict)
    assert any(a.status == "ok" and a.calibration for row in gappy[k:] for a in row.values())
    for a_row, b_row in zip(gappy[k:], complete[k:]):
        for task, a in a_row.items():
            b = b_row[task]
            assert (a.label, a.status, a.calibration) == (b.label, b.status, b.calibration), task
            assert all(abs(a.probs[c] - b.probs[c]) < 1e-5 for c in a.probs)
