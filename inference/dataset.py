"""Windows → model-ready arrays: the same conversion for training, evaluation and live inference.

A window arrives as a ``window`` bus message (or a ``preprocess.Window``, turned into one), so
the training set and the live node read exactly the same fields (interfaces.md). Labels
become class indices with -1 where a window has no label for a task (WESAD's meditation is
no stress class, so it also becomes -1): the loss masks them, nothing is guessed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from bus import Message
from bus.message import MAX_TIME_S
from common.jsonvalues import is_finite_number

#: A window with more than this fraction of its samples missing, or flagged off-wrist, gives
#: no answer (status "low_quality") and is left out of training and scoring. Set from
#: ``bench/quality_gate.py``: held-out stress accuracy falls from 86 % (nothing missing) to 82.5 %
#: at 0.3 missing and 78 % at 0.5, so 0.3 keeps answers within about 3.5 points of a full window.
MAX_MISSING_FRACTION = 0.3
#: Normalised inputs are clipped to this many standard deviations (artefacts, sensor start-up).
CLIP_SD = 8.0


def window_meta_problem(meta: Mapping) -> str | None:
    """The field that makes a window message's meta unreadable (None: it is readable).

    What the answering code reads without checking: a finite ``t_end``, objects for
    ``quality``, ``present`` and ``labels``, a number for the missing fraction, a list of tags.
    A window failing this is dropped and counted by the node, not answered.
    """
    if not is_finite_number(meta.get("t_end")) or not 0 <= meta["t_end"] < MAX_TIME_S:  # found by fuzzing: t_end 1e300
        return "t_end"  # became an affect message at that time, which every store refused
    for key in ("quality", "present", "labels"):
        if not isinstance(meta.get(key) or {}, Mapping):
            return key
    missing = (meta.get("quality") or {}).get("missing_fraction")
    if missing is not None and not is_finite_number(missing):
        return "quality"
    if not isinstance(meta.get("tags") or [], list):
        return "tags"
    return None


def is_low_quality(meta: Mapping) -> bool:
    """True for a window no model should answer for: off-wrist, or mostly missing."""
    q = meta.get("quality") or {}
    return bool(q.get("off_wrist", False)) or float(q.get("missing_fraction", 0.0) or 0.0) > MAX_MISSING_FRACTION


#: A WindowSet field left out (hand-made sets in tests): __post_init__ fills it for the set's size,
#: so the field is always an array once the set exists.
_FILL_IN = np.empty(0)
_NO_REFERENCES: dict[str, Any] = {"ref_mean": None, "ref_sd": None, "ref_id": None}


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowSet:
    """N windows as arrays. ``inputs[m]`` is (N, samples, channels) float32 in sensor units
    (NaN where a sample is missing), ``present`` (N, M) bool in ``modalities`` order,
    ``labels`` (N, T) int64 class indices in ``tasks`` order (-1: no label), ``groups`` the
    recording (subject) each window comes from, ``sources`` the data source it was read from,
    ``t0_s`` window start times (Unix s), ``features`` (N, F) the window's wrist features
    (:mod:`inference.features`), ``missing``/``motion`` its missing and motion fractions,
    ``off_wrist`` its off-wrist flag, ``tag_groups``/``tag_s`` the button presses per recording.
    ``ref_mean``/``ref_sd`` (N, F) the wearer's reference in force for each window (NaN before
    one exists) and ``ref_id`` its name ("" before); :func:`with_references` fills them."""

    modalities: tuple[str, ...]
    tasks: tuple[str, ...]
    inputs: Mapping[str, np.ndarray]
    present: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    sources: np.ndarray
    t0_s: np.ndarray
    features: np.ndarray = field(default_factory=lambda: _FILL_IN)
    missing: np.ndarray = field(default_factory=lambda: _FILL_IN)
    motion: np.ndarray = field(default_factory=lambda: _FILL_IN)
    off_wrist: np.ndarray = field(default_factory=lambda: _FILL_IN)
    tag_groups: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=str))
    tag_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ref_mean: np.ndarray | None = None
    ref_sd: np.ndarray | None = None
    ref_id: np.ndarray | None = None

    _PER_WINDOW = (
        "present",
        "labels",
        "groups",
        "sources",
        "t0_s",
        "features",
        "missing",
        "motion",
        "off_wrist",
        "ref_mean",
        "ref_sd",
        "ref_id",
    )

    def __post_init__(self) -> None:
        """Windows built without features or quality (hand-made sets in tests, old caches) get
        NaN features and clean quality."""
        from inference.features import FEATURES

        n = len(self)
        defaults = {
            "features": lambda: np.full((n, len(FEATURES)), np.nan, np.float32),
            "missing": lambda: np.zeros(n, np.float32),
            "motion": lambda: np.zeros(n, np.float32),
            "off_wrist": lambda: np.zeros(n, bool),
        }
        for k, make in defaults.items():
            if getattr(self, k) is _FILL_IN:
                object.__setattr__(self, k, make())

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, idx: np.ndarray | Sequence[int]) -> WindowSet:
        idx = np.asarray(idx, dtype=np.int64)
        return replace(
            self,
            inputs={m: v[idx] for m, v in self.inputs.items()},
            **{k: getattr(self, k)[idx] for k in self._PER_WINDOW if getattr(self, k) is not None},
        )

    def select(self, modalities: Sequence[str], tasks: Sequence[str]) -> WindowSet:
        """The same windows with only these modalities and tasks (in this order); a window
        left with no present modality is dropped."""
        mi = [self.modalities.index(m) for m in modalities]
        ti = [self.tasks.index(t) for t in tasks]
        ws = replace(
            self,
            modalities=tuple(modalities),
            tasks=tuple(tasks),
            inputs={m: self.inputs[m] for m in modalities},
            present=self.present[:, mi],
            labels=self.labels[:, ti],
        )
        keep = ws.present.any(axis=1)
        return ws if keep.all() else ws.subset(np.flatnonzero(keep))

    def without_labels(self) -> WindowSet:
        return replace(self, labels=np.full_like(self.labels, -1))

    @property
    def labelled(self) -> np.ndarray:
        """(N,) bool: the window carries at least one task label."""
        return np.asarray((self.labels >= 0).any(axis=1))

    @property
    def calibrated(self) -> np.ndarray:
        """(N,) bool: a wearer reference was in force for the window."""
        return np.zeros(len(self), bool) if self.ref_id is None else self.ref_id != ""

    @staticmethod
    def concat(sets: Sequence[WindowSet]) -> WindowSet:
        if not sets:
            raise ValueError("no window sets to concatenate")
        first = sets[0]
        if any(s.modalities != first.modalities or s.tasks != first.tasks for s in sets):
            raise ValueError("window sets differ in modalities or tasks")
        refs = all(s.ref_id is not None for s in sets)
        cat: dict[str, Any] = {
            k: np.concatenate([getattr(s, k) for s in sets])
            for k in WindowSet._PER_WINDOW
            if refs or not k.startswith("ref_")
        }
        return replace(
            first,
            inputs={m: np.concatenate([s.inputs[m] for s in sets]) for m in first.modalities},
            tag_groups=np.concatenate([s.tag_groups for s in sets]),
            tag_s=np.concatenate([s.tag_s for s in sets]),
            **cat,
            **({} if refs else _NO_REFERENCES),
        )

    #: what a cache file keeps: the per-window arrays but the wearer references (which
    #: :func:`with_references` derives), and the button presses
    _SAVED = (*(k for k in _PER_WINDOW if not k.startswith("ref_")), "tag_groups", "tag_s")

    def save_npz(self, path) -> None:
        arrays: dict[str, Any] = {k: getattr(self, k) for k in self._SAVED}
        arrays.update({f"x_{m}": v for m, v in self.inputs.items()})
        np.savez(path, modalities=np.array(self.modalities), tasks=np.array(self.tasks), **arrays)

    @staticmethod
    def load_npz(path) -> WindowSet:
        with np.load(path, allow_pickle=False) as z:
            modalities = tuple(str(m) for m in z["modalities"])
            return WindowSet(
                modalities=modalities,
                tasks=tuple(str(t) for t in z["tasks"]),
                inputs={m: z[f"x_{m}"] for m in modalities},
                **{k: z[k] for k in WindowSet._SAVED},
            )


def with_references(ws: WindowSet, config) -> WindowSet:
    """``ws`` with the reference each window had live: :func:`inference.calibration.references_over`
    run over every recording's windows in time order (the set holds each recording's windows
    in time order, as :func:`windows_from_messages` makes them)."""
    from inference.calibration import is_usable_for_reference, references_over

    n, f = ws.features.shape
    mean, sd = np.full((n, f), np.nan, np.float32), np.full((n, f), np.nan, np.float32)
    ids = np.full(n, "", dtype=object)
    for g in np.unique(ws.groups):
        idx = np.flatnonzero(ws.groups == g)
        if np.any(np.diff(ws.t0_s[idx]) <= 0):
            raise ValueError(f"windows of {g} are not in time order")
        usable = [
            is_usable_for_reference({"off_wrist": bool(o), "missing_fraction": float(m)}, config)
            for o, m in zip(ws.off_wrist[idx], ws.missing[idx])
        ]
        refs = references_over(ws.t0_s[idx], np.array(usable), ws.features[idx], ws.tag_s[ws.tag_groups == g], config)
        for i, r in zip(idx, refs):
            if r is not None:
                mean[i], sd[i], ids[i] = r.mean, r.sd, r.id
    return replace(ws, ref_mean=mean, ref_sd=sd, ref_id=ids.astype(str))


def window_inputs(
    arrays: Mapping[str, np.ndarray], meta: Mapping, modalities: Sequence[str], shapes: Mapping[str, tuple[int, int]]
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One window's arrays as (samples, channels) float32 per modality, and its presence flags.

    A modality is present when the window says so and it has any finite sample; an absent
    one is returned as NaN of the right shape, which the model never reads (it is masked).
    """
    flags = meta.get("present") or {}
    out, present = {}, np.zeros(len(modalities), dtype=bool)
    for i, m in enumerate(modalities):
        n, c = shapes[m]
        a = arrays.get(m)
        if a is not None and a.size == n * c and flags.get(m, True):
            a = np.asarray(a, dtype=np.float32).reshape(n, c)
            present[i] = bool(np.isfinite(a).any())
        else:
            a = np.full((n, c), np.nan, dtype=np.float32)
        out[m] = a
    return out, present


