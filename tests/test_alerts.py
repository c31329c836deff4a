"""The alert rule engine over hand-built timelines: dwell edges, hysteresis, cooldown,
low-quality windows, gaps and restarts; and the rules file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from common.errors import UserError
from storage.alerts import AlertEngine, Rule, load_rules
from storage.records import AffectRecord

T0 = 1_700_000_000.0
STEP = 10.0
RULE = Rule(
    name="stress",
    task="stress",
    label="stress",
    raise_at=0.7,
    raise_for_s=300.0,
    clear_below=0.5,
    clear_for_s=120.0,
    cooldown_s=1800.0,
    max_gap_s=60.0,
)


def window(
    t: float, p: float | None, *, device: str = "dev1", status: str = "ok", task: str = "stress"
) -> AffectRecord:
    """A window ending at ``t`` whose p(stress) is ``p`` (None: no answer)."""
    probs = () if p is None else (("baseline", 1.0 - p), ("stress", p))
    label = None if p is None or status != "ok" else ("stress" if p >= 0.5 else "baseline")
    return AffectRecord(
        time_s=t,
        t_start_s=t - 60,
        device=device,
        task=task,
        source="replay",
        model="m",
        label=label,
        confidence=None if label is None or p is None else max(p, 1 - p),
        probs=probs,
        status=status,
        off_wrist=False,
        motion=False,
        missing_fraction=0.0,
    )


def timeline(ps: Sequence[float | None], *, start: float = T0, **kw) -> list[AffectRecord]:
    return [window(start + i * STEP, p, **kw) for i, p in enumerate(ps)]


def events(engine: AlertEngine, records: list[AffectRecord]) -> list[tuple[float, str]]:
    return [(round(e.time_s - T0, 3), e.event) for e in engine.push(records)]


def test_raises_exactly_when_the_dwell_is_reached_and_clears_after_its_own() -> None:
    # 30 windows at 0.8: the first at 0 s, the dwell of 300 s is reached by the window ending at 300 s
    ps = [0.8] * 31 + [0.6] * 5 + [0.3] * 13
    out = AlertEngine([RULE]).push(timeline(ps))
    assert [(e.time_s - T0, e.event) for e in out] == [(300.0, "raise"), (360.0 + 120.0, "clear")]
    assert out[0].confidence == pytest.approx(0.8)
    assert out[1].confidence == pytest.approx(0.3)
    assert out[0].rule == "stress" and out[0].task == "stress" and out[0].device == "dev1"
    assert "stress" in out[0].text


def test_one_window_short_of_the_dwell_raises_nothing_and_a_dip_restarts_it() -> None:
    assert events(AlertEngine([RULE]), timeline([0.9] * 30)) == []  # 0..290 s: 290 s < 300 s
    # a window below raise_at (but above clear_below) at 150 s restarts the dwell at 160 s
    ps = [0.9] * 15 + [0.65] + [0.9] * 31
    assert events(AlertEngine([RULE]), timeline(ps)) == [(160.0 + 300.0, "raise")]


def test_hysteresis_between_the_thresholds_nothing_changes() -> None:
    ps = [0.8] * 31 + [0.6] * 100  # raised, then 0.6: below raise_at but not below clear_below
    assert events(AlertEngine([RULE]), timeline(ps)) == [(300.0, "raise")]


def test_low_quality_and_uncertain_windows_neither_raise_nor_clear() -> None:
    engine = AlertEngine([RULE])
    assert events(engine, timeline([0.95] * 40, status="low_quality")) == []
    assert events(engine, timeline([None] * 40, start=T0 + 400)) == []  # calibrating: no probabilities
    engine = AlertEngine([RULE])
    assert events(engine, timeline([0.8] * 31)) == [(300.0, "raise")]
    # raised; then an hour of uncertain windows with p(stress) low: they must not clear it
    assert events(engine, timeline([0.2] * 360, start=T0 + 310, status="uncertain")) == []
    assert engine.state("dev1", "stress").raised


def test_a_few_unusable_windows_inside_a_dwell_do_not_restart_it_but_a_gap_does() -> None:
    # 0..140 s good, 150..190 s low quality (4 windows, 50 s without evidence < max_gap 60 s), then good
    recs = (
        timeline([0.8] * 15)
        + timeline([0.8] * 4, start=T0 + 150, status="low_quality")
        + timeline([0.8] * 20, start=T0 + 190)
    )
    assert events(AlertEngine([RULE]), recs) == [(300.0, "raise")]
    # the same with a 70 s hole in the recording: the dwell starts again after it
    recs = timeline([0.8] * 15) + timeline([0.8] * 40, start=T0 + 140 + 70)
    assert events(AlertEngine([RULE]), recs) == [(210.0 + 300.0, "raise")]


def test_cooldown_holds_a_second_raise_until_it_is_over() -> None:
    ps = [0.8] * 31 + [0.2] * 13 + [0.9] * 200  # raise at 300 s, clear at 430 s, stress again from 440 s
    assert events(AlertEngine([RULE]), timeline(ps)) == [(300.0, "raise"), (430.0, "clear"), (2100.0, "raise")]


def test_devices_and_tasks_are_independent() -> None:
    a = timeline([0.8] * 31, device="a")
    b = timeline([0.8] * 20 + [0.3] * 11, device="b")
    other_task = timeline([0.9] * 40, task="anxiety")
    merged = sorted(a + b + other_task, key=lambda r: (r.time_s, r.device))
    out = AlertEngine([RULE]).push(merged)
    assert [(e.device, e.event) for e in out] == [("a", "raise")]


def test_a_restart_neither_raises_again_nor_forgets_the_cooldown() -> None:
    first = AlertEngine([RULE])
    stored = first.push(timeline([0.8] * 31 + [0.2] * 13))  # raise at 300 s, clear at 430 s
    assert [e.event for e in stored] == ["raise", "clear"]
    # a new store resumes from the stored events; the whole session is replayed again, then more
    again = AlertEngine([RULE])
    again.resume(stored)
    assert events(again, timeline([0.8] * 31 + [0.2] * 13)) == []  # judged already: ignored
    assert events(again, timeline([0.9] * 40, start=T0 + 1000)) == []  # inside the cooldown (till 2100 s)
    # a store that stopped while the alert was raised does not raise it again
    raised_only = AlertEngine([RULE])
    raised_only.resume(stored[:1])
    assert events(raised_only, timeline([0.9] * 40, start=T0 + 400)) == []
    assert events(raised_only, timeline([0.1] * 13, start=T0 + 800)) == [(920.0, "clear")]


def test_rules_file(tmp_path: Path) -> None:
    f = tmp_path / "alerts.toml"
    f.write_text(
        '[[rule]]\nname = "stress"\ntask = "stress"\nlabel = "stress"\nraise_at = 0.7\n'
        'raise_for = "5m"\nclear_below = 0.5\nclear_for = "2m"\ncooldown = "30m"\n'
    )
    assert load_rules(f) == [
        Rule(
            name="stress",
            task="stress",
            label="stress",
            raise_at=0.7,
            raise_for_s=300.0,
            clear_below=0.5,
            clear_for_s=120.0,
            cooldown_s=1800.0,
            max_gap_s=60.0,
        )
    ]
    shipped = load_rules(Path(__file__).resolve().parents[1] / "deploy" / "alerts.toml")
    assert shipped and all(r.task in ("stress", "anxiety", "emotion") for r in shipped)
    for bad, why in [
        ("raise_at = 0.4", "clear_below <= raise_at"),
        ('task = "mood"', "not one of"),
        ('raise_for = "soon"', "duration"),
        ('colour = "red"', "unknown key"),
    ]:
        key = bad.split(" =")[0]
        lines = [ln for ln in f.read_text().splitlines() if not ln.startswith(key + " ")]
        (tmp_path / "bad.toml").write_text("\n".join([*lines, bad]) + "\n")
        with pytest.raises(UserError, match=why):
            load_rules(tmp_path / "bad.toml")
