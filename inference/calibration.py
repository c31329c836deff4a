"""Per-wearer calibration: each device's own reference state, learned from its data with no labels.

Why. EDA and wrist temperature levels differ tenfold between people (resting EDA 0.3 µS in one,
4.5 µS in another; wrists at 30–36 °C), so a model fed absolute levels learns who the training
people were, not how they felt. Expressed relative to the wearer's own calm state, the same
features carry over to people the model never saw (leave-subjects-out on WESAD: see the model
card).

Theory of operation. A :class:`Calibrator` is a pure state machine per device, fed every window
in time order with the window's features (:mod:`inference.features`), whether it is usable
(on the wrist, at most a quarter missing) and the E4 button presses (tags) it holds.

- *Search (default).* Usable windows starting on the reference grid (multiples of ``grid_s``,
  so a node cutting windows every 5 s and training cutting every 10 s see the very same
  windows) within the first ``search_minutes`` of usable data are candidates. Once that span
  is over, the stretch of ``minutes`` minutes that moved least (lowest mean ``acc_sd_g``)
  among those with enough usable windows becomes the reference: people sit still when they
  are at rest, and the first minutes after putting a wristband on are often walking.
- *Marked rest.* A double press of the E4 button (two presses within 2 s) starts a rest the
  wearer marks; the next single press ends it, or it ends after ``minutes`` minutes. Its usable
  grid windows become the reference (if it lasted at least 2 min and they cover most of it),
  replacing whatever reference there was. Single presses, which studies use to mark events,
  change nothing.
- Until a reference exists, models that need one answer ``calibrating`` (no label).

The reference is the mean and standard deviation of every feature over its windows; a model
reads a window as ``(features − mean) / max(sd, floor)`` (:func:`relative_features`). The same
class runs live (in ``infer``, state persisted with :class:`CalibrationStore`) and in training
and evaluation over each recording (:func:`references_over`), so both see identical references.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from inference.features import FEATURES

_MOTION = FEATURES.index("acc_sd_g")
#: Two presses this close (s) are a double press: the mark of a rest.
DOUBLE_PRESS_S = 2.0
#: A marked rest shorter than this (s) is not used.
MIN_REST_S = 120.0
_WINDOW_S = 20.0
_ON_GRID_TOLERANCE_S = 1e-3


@dataclass(frozen=True, slots=True, kw_only=True)
class CalibrationConfig:
    """``minutes``: length of the reference stretch; ``search_minutes``: how much usable data
    (from the first usable window) the calm stretch is looked for in; ``grid_s``: windows that
    start on multiples of it are the candidates (the window hop must divide it)."""

    minutes: float = 10.0
    search_minutes: float = 30.0
    grid_s: float = 10.0
    max_missing_fraction: float = 0.25
    min_coverage: float = 0.8

    def __post_init__(self) -> None:
        if not (
            self.minutes > 0
            and self.search_minutes >= self.minutes
            and self.grid_s > 0
            and 0 <= self.max_missing_fraction <= 1
            and 0 < self.min_coverage <= 1
        ):
            raise ValueError(
                f"calibration needs minutes > 0, search_minutes >= minutes, grid_s > 0, coverage in (0, 1]: {self}"
            )

    @property
    def span_s(self) -> float:
        """Window starts of one stretch lie within this many seconds of its first."""
        return self.minutes * 60.0 - _WINDOW_S

    @property
    def min_windows(self) -> int:
        return max(1, math.ceil(self.min_coverage * (self.span_s / self.grid_s + 1)))

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class Reference:
    """A wearer's reference state. ``kind``: ``calm`` (found without labels) or ``tag`` (a rest
    the wearer marked); times are the first window's start and the last window's end (Unix s);
    ``mean``/``sd`` per feature in :data:`FEATURES` order (NaN where no window had a value)."""

    kind: str
    t_start_s: float
    t_end_s: float
    n_windows: int
    mean: tuple[float, ...]
    sd: tuple[float, ...]

    @property
    def id(self) -> str:
        """What every affect record answered with this reference carries."""
        return f"{self.kind}@{self.t_start_s:.0f}-{self.t_end_s:.0f}"

    def to_json(self) -> dict:
        return {
            "kind": self.kind,
            "t_start_s": self.t_start_s,
            "t_end_s": self.t_end_s,
            "n_windows": self.n_windows,
            "features": list(FEATURES),
            "mean": [_num(v) for v in self.mean],
            "sd": [_num(v) for v in self.sd],
        }

    @staticmethod
    def from_json(d: Mapping) -> Reference:
        if list(d.get("features", FEATURES)) != list(FEATURES):
            raise ValueError("reference was computed over other features")
        mean, sd = (tuple(float("nan") if v is None else float(v) for v in d[k]) for k in ("mean", "sd"))
        if len(mean) != len(FEATURES) or len(sd) != len(FEATURES):
            raise ValueError("reference has the wrong number of features")
        return Reference(
            kind=str(d["kind"]),
            t_start_s=float(d["t_start_s"]),
            t_end_s=float(d["t_end_s"]),
            n_windows=int(d["n_windows"]),
            mean=mean,
            sd=sd,
        )


def _num(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def _reference(kind: str, t: np.ndarray, f: np.ndarray) -> Reference:
    with warnings.catch_warnings():  # a feature with no value in any window (no beats) stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        mean, sd = np.nanmean(f, axis=0), np.nanstd(f, axis=0)
    return Reference(
        kind=kind,
        t_start_s=float(t[0]),
        t_end_s=float(t[-1]) + _WINDOW_S,
        n_windows=len(t),
        mean=tuple(float(v) for v in mean),
        sd=tuple(float(v) for v in sd),
    )


@dataclass(slots=True)
class _State:
    first_usable_s: float | None = None
    cand_t: list[float] = field(default_factory=list)
    cand_f: list[list[float]] = field(default_factory=list)
    tag_s: float | None = None
    tag_t: list[float] = field(default_factory=list)
    tag_f: list[list[float]] = field(default_factory=list)
    last_tag_s: float = -math.inf
    prev_press_s: float | None = None
    ignore_until_s: float = -math.inf
    reference: Reference | None = None
    searching: bool = True


class Calibrator:
    """One device's calibration (see the module docstring). Feed windows in time order."""

    def __init__(self, config: CalibrationConfig | None = None) -> None:
        self.config = config or CalibrationConfig()
        self._s = _State()

    @property
    def reference(self) -> Reference | None:
        return self._s.reference

    @property
    def gathering(self) -> bool:
        """Still collecting windows for a reference (a search or a marked rest under way)."""
        return self._s.searching or self._s.tag_s is not None

    def push(
        self, *, t_start_s: float, usable: bool, features: np.ndarray, tags_s: Iterable[float] = ()
    ) -> Reference | None:
        """Take one window; return the reference in force for it (None: still calibrating)."""
        cfg, s = self.config, self._s
        for press in sorted(float(x) for x in tags_s):
            if math.isfinite(press) and press > s.last_tag_s + 1e-6:
                self._press(press)
        on_grid = abs(t_start_s / cfg.grid_s - round(t_start_s / cfg.grid_s)) * cfg.grid_s < _ON_GRID_TOLERANCE_S
        f = [float(v) for v in np.asarray(features, dtype=np.float64).reshape(-1)]
        if s.tag_s is not None:
            if t_start_s > s.tag_s + cfg.span_s:
                self._close_rest(s.tag_s + cfg.minutes * 60.0)
            elif usable and on_grid and t_start_s >= s.tag_s:
                s.tag_t.append(t_start_s)
                s.tag_f.append(f)
        if s.searching:
            if s.first_usable_s is None and usable and on_grid:
                s.first_usable_s = t_start_s
            if s.first_usable_s is not None:
                if t_start_s >= s.first_usable_s + cfg.search_minutes * 60.0:
                    self._settle(t_start_s)
                if s.searching and usable and on_grid:
                    s.cand_t.append(t_start_s)
                    s.cand_f.append(f)
        return s.reference

    def _press(self, press: float) -> None:
        """One button press. A double press (two within ``DOUBLE_PRESS_S``) starts a marked rest;
        the next single press ends it early; other presses (event marks, as studies use the
        button) change nothing."""
        s = self._s
        s.last_tag_s = press
        if s.tag_s is not None and press - s.tag_s > DOUBLE_PRESS_S:
            self._close_rest(press)
            s.ignore_until_s = press + DOUBLE_PRESS_S
        elif press <= s.ignore_until_s:
            pass
        elif s.prev_press_s is not None and press - s.prev_press_s <= DOUBLE_PRESS_S and s.tag_s is None:
            s.tag_s, s.tag_t, s.tag_f = press, [], []
            s.prev_press_s = None
            return
        s.prev_press_s = press

    def _close_rest(self, end_s: float) -> None:
        """The marked rest ends at ``end_s``: its windows that lie inside it become the
        reference when they cover enough of it (and it lasted ``MIN_REST_S``)."""
        cfg, s = self.config, self._s
        assert s.tag_s is not None  # a rest is marked
        keep = [i for i, t in enumerate(s.tag_t) if t + _WINDOW_S <= end_s + _ON_GRID_TOLERANCE_S]
        length = end_s - s.tag_s
        need = max(1, math.ceil(cfg.min_coverage * ((length - _WINDOW_S) / cfg.grid_s + 1)))
        if length >= MIN_REST_S and len(keep) >= need:
            s.reference = _reference("tag", np.array([s.tag_t[i] for i in keep]), np.array([s.tag_f[i] for i in keep]))
            s.searching = False
        s.tag_s, s.tag_t, s.tag_f = None, [], []

    def _settle(self, now_s: float) -> None:
        """The calmest stretch of the candidates (usable windows before ``now_s``) with enough
        usable windows becomes the reference. Without one, the search goes on over the latest
        ``search_minutes`` of windows, so a wearer who was rarely usable at first is calibrated
        as soon as a quiet stretch comes, and the candidates stay bounded."""
        cfg, s = self.config, self._s
        horizon = now_s - cfg.search_minutes * 60.0
        keep = [i for i, t0 in enumerate(s.cand_t) if t0 >= horizon]
        s.cand_t, s.cand_f = [s.cand_t[i] for i in keep], [s.cand_f[i] for i in keep]
        t, f = np.array(s.cand_t), np.array(s.cand_f).reshape(len(s.cand_t), len(FEATURES))
        best = None
        for k in range(len(t)):
            sel = (t >= t[k]) & (t <= t[k] + cfg.span_s + _ON_GRID_TOLERANCE_S)
            if sel.sum() < cfg.min_windows:
                continue
            motion = f[sel, _MOTION]
            score = float(np.nanmean(motion)) if np.isfinite(motion).any() else math.inf
            if best is None or score < best[0]:
                best = (score, sel)
        if best is None:
            return
        s.reference, s.searching, s.cand_t, s.cand_f = _reference("calm", t[best[1]], f[best[1]]), False, [], []

    def to_json(self) -> dict:
        s = self._s
        return {
            "format": "m3sense-calibration",
            "version": 1,
            "config": self.config.to_json(),
            "reference": s.reference.to_json() if s.reference else None,
            "searching": s.searching,
            "first_usable_s": s.first_usable_s,
            "candidates": {"t_s": s.cand_t, "features": _nulls(s.cand_f)},
            "tag": {"t0_s": s.tag_s, "t_s": s.tag_t, "features": _nulls(s.tag_f)},
            "last_tag_s": _num(s.last_tag_s),
            "prev_press_s": s.prev_press_s,
            "ignore_until_s": _num(s.ignore_until_s),
        }

    @staticmethod
    def from_json(d: Mapping, config: CalibrationConfig | None = None) -> Calibrator:
        """Restore a saved state; ``config`` (if given) must equal the saved one, so a model never
        runs against a reference found under other settings."""
        if d.get("format") != "m3sense-calibration":
            raise ValueError("not an m3sense calibration state")
        saved = CalibrationConfig(**d["config"])
        if config is not None and config != saved:
            raise ValueError(f"calibration state was made with {saved}, not {config}")
        c = Calibrator(saved)
        s = c._s
        s.reference = Reference.from_json(d["reference"]) if d.get("reference") else None
        s.searching = bool(d["searching"])
        s.first_usable_s = d.get("first_usable_s")
        s.cand_t = [float(x) for x in d["candidates"]["t_s"]]
        s.cand_f = _floats(d["candidates"]["features"])
        s.tag_s = d["tag"]["t0_s"]
        s.tag_t = [float(x) for x in d["tag"]["t_s"]]
        s.tag_f = _floats(d["tag"]["features"])
        s.last_tag_s = -math.inf if d.get("last_tag_s") is None else float(d["last_tag_s"])
        s.prev_press_s = d.get("prev_press_s")
        s.ignore_until_s = -math.inf if d.get("ignore_until_s") is None else float(d["ignore_until_s"])
        return c


