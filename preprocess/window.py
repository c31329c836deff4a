"""The window record: what preprocess publishes on ``window/<device>/`` and training reads.

Arrays (fixed sizes, float32, always finite, on the device's time grid):

=========  ==========  =======  =====================================================
modality   shape       rate     unit
=========  ==========  =======  =====================================================
``bvp``    (1280,)     64 Hz    E4 BVP units (relative light), filtered
``eda``    (80,)       4 Hz     microsiemens, filtered
``temp``   (80,)       4 Hz     degrees Celsius, filtered
``acc``    (640, 3)    32 Hz    g (E4 counts / 64), unfiltered
=========  ==========  =======  =====================================================

Sample ``k`` of a modality sits at ``t_start_s + k / rate``. Missing samples are not NaN:
inside a stretch the filter bridged (gaps up to ``max_gap_s``) they hold the filter's output
over the last measured value carried forward; elsewhere the nearest filtered value in the
window, or 0 when the modality has nothing in the window. ``masks[m]`` (bool, same length)
says which samples were really measured and valid; ``present[m]`` is true when at least
``min_present_fraction`` (default half) of them were. A model should use ``present`` to mask
a modality; ``quality`` says whether to trust the window at all.

On the bus (``to_message``): kind ``window``, modality ``window``, ``t0_s`` = window start,
``fs_hz`` 0, arrays ``bvp``, ``eda``, ``temp``, ``acc`` and the masks ``bvp_mask``, ...,
meta ``{"t_end", "present", "quality", "labels", "source", "rates_hz", "tags"}``.

After a device's last window the same topic carries an end marker (:class:`DeviceEnd`,
meta ``{"event": "end", ...}``, no arrays), so downstream stages know they have seen
everything of that device.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bus import WINDOW, Message
from e4 import CHANNELS, RATES_HZ as E4_RATES_HZ, TASK_CLASSES

WINDOW_S = 20.0

#: Rates (Hz) of the window arrays, in the order they are listed everywhere.
RATES_HZ: dict[str, float] = {m: E4_RATES_HZ[m] for m in ("bvp", "eda", "temp", "acc")}
MODALITIES = tuple(RATES_HZ)
#: Samples per window of each modality.
SIZES: dict[str, int] = {m: int(WINDOW_S * fs) for m, fs in RATES_HZ.items()}
#: Trailing shape of one sample (ACC is three axes).
WIDTHS: dict[str, int] = {m: CHANNELS[m] for m in MODALITIES}

#: The classes each task's model predicts (:data:`e4.TASK_CLASSES`).
LABEL_CLASSES: dict[str, tuple[str, ...]] = TASK_CLASSES


def array_shape(modality: str) -> tuple[int, ...]:
    return (SIZES[modality],) if WIDTHS[modality] == 1 else (SIZES[modality], WIDTHS[modality])


@dataclass(frozen=True, slots=True, kw_only=True)
class Quality:
    """How far a window can be trusted. Fractions are of the window's samples.

    - ``off_wrist``: EDA below ``eda_min_us`` or skin temperature outside
      ``temp_range_c`` for at least ``off_wrist_min_s`` in a row (see :mod:`preprocess.quality`).
    - ``motion``: some 1 s block of ACC has a standard deviation of ``|a|`` above
      ``motion_sd_g``; ``motion_fraction`` is the share of such blocks.
    - ``missing_fraction``: the mean over the four modalities of ``missing[m]``, the share of
      samples of ``m`` not measured (absent, late, NaN/inf, negative EDA).
    - ``flat``: modalities with a flat line (identical values over ``flat_s``);
      ``saturated``: modalities at the end of their range (ACC at +-2 g, EDA at 100 uS).
    - ``eda_artifact``: an EDA step faster than 10 uS/s (Kleckner's slope rule).
    - ``invalid_samples``: NaN, infinite or negative-EDA samples received for this window;
      ``late_samples``, ``duplicate_samples``: samples that came after the filter had passed
      them, or twice; ``timing_mismatch``: samples placed from chunks whose header rate or
      start time disagreed with the device's clock.
    - ``usable``: not off wrist and at most half the samples missing (a suggestion for
      inference, which owns the policy).
    """

    off_wrist: bool
    motion: bool
    missing_fraction: float
    missing: Mapping[str, float]
    off_wrist_fraction: float
    motion_fraction: float
    flat: tuple[str, ...]
    saturated: tuple[str, ...]
    eda_artifact: bool
    invalid_samples: int
    late_samples: int
    duplicate_samples: int
    timing_mismatch: bool
    usable: bool

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["missing"] = dict(self.missing)
        d["flat"] = list(self.flat)
        d["saturated"] = list(self.saturated)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Quality:
        return cls(
            off_wrist=bool(d["off_wrist"]),
            motion=bool(d["motion"]),
            missing_fraction=float(d["missing_fraction"]),
            missing={str(k): float(v) for k, v in d["missing"].items()},
            off_wrist_fraction=float(d["off_wrist_fraction"]),
            motion_fraction=float(d["motion_fraction"]),
            flat=tuple(d["flat"]),
            saturated=tuple(d["saturated"]),
            eda_artifact=bool(d["eda_artifact"]),
            invalid_samples=int(d["invalid_samples"]),
            late_samples=int(d["late_samples"]),
            duplicate_samples=int(d["duplicate_samples"]),
            timing_mismatch=bool(d["timing_mismatch"]),
            usable=bool(d["usable"]),
        )


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Window:
    """One 20 s window of one device (see the module docstring for arrays and units).

    ``labels`` maps every task to the ground-truth class that covers more than half of the
    window, or None. ``source`` is ``"replay"`` or ``"live"``.
    """

    device: str
    t_start_s: float
    t_end_s: float
    signals: Mapping[str, np.ndarray]
    masks: Mapping[str, np.ndarray]
    present: Mapping[str, bool]
    quality: Quality
    labels: Mapping[str, str | None]
    source: str
    tags_s: tuple[float, ...] = ()

    def to_message(self, seq: int = 0) -> Message:
        arrays: dict[str, np.ndarray] = {m: self.signals[m] for m in MODALITIES}
        arrays.update({f"{m}_mask": self.masks[m] for m in MODALITIES})
        meta = {
            "t_end": self.t_end_s,
            "present": {m: bool(self.present[m]) for m in MODALITIES},
            "quality": self.quality.to_dict(),
            "labels": dict(self.labels),
            "source": self.source,
            "rates_hz": dict(RATES_HZ),
            "tags": list(self.tags_s),
        }
        return Message(
            kind=WINDOW,
            device=self.device,
            modality=WINDOW,
            seq=seq,
            t0_s=self.t_start_s,
            fs_hz=0.0,
            arrays=arrays,
            meta=meta,
        )

    @classmethod
    def from_message(cls, msg: Message) -> Window:
        """Rebuild a window from a ``window`` message; raises ValueError if it is not one."""
        if msg.kind != WINDOW:
            raise ValueError(f"{msg.topic} is a {msg.kind} message, not a window")
        try:
            signals = {m: np.asarray(msg.arrays[m], dtype=np.float32) for m in MODALITIES}
            masks = {m: np.asarray(msg.arrays[f"{m}_mask"], dtype=bool) for m in MODALITIES}
            meta = msg.meta
            window = cls(
                device=msg.device,
                t_start_s=msg.t0_s,
                t_end_s=float(meta["t_end"]),
                signals=signals,
                masks=masks,
                present={m: bool(meta["present"][m]) for m in MODALITIES},
                quality=Quality.from_dict(meta["quality"]),
                labels={str(k): (None if v is None else str(v)) for k, v in meta["labels"].items()},
                source=str(meta["source"]),
                tags_s=tuple(float(t) for t in meta.get("tags", ())),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{msg.topic} seq {msg.seq} is not a complete window ({exc!r})") from None
        for m in MODALITIES:
            if signals[m].shape != array_shape(m) or masks[m].shape[:1] != (SIZES[m],):
                raise ValueError(f"{msg.topic} seq {msg.seq}: {m} has shape {signals[m].shape}")
        return window


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceEnd:
    """Nothing more comes on ``window/<device>/`` (until the device starts again).

    ``reason``: ``"end"`` (its ``status`` end), ``"timeout"`` (silent for the device timeout)
    or ``"shutdown"`` (the node stopped). ``t_s`` is the end of its newest data (Unix s; 0
    when it sent none).
    """

    device: str
    t_s: float
    reason: str
    source: str

    def to_message(self, seq: int = 0) -> Message:
        return Message(
            kind=WINDOW,
            device=self.device,
            modality=WINDOW,
            seq=seq,
            t0_s=self.t_s,
            fs_hz=0.0,
            meta={"event": "end", "reason": self.reason, "source": self.source},
        )
