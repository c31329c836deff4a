"""One wristband's notifications -> the bus messages they make (pure, no I/O).

:class:`DeviceIngest` is the whole per-device pipeline between the radio and the bus:
decode, timestamp (:class:`~ingest.timing.StreamClock`), integrate BVP, derive beats and
heart rate, turn lost packets into gap reports and judge on-wrist from EDA. It returns
:class:`Emit` records; the asyncio shell only publishes them, and a raw log replays
through the very same object.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from e4 import OFF_WRIST_EDA_US
from ingest import codec
from ingest.beats import BeatDetector, BeatOutput
from ingest.timing import Stamp, StreamClock

#: BVP over BLE is the device's integrated counts, not Empatica's scale: the messages say so,
#: so that whoever needs the vendor's scale (the e4-server) converts exactly these.
BVP_UNIT = "counts"

_DTYPES = {"bvp": np.float64, "eda": np.float64, "temp": np.float64, "acc": np.int16}


@dataclass(frozen=True, slots=True, kw_only=True)
class Emit:
    """A message to publish: ``kind`` "raw" (with ``modality``) or "status"."""

    kind: str
    modality: str
    t0_s: float
    fs_hz: float
    samples: np.ndarray = field(default_factory=lambda: np.zeros(0))
    meta: dict[str, Any] = field(default_factory=dict)


def status(at_s: float, event: str, **meta: Any) -> Emit:
    return Emit(kind="status", modality="status", t0_s=at_s, fs_hz=0.0, meta={"event": event, "source": "live", **meta})


@dataclass(slots=True)
class IngestStats:
    packets: Counter = field(default_factory=Counter)
    samples: Counter = field(default_factory=Counter)
    bad: Counter = field(default_factory=Counter)  # "<char>:<reason>"
    missing_samples: Counter = field(default_factory=Counter)
    beats: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "packets": dict(self.packets),
            "samples": dict(self.samples),
            "bad": dict(self.bad),
            "missing_samples": dict(self.missing_samples),
            "beats": self.beats,
        }


class DeviceIngest:
    """Feed it ``packet(char, data, arrival_s)``; call :meth:`relink` after a reconnect."""

    def __init__(self, *, layout: codec.Layout = codec.DEFAULT_LAYOUT, derive_heart: bool = True) -> None:
        self.layout = layout
        self.stats = IngestStats()
        self._clocks = {
            char: StreamClock(
                fs_hz=fs,
                samples_per_packet=layout.samples_per_packet(char),
                counter_modulus=layout.counter_modulus(char),
            )
            for char, fs in codec.PERIODIC_RATES_HZ.items()
        }
        self._bvp = codec.BvpIntegrator()
        self._beats = BeatDetector(fs_hz=codec.PERIODIC_RATES_HZ["bvp"]) if derive_heart else None
        self._on_wrist: bool | None = None

    def relink(self) -> None:
        for clock in self._clocks.values():
            clock.relink()
        self._bvp.reset()
        if self._beats is not None:
            self._beats.reset()

    def bad_packet(self, char: str, reason: str, arrival_s: float, detail: str = "") -> Emit:
        key = f"{char}:{reason}"
        self.stats.bad[key] += 1
        return status(arrival_s, "bad_packet", char=char, reason=reason, count=self.stats.bad[key], detail=detail)

    def packet(self, char: str, data: bytes, arrival_s: float) -> list[Emit]:
        try:
            pkt = codec.decode(char, data, self.layout)
        except codec.DecodeError as exc:
            out = [self.bad_packet(char, exc.reason, arrival_s, str(exc))]
            clock = self._clocks.get(char)
            stamp = clock.skip() if clock is not None else None
            if stamp is not None:  # a damaged notification is a packet known to be lost
                out.append(self._gap(char, stamp, arrival_s))
            return out
        self.stats.packets[char] += 1
        if char == "battery":
            fraction = float(pkt.values[0])
            return [
                Emit(kind="raw", modality="battery", t0_s=arrival_s, fs_hz=0.0, samples=pkt.values),
                status(arrival_s, "battery", battery=fraction),
            ]
        if char == "button":
            if not bool(pkt.values[0]):
                return []
            return [Emit(kind="raw", modality="tag", t0_s=arrival_s, fs_hz=0.0), status(arrival_s, "tag")]
        return self._periodic(pkt, arrival_s)

    def _periodic(self, pkt: codec.Packet, arrival_s: float) -> list[Emit]:
        char = pkt.char
        fs = codec.PERIODIC_RATES_HZ[char]
        n = int(pkt.values.shape[0])
        stamp = self._clocks[char].push(arrival_s, n, pkt.counter)
        out: list[Emit] = []
        if stamp.missing:
            out.append(self._gap(char, stamp, arrival_s))
        values = self._bvp.push(pkt) if char == "bvp" else pkt.values.astype(_DTYPES[char], copy=False)
        self.stats.samples[char] += n
        meta = {"unit": BVP_UNIT} if char == "bvp" else {}
        out.append(Emit(kind="raw", modality=char, t0_s=stamp.t0_s, fs_hz=fs, samples=values, meta=meta))
        if char == "bvp" and self._beats is not None:
            out.extend(self._heart(self._beats.push(stamp.t0_s, values)))
        if char == "eda":  # a whole packet below the threshold: the electrodes are off the skin
            on_wrist = bool(np.any(values >= OFF_WRIST_EDA_US))
            if on_wrist != self._on_wrist:
                self._on_wrist = on_wrist
                out.append(status(arrival_s, "on_wrist", on_wrist=on_wrist))
        return out

    def _gap(self, char: str, stamp: Stamp, arrival_s: float) -> Emit:
        self.stats.missing_samples[char] += stamp.missing
        if char == "bvp" and self._beats is not None:
            self._beats.reset()  # an interval must not span lost samples
        return status(
            arrival_s,
            "gap",
            stream=char,
            missing_samples=stamp.missing,
            start_s=stamp.gap_start_s,
            duration_s=stamp.missing / codec.PERIODIC_RATES_HZ[char],
            cause=stamp.cause,
        )

    def _heart(self, beats: BeatOutput) -> list[Emit]:
        self.stats.beats += len(beats.beats)
        out = [
            Emit(kind="raw", modality="ibi", t0_s=b.t_s, fs_hz=0.0, samples=np.array([b.ibi_s])) for b in beats.beats
        ]
        if beats.hr:
            # consecutive whole seconds make one 1 Hz message; a second without beats splits it
            run = [beats.hr[0]]
            for h in (*beats.hr[1:], None):
                if h is not None and h.t_s == run[-1].t_s + 1.0:
                    run.append(h)
                    continue
                out.append(
                    Emit(kind="raw", modality="hr", t0_s=run[0].t_s, fs_hz=1.0, samples=np.array([r.bpm for r in run]))
                )
                if h is not None:
                    run = [h]
        return out