def _nulls(rows: list[list[float]]) -> list[list[float | None]]:
    return [[_num(v) for v in r] for r in rows]


def _floats(rows) -> list[list[float]]:
    return [[float("nan") if v is None else float(v) for v in r] for r in rows]


def is_usable_for_reference(quality: Mapping, config: CalibrationConfig) -> bool:
    """On the wrist and at most ``max_missing_fraction`` missing."""
    try:
        return (
            not bool(quality.get("off_wrist", False))
            and float(quality.get("missing_fraction", 1.0)) <= config.max_missing_fraction
        )
    except (TypeError, ValueError):
        return False


def references_over(
    t_start_s: np.ndarray, usable: np.ndarray, features: np.ndarray, tags_s: Sequence[float], config: CalibrationConfig
) -> list[Reference | None]:
    """The reference in force for each window of ONE device (windows in time order), as the
    live node would have it; ``tags_s`` are that device's button presses (Unix s)."""
    cal = Calibrator(config)
    tags = np.sort(np.asarray(tags_s, dtype=np.float64))
    out: list[Reference | None] = []
    done = 0
    for i, t in enumerate(np.asarray(t_start_s, dtype=np.float64)):
        upto = int(np.searchsorted(tags, t + _WINDOW_S, side="left"))
        out.append(cal.push(t_start_s=float(t), usable=bool(usable[i]), features=features[i], tags_s=tags[done:upto]))
        done = upto
    return out


