"""The rules every answer follows (low quality, calibrating, uncertain, ok), the shipped bundle,
and button presses riding on windows into the wearer's calibration."""

from __future__ import annotations

import json

import numpy as np
import pytest

import preprocess
from common.errors import DataError, UserError
from inference.answer import Answerer, Calibrations, load_answerer
from inference.baselines import FeatureModel, load_feature_model, make_estimator, save_feature_model
from inference.calibration import CalibrationConfig, CalibrationStore
from inference.features import message_features
from replay.simulate import simulate_recordings
from tests.conftest import run_cli
from tests.model_helpers import one_torch_thread

__all__ = ["one_torch_thread"]


@pytest.fixture(scope="module")
def wearer_windows():
    """A simulated wearer who marks a rest with the E4 button: its windows as bus messages."""
    rec = simulate_recordings(minutes=16, seed=77, subjects=1, mark_rest=True, off_wrist=False)[0]
    return rec, [w.to_message() for w in preprocess.recording_windows(rec)]


def test_presses_ride_on_windows_and_mark_the_rest(wearer_windows):
    rec, msgs = wearer_windows
    carried = sorted({t for m in msgs for t in m.meta["tags"]})
    assert carried == pytest.approx(sorted(rec.tags_s.tolist()))
    answerer = load_answerer()
    assert answerer.calibration_config is not None, "the shipped stress model calibrates its wearers"
    cals = Calibrations(answerer.calibration_config)
    answers = answerer.answer_windows(msgs, cals)
    stress = [a["stress"] for a in answers]
    first = next(i for i, a in enumerate(stress) if a.status != "calibrating")
    assert first > 0 and all(a.status == "calibrating" and a.label is None for a in stress[:first])
    ref = cals.get(rec.device).reference
    assert ref is not None
    assert ref.kind == "tag" and stress[first].calibration == ref.id
    assert msgs[first].t0_s >= ref.t_end_s - 20  # answered only once the marked rest is over
    # anxiety and emotion come from the uncalibrated network: answered from the start
    assert answers[0]["anxiety"].status in ("ok", "low_quality")


def test_low_quality_windows_get_no_answer():
    rec = simulate_recordings(minutes=16, seed=77, subjects=1)[0]
    off = [w.to_message() for w in preprocess.recording_windows(rec) if w.quality.off_wrist]
    assert off, "the simulated session has an off-wrist stretch"
    answers = load_answerer().answer_windows(off, Calibrations(CalibrationConfig()))
    assert all(
        a.status == "low_quality" and a.label is None and a.confidence is None for per in answers for a in per.values()
    )


def test_below_its_confidence_threshold_an_answer_is_withheld(tmp_path, wearer_windows):
    _, msgs = wearer_windows
    x = message_features(msgs[:90])
    y = np.random.default_rng(0).integers(0, 3, len(x))  # labels that say nothing: unsure answers
    path = save_feature_model(
        tmp_path / "unsure.onnx",
        make_estimator("lr", 0).fit(x, y),
        kind="lr",
        task="stress",
        classes=("baseline", "stress", "amusement"),
        calibrated=False,
        calibration=None,
        floor=None,
        temperature=1.0,
        min_confidence=0.99,
        provenance={},
    )
    fm = load_feature_model(path)
    answers = Answerer({"stress": fm}, model_id=fm.model_id).answer_windows(msgs[:40], None)
    usable = [a["stress"] for a in answers if a["stress"].status != "low_quality"]
    assert usable and all(a.status == "uncertain" and a.label is None and a.probs for a in usable)


def test_the_shipped_bundle(tmp_path):
    answerer = load_answerer()
    info = answerer.info()
    assert set(answerer.tasks) == {"stress", "anxiety", "emotion"}
    assert info["tasks"]["stress"]["calibration"] == "wearer"
    assert info["calibration"] == CalibrationConfig().to_json()
    only = load_answerer(tasks=["anxiety"])
    assert only.tasks == ("anxiety",) and only.calibration_config is None
    with pytest.raises(UserError):
        load_answerer(tmp_path / "missing.bundle.json")
    bad = tmp_path / "bad.bundle.json"
    stress = answerer.models["stress"]
    assert isinstance(stress, FeatureModel), "the shipped stress model is a feature model"
    bad.write_text(json.dumps({"format": "m3sense-bundle", "tasks": {"emotion": str(stress.path)}}))
    with pytest.raises(DataError, match="answers stress"):
        load_answerer(bad)


def test_a_restarted_node_keeps_its_wearers_and_the_cli_shows_and_resets_them(tmp_path, wearer_windows):
    rec, msgs = wearer_windows
    answerer = load_answerer()
    assert answerer.calibration_config is not None
    whole = answerer.answer_windows(msgs, Calibrations(answerer.calibration_config))
    store = CalibrationStore(tmp_path / "state")
    cut = len(msgs) // 4  # mid-rest: the node dies before the reference exists
    first = answerer.answer_windows(msgs[:cut], Calibrations(answerer.calibration_config, store))
    again = answerer.answer_windows(msgs[cut:], Calibrations(answerer.calibration_config, store))
    assert [a["stress"] for a in first + again] == [a["stress"] for a in whole]
    shown = json.loads(
        run_cli("calibration", "show", rec.device, "--state-dir", str(store.folder), "--json", check=True).stdout
    )
    assert shown[rec.device]["reference"]["kind"] == "tag"
    assert run_cli("calibration", "reset", rec.device, "--state-dir", str(store.folder)).returncode == 0
    assert run_cli("calibration", "show", rec.device, "--state-dir", str(store.folder)).returncode == 2
    assert run_cli("calibration", "reset", rec.device, "--state-dir", str(store.folder)).returncode == 1


def test_a_window_with_missing_or_odd_arrays_is_answered_low_quality_not_a_crash(wearer_windows):
    from bus import Message

    _, msgs = wearer_windows
    good = msgs[40]
    odd = Message(
        kind=good.kind,
        device=good.device,
        modality=good.modality,
        seq=1,
        t0_s=good.t0_s + 5,
        fs_hz=0.0,
        arrays={"bvp": good.arrays["bvp"][:100]},
        meta=good.meta,
    )
    answers = load_answerer().answer_windows([good, odd], Calibrations(CalibrationConfig()))
    assert answers[0]["anxiety"].status in ("ok", "uncertain")
    assert {a.status for a in answers[1].values()} <= {"low_quality", "calibrating"}


def test_an_unwritable_state_folder_costs_memory_not_answers(tmp_path, wearer_windows):
    _, msgs = wearer_windows
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the state folder should be")
    answerer = load_answerer()
    assert answerer.calibration_config is not None
    kept = answerer.answer_windows(msgs, Calibrations(answerer.calibration_config, CalibrationStore(blocker / "cal")))
    plain = answerer.answer_windows(msgs, Calibrations(answerer.calibration_config))
    assert [a["stress"] for a in kept] == [a["stress"] for a in plain]
