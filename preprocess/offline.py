"""The offline path: a whole recording through the very classes the live node runs.

There is no second implementation: :func:`recording_windows` feeds the messages a replay
would publish (``replay.chunks.recording_messages``, in the order a replay publishes them)
to a :class:`Preprocessor`, so training windows are bit-identical to what the live
pipeline would have produced from the same recording.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from preprocess.preprocessor import Preprocessor
from preprocess.window import MODALITIES, Window
from preprocess.windower import WindowConfig
from replay.chunks import recording_messages
from replay.recording import TASKS, Recording


def recording_windows(recording: Recording, config: WindowConfig | None = None) -> list[Window]:
    """Every window of ``recording`` (with quality and labels), in time order."""
    pre = Preprocessor(config)
    windows: list[Window] = []
    for due_s, msg in recording_messages(recording):
        windows += pre.push(msg, now_s=due_s)
    windows += pre.flush()
    return windows


def stack_windows(windows: Sequence[Window] | Iterable[Window]) -> dict[str, np.ndarray]:
    """Training arrays from windows: ``bvp`` (N, 1280), ``eda`` (N, 80), ``temp`` (N, 80),
    ``acc`` (N, 640, 3) float32; ``present`` (N, 4) bool in the order bvp, eda, temp, acc;
    ``usable``, ``off_wrist``, ``motion`` (N,) bool; ``missing_fraction``, ``t_end_s`` (N,)
    float64; ``label_<task>`` (N,) object arrays of class names or None; ``device`` (N,) str."""
    windows = list(windows)
    out: dict[str, np.ndarray] = {m: np.stack([w.signals[m] for w in windows]) if windows else np.zeros((0,))
                                  for m in MODALITIES}
    out["present"] = np.array([[w.present[m] for m in MODALITIES] for w in windows], dtype=bool).reshape(-1, 4)
    for flag in ("usable", "off_wrist", "motion"):
        out[flag] = np.array([getattr(w.quality, flag) for w in windows], dtype=bool)
    out["missing_fraction"] = np.array([w.quality.missing_fraction for w in windows], dtype=np.float64)
    out["t_end_s"] = np.array([w.t_end_s for w in windows], dtype=np.float64)
    for task in TASKS:
        out[f"label_{task}"] = np.array([w.labels.get(task) for w in windows], dtype=object)
    out["device"] = np.array([w.device for w in windows], dtype=str)
    return out