def label_indices(meta: Mapping, tasks: Sequence[str], classes: Mapping[str, Sequence[str]]) -> np.ndarray:
    """(T,) int64 class index per task, -1 where the window has no label or one that is no class."""
    labels = meta.get("labels") or {}
    out = np.full(len(tasks), -1, dtype=np.int64)
    for j, t in enumerate(tasks):
        lab = labels.get(t)
        if lab is not None and lab in classes[t]:
            out[j] = list(classes[t]).index(lab)
    return out


def windows_from_messages(
    messages: Iterable[Message],
    *,
    modalities: Sequence[str],
    shapes: Mapping[str, tuple[int, int]],
    tasks: Sequence[str],
    classes: Mapping[str, Sequence[str]],
    source: str,
    keep_low_quality: bool = False,
) -> WindowSet:
    """Stack window messages into a :class:`WindowSet`; low-quality windows are dropped
    unless ``keep_low_quality`` (they carry no trustworthy label and get no answer live)."""
    from inference.features import FEATURES, message_features

    xs: dict[str, list[np.ndarray]] = {m: [] for m in modalities}
    present, labels, groups, t0, kept, tags = [], [], [], [], [], []
    device = None
    for msg in messages:
        device = msg.device
        tags += [float(t) for t in (msg.meta.get("tags") or ())]
        if not keep_low_quality and is_low_quality(msg.meta):
            continue
        x, p = window_inputs(msg.arrays, msg.meta, modalities, shapes)
        if not p.any():
            continue
        for m in modalities:
            xs[m].append(x[m])
        present.append(p)
        labels.append(label_indices(msg.meta, tasks, classes))
        groups.append(msg.device)
        t0.append(msg.t0_s)
        kept.append(msg)
    n = len(labels)
    quality = [msg.meta.get("quality") or {} for msg in kept]
    tags = sorted(set(tags))
    return WindowSet(
        modalities=tuple(modalities),
        tasks=tuple(tasks),
        inputs={m: (np.stack(v) if v else np.zeros((0, *shapes[m]), np.float32)) for m, v in xs.items()},
        present=np.array(present, dtype=bool).reshape(n, len(modalities)),
        labels=np.array(labels, dtype=np.int64).reshape(n, len(tasks)),
        groups=np.array(groups, dtype=str),
        sources=np.array([source] * n, dtype=str),
        t0_s=np.array(t0, dtype=np.float64),
        features=message_features(kept) if kept else np.zeros((0, len(FEATURES)), np.float32),
        missing=np.array([float(q.get("missing_fraction", 0.0) or 0.0) for q in quality], dtype=np.float32),
        motion=np.array([float(q.get("motion_fraction", 0.0) or 0.0) for q in quality], dtype=np.float32),
        off_wrist=np.array([bool(q.get("off_wrist", False)) for q in quality], dtype=bool),
        tag_groups=np.array([device] * len(tags), dtype=str),
        tag_s=np.array(tags, dtype=np.float64),
    )