def relative_features(features: np.ndarray, mean: np.ndarray, sd: np.ndarray, floor: np.ndarray) -> np.ndarray:
    """(B, F) features relative to each row's reference: ``(f − mean) / max(sd, floor)``.
    ``floor`` keeps a wearer whose reference hardly varied from blowing a feature up."""
    return ((features - mean) / np.maximum(sd, floor)).astype(np.float32)


_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


class CalibrationStore:
    """Calibration states on disk, one JSON file per device (written atomically, mode 0600:
    they describe a person's physiology)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    @staticmethod
    def default_folder() -> Path:
        base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return Path(base) / "m3sense" / "calibration"

    def path(self, device: str) -> Path:
        return self.folder / f"{_SAFE_NAME.sub('_', device)}.json"

    def load(self, device: str, config: CalibrationConfig) -> Calibrator:
        """The saved state of ``device``, or a fresh one. A state made under other settings is
        not used (a fresh calibration starts) and the caller is told by the ValueError."""
        p = self.path(device)
        if not p.is_file():
            return Calibrator(config)
        return Calibrator.from_json(json.loads(p.read_text()), config)

    def save(self, device: str, cal: Calibrator) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        p = self.path(device)
        tmp = p.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(cal.to_json(), fh)
        tmp.replace(p)

    def reset(self, device: str) -> bool:
        p = self.path(device)
        if p.is_file():
            p.unlink()
            return True
        return False

    def devices(self) -> list[str]:
        return sorted(p.stem for p in self.folder.glob("*.json")) if self.folder.is_dir() else []
