"""Alert rules over the affect timeline (pure: records in, alert events out).

A rule watches one task's probability of one label per device, e.g. "stress with
probability >= 0.7 for >= 5 min raises; below 0.5 for 2 min clears; at most one raise per
30 min". Rules come from a TOML file (:func:`load_rules`)::

    [[rule]]
    name = "stress"          # the rule's id (stored as the ``rule`` tag)
    task = "stress"
    label = "stress"
    raise_at = 0.7           # raise when p(label) >= raise_at ...
    raise_for = "5m"         # ... in every usable window for this long
    clear_below = 0.5        # clear when p(label) < clear_below ...
    clear_for = "2m"         # ... for this long
    cooldown = "30m"         # at least this long between two raises of the rule on a device
    max_gap = "1m"           # a longer stretch without a usable window restarts a dwell

Why these semantics:

- *Dwell* is measured between window ends: a condition has held for D at the end of a
  window when every usable window ending in the last D met it (the first such window ends
  D before). The event is stamped with the end of the window that decided it.
- *Hysteresis*: raise and clear thresholds differ, and between them nothing changes, so a
  probability hovering around one threshold does not flap.
- *Only evidence counts*: a window whose status is not ``ok`` (low quality, uncertain,
  calibrating) or that has no probability for the label neither raises nor clears; it is
  skipped. A short run of them inside a dwell does not restart it, but no usable window
  for longer than ``max_gap`` does (a gap in the recording, an hour off the wrist, a
  restarted device): a dwell never spans time nobody observed. A raised alert stays raised
  across a gap; it clears only on evidence.
- *Restarts*: records at or before the last one seen for a device (a replay run again, a
  duplicate) are ignored, and :meth:`AlertEngine.resume` takes the events already stored,
  so a restarted store neither raises again what is raised nor forgets its cooldown.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import UserError
from storage.records import TASKS, AffectRecord, AlertRecord
from storage.timeline import parse_duration

RAISE, CLEAR = "raise", "clear"
_KEYS = {"name", "task", "label", "raise_at", "raise_for", "clear_below", "clear_for", "cooldown", "max_gap"}
_DEFAULT_MAX_GAP_S = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    name: str
    task: str
    label: str
    raise_at: float
    raise_for_s: float
    clear_below: float
    clear_for_s: float
    cooldown_s: float = 0.0
    max_gap_s: float = _DEFAULT_MAX_GAP_S

    def __post_init__(self) -> None:
        if not 0.0 <= self.clear_below <= self.raise_at <= 1.0:
            raise ValueError(f"rule {self.name!r}: needs 0 <= clear_below <= raise_at <= 1")
        if min(self.raise_for_s, self.clear_for_s, self.cooldown_s) < 0 or self.max_gap_s <= 0:
            raise ValueError(f"rule {self.name!r}: durations must be >= 0 (max_gap > 0)")


def _seconds(value: Any, what: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and (s := parse_duration(value)) is not None:
        return s
    raise ValueError(f"{what} = {value!r}: seconds or a duration like 90s, 5m, 2h")


def rule_from_mapping(raw: Mapping[str, Any]) -> Rule:
    """One ``[[rule]]`` table as a :class:`Rule`; raises ValueError naming what is wrong."""
    name = raw.get("name")
    if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum() or len(name) > 32:
        raise ValueError(f"rule name {name!r}: 1-32 letters, digits, _ or -")
    unknown = set(raw) - _KEYS
    if unknown:
        raise ValueError(f"rule {name!r}: unknown key(s) {', '.join(sorted(unknown))}")
    missing = {"task", "label", "raise_at", "raise_for", "clear_below", "clear_for"} - set(raw)
    if missing:
        raise ValueError(f"rule {name!r}: missing {', '.join(sorted(missing))}")
    if raw["task"] not in TASKS:
        raise ValueError(f"rule {name!r}: task {raw['task']!r} is not one of {', '.join(TASKS)}")
    for key in ("raise_at", "clear_below"):
        if not isinstance(raw[key], (int, float)) or isinstance(raw[key], bool):
            raise ValueError(f"rule {name!r}: {key} must be a number in 0..1")
    return Rule(
        name=name,
        task=raw["task"],
        label=str(raw["label"]),
        raise_at=float(raw["raise_at"]),
        raise_for_s=_seconds(raw["raise_for"], f"{name}.raise_for"),
        clear_below=float(raw["clear_below"]),
        clear_for_s=_seconds(raw["clear_for"], f"{name}.clear_for"),
        cooldown_s=_seconds(raw.get("cooldown", 0), f"{name}.cooldown"),
        max_gap_s=_seconds(raw.get("max_gap", _DEFAULT_MAX_GAP_S), f"{name}.max_gap"),
    )


def load_rules(path: Path) -> list[Rule]:
    """The rules of a TOML file (``[[rule]]`` tables); :class:`UserError` for a bad file."""
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as exc:
        raise UserError(f"--alerts {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"--alerts {path}: not TOML ({exc})") from None
    tables = doc.get("rule")
    if not isinstance(tables, list) or not tables or set(doc) - {"rule"}:
        raise UserError(f"--alerts {path}: expected one or more [[rule]] tables and nothing else")
    try:
        rules = [rule_from_mapping(t) for t in tables]
    except ValueError as exc:
        raise UserError(f"--alerts {path}: {exc}") from None
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        raise UserError(f"--alerts {path}: two rules share a name")
    return rules


def probability(r: AffectRecord, label: str) -> float | None:
    """p(label) of a usable window, None for a window that is no evidence either way."""
    if r.status != "ok":
        return None
    p = dict(r.probs).get(label)
    if p is None and r.label == label:
        p = r.confidence
    return p if p is not None and math.isfinite(p) else None


@dataclass(slots=True)
class _State:
    raised: bool = False
    last_t: float = -math.inf  # the latest window end seen (usable or not)
    last_usable_t: float | None = None
    last_raise_t: float | None = None
    dwell_start_t: float | None = None  # end of the first window of the dwell under way
    dwell_ps: list[float] = field(default_factory=list)

    def restart_dwell(self) -> None:
        self.dwell_start_t = None
        self.dwell_ps = []


class AlertEngine:
    """``push(records) -> alert records``: affect records in time order per device (other
    devices and tasks interleave freely); the state is per device and rule."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules = list(rules)
        self._state: dict[tuple[str, str], _State] = {}
        self.raised = 0
        self.cleared = 0

    def state(self, device: str, rule: str) -> _State:
        return self._state.setdefault((device, rule), _State())

    def resume(self, events: Iterable[AlertRecord]) -> None:
        """Take the events a store already holds (any order): per device and rule the last one
        says whether the alert is raised, the last raise starts the cooldown, and nothing
        at or before the last event is judged again."""
        known = {r.name for r in self.rules}
        for e in sorted(events, key=lambda e: e.time_s):
            if e.rule not in known:
                continue
            s = self.state(e.device, e.rule)
            s.raised = e.event == RAISE
            s.last_t = max(s.last_t, e.time_s)
            if e.event == RAISE:
                s.last_raise_t = e.time_s
            s.restart_dwell()
            s.last_usable_t = None

    def push(self, records: Iterable[Any]) -> list[AlertRecord]:
        out = []
        for r in records:
            if not isinstance(r, AffectRecord):
                continue
            for rule in self.rules:
                if rule.task == r.task:
                    event = self._judge(rule, self.state(r.device, rule.name), r)
                    if event is not None:
                        out.append(event)
        return out

    def _judge(self, rule: Rule, s: _State, r: AffectRecord) -> AlertRecord | None:
        t = r.time_s
        if t <= s.last_t:  # a duplicate, or a replay of what was judged already
            return None
        s.last_t = t
        p = probability(r, rule.label)
        if p is None:
            return None
        if s.last_usable_t is not None and t - s.last_usable_t > rule.max_gap_s:
            s.restart_dwell()
        s.last_usable_t = t
        meets = p < rule.clear_below if s.raised else p >= rule.raise_at
        if not meets:
            s.restart_dwell()
            return None
        if s.dwell_start_t is None:
            s.dwell_start_t = t
        s.dwell_ps.append(p)
        dwell = t - s.dwell_start_t
        if s.raised:
            if dwell < rule.clear_for_s:
                return None
            event, text = CLEAR, f"{rule.label} below {rule.clear_below:g} for {dwell / 60:.1f} min"
            s.raised = False
            self.cleared += 1
        else:
            if dwell < rule.raise_for_s:
                return None
            if s.last_raise_t is not None and t - s.last_raise_t < rule.cooldown_s:
                return None  # cooling down: the dwell goes on and raises once the cooldown is over
            event, text = RAISE, f"{rule.label} at or above {rule.raise_at:g} for {dwell / 60:.1f} min"
            s.raised = True
            s.last_raise_t = t
            self.raised += 1
        confidence = sum(s.dwell_ps) / len(s.dwell_ps)
        s.restart_dwell()
        return AlertRecord(
            time_s=t, device=r.device, task=rule.task, rule=rule.name, event=event, confidence=confidence, text=text
        )
