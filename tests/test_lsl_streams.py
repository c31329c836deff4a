"""What goes into which LSL outlet (labstream.streams, pure): no pylsl, no sockets."""

from __future__ import annotations

import math

import numpy as np

from bus import Message
from labstream.streams import (
    AFFECT_NUMBERS,
    AFFECT_STATE,
    ALL_SPECS,
    RAW_SPECS,
    chunks_of,
)
from tests.servers import affect_meta

T0 = 1_700_000_000.0


def message(kind: str, modality: str, samples=(), fs: float = 0.0, meta=None) -> Message:
    return Message(
        kind=kind,
        device="d1",
        modality=modality,
        seq=0,
        t0_s=T0,
        fs_hz=fs,
        samples=np.asarray(samples, dtype=np.float64),
        meta=meta or {},
    )


def test_source_ids_are_stable_and_unique_per_device_and_stream() -> None:
    ids = [s.source_id("d1") for s in ALL_SPECS]
    assert len(set(ids)) == len(ids) and all(i.startswith("m3sense/d1/") for i in ids)
    assert RAW_SPECS["eda"].source_id("d1") == "m3sense/d1/EDA" != RAW_SPECS["eda"].source_id("d2")


def test_raw_chunks_keep_every_sample_at_its_own_time() -> None:
    acc = np.arange(18).reshape(6, 3)
    (chunk,) = chunks_of(message("raw", "acc", acc, fs=32.0))
    assert isinstance(chunk.values, np.ndarray)  # numbers: an array (strings: a list of rows)
    assert chunk.spec is RAW_SPECS["acc"] and chunk.values.shape == (6, 3)
    np.testing.assert_array_equal(chunk.values, acc)
    np.testing.assert_allclose(chunk.times_s, T0 + np.arange(6) / 32.0)
    (ibi,) = chunks_of(message("raw", "ibi", [0.8]))
    assert isinstance(ibi.values, np.ndarray)
    assert ibi.times_s.tolist() == [T0] and ibi.values.tolist() == [[0.8]]
    (tag,) = chunks_of(message("raw", "tag"))
    assert tag.values == [["tag"]]
    # what has no outlet gives nothing: battery samples, labels, status, an empty chunk
    assert chunks_of(message("raw", "battery", [0.8])) == []
    assert chunks_of(message("label", "label", meta={"task": "stress"})) == []
    assert chunks_of(message("status", "status", meta={"event": "start"})) == []
    assert chunks_of(message("raw", "eda", [], fs=4.0)) == []


def test_affect_windows_say_why_a_task_has_no_label() -> None:
    meta = affect_meta(T0, labels={"stress": "baseline"})
    del meta["tasks"]["emotion"]
    meta["tasks"]["anxiety"].update(label=None, status="uncertain", confidence=0.4)
    states, numbers = chunks_of(message("affect", "affect", meta=meta))
    assert states.spec is AFFECT_STATE and states.values == [["baseline", "uncertain", "no_answer"]]
    row = dict(zip(AFFECT_NUMBERS.channels, numbers.values[0]))
    assert row["stress_p_baseline"] == 0.7 and row["anxiety_confidence"] == 0.4
    assert math.isnan(row["emotion_confidence"]) and math.isnan(row["emotion_p_high"])
    meta["t_end"] = float("nan")
    assert chunks_of(message("affect", "affect", meta=meta)) == []
    assert chunks_of(message("affect", "affect", meta={"event": "end"})) == []  # the inference node's end marker