#: The reference feature a modality is expressed relative to, when its model is calibrated.
REFERENCE_LEVEL = {"eda": "eda_mean_us", "temp": "temp_mean_c"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Normalizer:
    """Per-modality input scaling, stored in the checkpoint.

    BVP is standardised per window (its amplitude depends on the sensor's contact and the
    wearer's skin, not on the affect; its shape and rate carry the information); EDA, TEMP and
    ACC are standardised with training-set statistics, because their level is the signal
    (a stressed wearer's EDA is higher, not just differently shaped). ``relative`` modalities
    (a calibrated model) first have the wearer's reference level subtracted
    (:data:`REFERENCE_LEVEL`), since levels differ tenfold between people.
    """

    per_window: tuple[str, ...]
    mean: Mapping[str, float]
    std: Mapping[str, float]
    relative: tuple[str, ...] = ()

    @staticmethod
    def fit(ws: WindowSet, per_window: Sequence[str] = ("bvp",), relative: Sequence[str] = ()) -> Normalizer:
        relative = tuple(m for m in relative if m in ws.modalities and m not in per_window)
        levels = reference_levels(ws.ref_mean, relative) if relative else {}
        mean, std = {}, {}
        for i, m in enumerate(ws.modalities):
            if m in per_window:
                continue
            x = ws.inputs[m] - levels[m][:, None, None] if m in levels else ws.inputs[m]
            v = x[ws.present[:, i]]
            v = v[np.isfinite(v)]
            mean[m] = float(v.mean()) if v.size else 0.0
            sd = float(v.std()) if v.size else 1.0
            std[m] = sd if sd > 1e-6 else 1.0
        return Normalizer(
            per_window=tuple(m for m in per_window if m in ws.modalities), mean=mean, std=std, relative=relative
        )

    def apply(self, m: str, x: np.ndarray, level: np.ndarray | None = None) -> np.ndarray:
        """x: (..., samples, channels) in sensor units → float32, no NaN, clipped to ±CLIP_SD;
        ``level`` (...,) the wearer's reference level, required for a relative modality."""
        x = np.asarray(x, dtype=np.float32)
        if m in self.relative:
            if level is None:
                raise ValueError(f"{m} is read relative to the wearer: its reference level is needed")
            x = x - np.asarray(level, dtype=np.float32)[..., None, None]
        if m in self.per_window:
            with warnings.catch_warnings():  # an all-NaN (absent) window has no mean: it becomes zeros
                warnings.simplefilter("ignore", RuntimeWarning)
                mu = np.nanmean(x, axis=(-2, -1), keepdims=True)
                sd = np.nanstd(x, axis=(-2, -1), keepdims=True)
            x = (x - np.nan_to_num(mu)) / np.where(np.isfinite(sd) & (sd > 1e-6), sd, 1.0)
        else:
            x = (x - self.mean[m]) / self.std[m]
        return np.clip(np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0), -CLIP_SD, CLIP_SD).astype(np.float32)

    def to_json(self) -> dict:
        out: dict[str, dict] = {m: {"mode": "per_window"} for m in self.per_window}
        out.update(
            {
                m: {"mode": "wearer" if m in self.relative else "global", "mean": self.mean[m], "std": self.std[m]}
                | ({"reference": REFERENCE_LEVEL[m]} if m in self.relative else {})
                for m in self.mean
            }
        )
        return out

    @staticmethod
    def from_json(d: Mapping) -> Normalizer:
        per = tuple(m for m, v in d.items() if v["mode"] == "per_window")
        glob = {m: v for m, v in d.items() if v["mode"] in ("global", "wearer")}
        unknown = [m for m, v in d.items() if v["mode"] not in ("per_window", "global", "wearer")]
        if unknown:
            raise ValueError(f"unknown normalisation mode for {unknown}")
        for m, v in glob.items():
            if not (math.isfinite(v["mean"]) and math.isfinite(v["std"]) and v["std"] > 0):
                raise ValueError(f"bad normalisation statistics for {m}: {v}")
        return Normalizer(
            per_window=per,
            mean={m: float(v["mean"]) for m, v in glob.items()},
            std={m: float(v["std"]) for m, v in glob.items()},
            relative=tuple(m for m, v in glob.items() if v["mode"] == "wearer"),
        )


def reference_levels(ref_mean: np.ndarray | None, modalities: Sequence[str]) -> dict[str, np.ndarray]:
    """(N,) reference level per relative modality, from (N, F) reference feature means."""
    from inference.features import FEATURES

    if ref_mean is None:
        raise ValueError("these windows carry no wearer reference")
    return {m: ref_mean[:, FEATURES.index(REFERENCE_LEVEL[m])] for m in modalities if m in REFERENCE_LEVEL}
