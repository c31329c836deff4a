"""Small hand-made E4 recordings and arbitrary chunkings of them, for the preprocess tests.

``replay.chunks.recording_messages`` cuts at the wristband's packet sizes; these tests need
any cut (whole, sample by sample, Hypothesis' choice), so the messages are built here the
same way: a chunk is due at its last sample, chunks go out in due order, labels at their
start, framed by status start/end.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import pairwise

import numpy as np

from bus import LABEL, RAW, STATUS, Message
from preprocess import MODALITIES, Window
from replay import PERIODIC, LabelInterval, Recording, Signal

T0 = 1_700_000_000.0  # a multiple of the 5 s hop: windows start at the recording start


def make_recording(
    duration_s: float = 80.0,
    *,
    seed: int = 0,
    t0_s: float = T0,
    off_wrist: Sequence[tuple[float, float]] = (),
    motion: Sequence[tuple[float, float]] = (),
    labels: Sequence[LabelInterval] = (),
    device: str = "dev1",
) -> Recording:
    """A plausible worn wristband; fault intervals are offsets (s) from ``t0_s``."""
    rng = np.random.default_rng(seed)

    def times(m: str) -> np.ndarray:
        fs = PERIODIC[m][0]
        return np.arange(round(duration_s * fs)) / fs

    def inside(t: np.ndarray, spans: Sequence[tuple[float, float]]) -> np.ndarray:
        hit = np.zeros(t.size, dtype=bool)
        for a, b in spans:
            hit |= (t >= a) & (t < b)
        return hit

    t = times("bvp")
    bvp = 40 * np.sin(2 * np.pi * 1.2 * t) + 10 * np.sin(2 * np.pi * 2.4 * t + 1) + rng.normal(0, 3, t.size)
    t = times("eda")
    eda = 1.5 + 0.3 * np.sin(2 * np.pi * t / 60) + rng.normal(0, 0.01, t.size)
    eda[inside(t, off_wrist)] = rng.uniform(0.0, 0.01, inside(t, off_wrist).sum())
    temp = 33.0 + 0.002 * t + rng.normal(0, 0.02, t.size)
    temp[inside(t, off_wrist)] = 24.0
    t = times("acc")
    acc = np.array([10.0, -20.0, 58.0]) + rng.normal(0, 1.0, (t.size, 3))
    acc[inside(t, motion)] += rng.normal(0, 40.0, (inside(t, motion).sum(), 3))
    acc = np.clip(np.round(acc), -128, 127).astype(np.int16)
    values = {"bvp": bvp, "eda": eda, "temp": temp, "acc": acc}
    signals = {m: Signal(modality=m, t0_s=t0_s, fs_hz=PERIODIC[m][0], values=v) for m, v in values.items()}
    return Recording(device=device, source="test", signals=signals, labels=tuple(labels))


def chunk_messages(rec: Recording, cuts: Mapping[str, Sequence[int]], *, source: str = "replay") -> list[Message]:
    """The messages of ``rec`` with each modality cut at the given sample indices."""
    entries: list[tuple[float, int, Message]] = []
    for order, m in enumerate(MODALITIES):
        sig = rec.signals[m]
        bounds = [0, *sorted({c for c in cuts.get(m, ()) if 0 < c < sig.n}), sig.n]
        for seq, (a, b) in enumerate(pairwise(bounds)):
            t0 = sig.t0_s + a / sig.fs_hz
            due = sig.t0_s + (b - 1) / sig.fs_hz
            entries.append(
                (
                    due,
                    order,
                    Message(
                        kind=RAW,
                        device=rec.device,
                        modality=m,
                        seq=seq,
                        t0_s=t0,
                        fs_hz=sig.fs_hz,
                        samples=sig.values[a:b],
                    ),
                )
            )
    for seq, iv in enumerate(sorted(rec.labels, key=lambda iv: iv.start_s)):
        meta = {"task": iv.task, "label": iv.label, "start_s": iv.start_s, "end_s": iv.end_s}
        entries.append(
            (
                iv.start_s,
                -1,
                Message(kind=LABEL, device=rec.device, modality=LABEL, seq=seq, t0_s=iv.start_s, fs_hz=0.0, meta=meta),
            )
        )
    entries.sort(key=lambda e: (e[0], e[1]))
    start = Message(
        kind=STATUS,
        device=rec.device,
        modality=STATUS,
        seq=0,
        t0_s=rec.start_s,
        fs_hz=0.0,
        meta={"event": "start", "source": source},
    )
    end = Message(
        kind=STATUS,
        device=rec.device,
        modality=STATUS,
        seq=1,
        t0_s=rec.end_s,
        fs_hz=0.0,
        meta={"event": "end", "source": source},
    )
    return [start, *(msg for _, _, msg in entries), end]


def every(step_s: float, rec: Recording) -> dict[str, list[int]]:
    """Cuts every ``step_s`` seconds in every modality."""
    return {m: list(range(0, rec.signals[m].n, max(1, round(step_s * rec.signals[m].fs_hz)))) for m in MODALITIES}


def window_record(w: Window) -> tuple:
    """Everything a window carries, in a form ``==`` compares exactly."""
    msg = w.to_message()
    return (w.device, w.t_start_s, msg.meta, {k: (a.dtype.str, a.shape, a.tobytes()) for k, a in msg.arrays.items()})


def assert_same_windows(a: Sequence[Window], b: Sequence[Window]) -> None:
    assert [w.t_start_s for w in a] == [w.t_start_s for w in b]
    for x, y in zip(a, b):
        assert window_record(x) == window_record(y), f"window at {x.t_start_s - T0:+.1f} s differs"
