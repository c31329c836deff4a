"""Where each device's window stream stood when the store last flushed: the windows lost
across a restart of any stage, counted in windows.

Every affect answer carries its window's lineage (``window_incarnation``, ``window_seq``:
the preprocess process that cut it and its number on ``window/<device>/``) and the window
hop (``hop_s``). Between two answers the store has seen:

- the first answer of a device: windows are numbered from 0 by each preprocess process,
  so those numbered below it never reached the store (an inference node that died before
  answering; a store started after the stream began counts what it missed too);
- same preprocess incarnation: the window numbers say exactly how many windows never
  reached the store, whoever dropped them (an inference node that died with windows in its
  batch, or was not running while preprocess published, or the store's own restart);
- a new preprocess incarnation (preprocess restarted): numbers start again, but windows
  sit on a fixed grid (``start = k * hop``), so the windows between the last one stored
  and the first of the new incarnation are the lost ones. (If the wristband itself sent
  nothing for a while across that very boundary, those windows never existed and are
  counted all the same: an upper bound, said as ``"by": "grid"``.)

The ledger is saved after each flush of the sink (:meth:`WindowLedger.to_json`), so a store
killed and restarted counts, from the first answer it gets, the windows it had received
but not flushed plus those published while it was down. Pure: no I/O but the caller's.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.jsonvalues import is_finite_number


@dataclass(frozen=True, slots=True)
class Loss:
    """Windows of ``device`` that never reached the store, just before the answer at ``time_s``."""

    device: str
    windows: int
    by: str  # "sequence" (exact) or "grid" (a preprocess restart: by window times)
    time_s: float


@dataclass(frozen=True, slots=True)
class _Position:
    incarnation: str
    seq: int
    t_start_s: float | None  # None after a device's end marker: what follows is a new stream
    hop_s: float | None


def has_lineage(meta: Mapping[str, Any]) -> bool:
    return _lineage(meta) is not None


def _lineage(meta: Mapping[str, Any]) -> tuple[str, int] | None:
    inc, seq = meta.get("window_incarnation"), meta.get("window_seq")
    if isinstance(inc, str) and 0 < len(inc) <= 32 and type(seq) is int and seq >= 0:
        return inc, seq
    return None


def _hop(meta: Mapping[str, Any]) -> float | None:
    hop = meta.get("hop_s")
    return float(hop) if is_finite_number(hop) and 0 < hop <= 3600 else None


class WindowLedger:
    """``observe(device, meta, t_start_s, end=...)`` per affect message, in arrival order."""

    def __init__(self, positions: Mapping[str, _Position] | None = None) -> None:
        self._pos: dict[str, _Position] = dict(positions or {})
        self.lost: dict[str, int] = {}

    def observe(self, device: str, meta: Mapping[str, Any], t_start_s: float, *, end: bool = False) -> Loss | None:
        lineage = _lineage(meta)
        if lineage is None:  # an answer from an inference node that does not say its window's lineage
            return None
        inc, seq = lineage
        hop = _hop(meta)
        pos = self._pos.get(device)
        missed, by = 0, "sequence"
        if pos is None:  # the first answer of a device: the windows numbered below it never came
            missed = seq
        elif inc == pos.incarnation:
            if seq <= pos.seq:
                return None  # a duplicate or a late answer: nothing new, nothing lost
            missed = seq - pos.seq - 1
        elif pos.t_start_s is not None and not end:
            step = hop or pos.hop_s
            if step and t_start_s > pos.t_start_s:
                missed, by = max(0, round((t_start_s - pos.t_start_s) / step) - 1), "grid"
        self._pos[device] = _Position(inc, seq, None if end else float(t_start_s), hop or (pos.hop_s if pos else None))
        if missed <= 0:
            return None
        self.lost[device] = self.lost.get(device, 0) + missed
        return Loss(device=device, windows=missed, by=by, time_s=float(t_start_s))

    def to_json(self, devices: Iterable[str] | None = None) -> str:
        """The positions (of ``devices`` only, when given) as JSON, for :meth:`from_json`."""
        pos = self._pos if devices is None else {d: self._pos[d] for d in devices if d in self._pos}
        return json.dumps(
            {d: [p.incarnation, p.seq, p.t_start_s, p.hop_s] for d, p in pos.items()},
            separators=(",", ":"),
            sort_keys=True,
        )

    def devices(self) -> list[str]:
        return list(self._pos)

    def adopt(self, text: str) -> None:
        """Take the positions of a :meth:`to_json` (the devices another store held) as this one's."""
        self._pos.update(WindowLedger.from_json(text)._pos)

    def forget(self, devices: Iterable[str]) -> None:
        """Drop the positions of ``devices`` (handed to another store, which keeps them on)."""
        for d in devices:
            self._pos.pop(d, None)

    @classmethod
    def from_json(cls, text: str) -> WindowLedger:
        """A ledger from :meth:`to_json`; entries that do not parse are left out (a fresh start for them)."""
        try:
            doc = json.loads(text)
        except ValueError:
            return cls()
        positions = {}
        for device, entry in doc.items() if isinstance(doc, dict) else ():
            if isinstance(entry, list) and len(entry) == 4:
                inc, seq, t, hop = entry
                lineage = _lineage({"window_incarnation": inc, "window_seq": seq})
                t_ok = t is None or (isinstance(t, (int, float)) and math.isfinite(t))
                if lineage is not None and t_ok:
                    positions[device] = _Position(inc, seq, t, _hop({"hop_s": hop}))
        return cls(positions)


def default_positions_file(sink_address: str) -> Path:
    """``$XDG_STATE_HOME/m3sense/positions/<hash of the sink>.json``: one per sink."""
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return state / "m3sense" / "positions" / f"{hashlib.sha256(sink_address.encode()).hexdigest()[:16]}.json"


class LedgerFile:
    """The ledger's file: read at start, replaced atomically (0600) after each sink flush."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def load(self) -> WindowLedger:
        if self.path is None or not self.path.exists():
            return WindowLedger()
        return WindowLedger.from_json(self.path.read_text())

    def save(self, snapshot: str) -> None:
        """Write a :meth:`WindowLedger.to_json` taken *before* the flush it follows (so a crash
        between the two over-counts a loss, never hides one)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(snapshot)
        os.replace(tmp, self.path)
