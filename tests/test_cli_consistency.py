"""The command line keeps its conventions, read from the parser itself (``build_parser()``), so a
new flag is covered the day it is added: every time flag says its unit in its name, every
numeric flag is checked by a type from ``common.argtypes`` (one-line error, exit 2), old
spellings still work and warn, and ``--json`` prints one object with the documented fields."""

from __future__ import annotations

import argparse
import json
import re
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

import common.argtypes as argtypes
from bus import Hub
from common.argtypes import DeprecatedFlag
from m3sense.cli import build_parser
from tests.conftest import Proc, run_cli

#: flags about time whose name needs no unit, and why
NOT_A_DURATION = {
    "--since": "its value carries its unit (30m, 2h, an ISO time)",
    "--time-scale": "a factor of real time",
    "--speed": "a factor of real time",
}
UNIT_SUFFIXES = ("-s", "-ms", "minutes")
_TIME_WORDS = re.compile(
    r"\b(seconds?|minutes?|ms|milliseconds?|hours?|length|duration|time-?out|interval|delay|period)\b",
    re.IGNORECASE,
)
#: metavars that say a value is a number (besides a type of int or float)
_NUMERIC_METAVARS = {"N", "S", "K", "F", "M", "C", "PORT"}

Flag = tuple[str, argparse.Action]  # (command path, action)


def flags(parser: argparse.ArgumentParser, path: str = "m3sense") -> Iterator[Flag]:
    """Every option of ``parser`` and of its sub-commands, as (command path, action)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from flags(sub, f"{path} {name}")
        elif action.option_strings and not isinstance(action, argparse._HelpAction):
            yield path, action


def _name(action: argparse.Action) -> str:
    return max(action.option_strings, key=len)


def is_time_flag(action: argparse.Action) -> bool:
    """A flag whose value is a time: metavar S, or a number (or a typed value) whose help speaks of time."""
    if action.nargs == 0:
        return False
    typed = action.type is not None or is_numeric_flag(action)  # a free-text flag may mention minutes in passing
    return action.metavar == "S" or (typed and bool(_TIME_WORDS.search(action.help or "")))


def time_flags_without_unit(parser: argparse.ArgumentParser) -> list[str]:
    return [
        f"{path} {_name(a)}"
        for path, a in flags(parser)
        if is_time_flag(a)
        and not isinstance(a, DeprecatedFlag)  # the old spelling, kept for one release
        and not _name(a).endswith(UNIT_SUFFIXES)
        and _name(a) not in NOT_A_DURATION
    ]


def is_numeric_flag(action: argparse.Action) -> bool:
    if action.nargs == 0:  # store_true, count: no value to check
        return False
    default_is_number = isinstance(action.default, int | float) and not isinstance(action.default, bool)
    return action.type in (int, float) or default_is_number or action.metavar in _NUMERIC_METAVARS


def checks_its_value(kind: object) -> bool:
    """A kind from ``common.argtypes``, or one that refuses non-numbers in argparse's way (a bare
    ``int`` or ``float`` does not: ``float('nan')`` passes, ``int('x')`` is a traceback-less but
    unexplained "invalid int value")."""
    if getattr(kind, "__module__", None) == argtypes.__name__:
        return True
    for bad in ("x", "nan"):
        try:
            kind(bad)  # type: ignore[operator]
        except argparse.ArgumentTypeError:
            continue
        except (TypeError, ValueError):
            return False
        return False
    return True


def unchecked_numeric_flags(parser: argparse.ArgumentParser) -> list[str]:
    return [f"{path} {_name(a)}" for path, a in flags(parser) if is_numeric_flag(a) and not checks_its_value(a.type)]


def test_every_time_flag_says_its_unit() -> None:
    parser = build_parser()
    assert time_flags_without_unit(parser) == []
    found = {_name(a) for _, a in flags(parser) if is_time_flag(a)}
    assert {"--hop-s", "--max-wait-s", "--flush-interval-s", "--timeout-s", "--wait-s", "--minutes"} <= found


def test_every_numeric_flag_has_a_checking_type() -> None:
    parser = build_parser()
    assert unchecked_numeric_flags(parser) == []
    numeric = [a for _, a in flags(parser) if is_numeric_flag(a)]
    assert len(numeric) > 50  # the detection is not vacuous
    for action in numeric:  # and each type refuses what is not a number, in argparse's way
        kind = action.type
        assert callable(kind)
        for bad in ("x", "nan"):
            with pytest.raises(argparse.ArgumentTypeError):
                kind(bad)


def test_the_checks_catch_a_new_flag_that_breaks_the_rules() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    extra = sub.add_parser("newcommand")
    extra.add_argument("--retries", type=int, default=3)
    extra.add_argument("--ratio", type=float, metavar="F")
    extra.add_argument("--poll", type=argtypes.positive_seconds, metavar="S", help="poll every S seconds")
    assert unchecked_numeric_flags(parser) == ["m3sense newcommand --retries", "m3sense newcommand --ratio"]
    assert time_flags_without_unit(parser) == ["m3sense newcommand --poll"]


@pytest.mark.parametrize(
    ("kind", "good", "bad"),
    [
        (argtypes.port, {"0": 0, "65535": 65535}, ["-1", "65536", "1.5"]),
        (argtypes.positive_int, {"1": 1}, ["0", "-2", "2.5"]),
        (argtypes.non_negative_int, {"0": 0, "7": 7}, ["-1", "x"]),
        (argtypes.fraction, {"0": 0.0, "1": 1.0, "0.25": 0.25}, ["-0.1", "1.01", "inf"]),
        (argtypes.positive_seconds, {"0.5": 0.5}, ["0", "-1", "inf"]),
        (argtypes.non_negative_seconds, {"0": 0.0, "2": 2.0}, ["-1", "inf"]),
        (argtypes.wait_seconds, {"0": 0.0, "inf": None}, ["-1"]),
        (argtypes.finite_number, {"-275.54": -275.54}, ["inf", "-inf"]),
        (argtypes.speed, {"max": float("inf"), "2": 2.0}, ["0", "-1"]),
    ],
)
def test_each_kind_takes_its_range_and_refuses_the_rest(kind, good: dict, bad: list[str]) -> None:
    for text, value in good.items():
        assert kind(text) == value
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(repr(text))):
            kind(text)


#: each deprecated spelling: (command, other arguments it needs, old flag and value, new flag and value,
#: the destination both set, the value both give it)
ALIASES = [
    ("replay", ["rec"], "--wait", "3", "--wait-s", "3", "wait", 3.0),
    ("tap", [], "--idle-exit", "2", "--idle-exit-s", "2", "idle_exit", 2.0),
    ("preprocess", [], "--hop", "10", "--hop-s", "10", "hop", 10.0),
    ("preprocess", [], "--late", "2", "--late-s", "2", "late", 2.0),
    ("preprocess", [], "--max-gap", "9", "--max-gap-s", "9", "max_gap", 9.0),
    ("preprocess", [], "--device-timeout", "60", "--device-timeout-s", "60", "device_timeout", 60.0),
    ("preprocess", [], "--report-every", "5", "--report-every-s", "5", "report_every", 5.0),
    ("store", ["--sink", "a.db"], "--flush-interval", "2", "--flush-interval-s", "2", "flush_interval", 2.0),
    ("infer", [], "--max-wait-ms", "20", "--max-wait-s", "0.02", "max_wait_s", 0.02),
    ("ble scan", [], "--timeout", "2", "--timeout-s", "2", "timeout", 2.0),
    ("ble stream", [], "--duration", "8", "--duration-s", "8", "duration", 8.0),
    ("ble stream", [], "--watchdog", "3", "--watchdog-s", "3", "watchdog", 3.0),
    ("ble stream", [], "--wait", "30", "--wait-s", "30", "wait", 30.0),
    ("ble stream", [], "--disconnect-every", "12", "--disconnect-every-s", "12", "disconnect_every", 12.0),
    ("ble stream", [], "--zombie-after", "7", "--zombie-after-s", "7", "zombie_after", 7.0),
    ("e4-client", [], "--duration", "5", "--duration-s", "5", "duration", 5.0),
]


def test_every_deprecated_spelling_is_tested() -> None:
    deprecated = {f"{path} {_name(a)}" for path, a in flags(build_parser()) if isinstance(a, DeprecatedFlag)}
    assert deprecated == {f"m3sense {command} {old}" for command, _, old, *_ in ALIASES}


@pytest.mark.parametrize(
    ("command", "extra", "old", "old_value", "new", "new_value", "dest", "value"),
    ALIASES,
    ids=[f"{a[0]} {a[2]}" for a in ALIASES],
)
def test_old_spellings_work_and_warn_once(
    command: str,
    extra: list[str],
    old: str,
    old_value: str,
    new: str,
    new_value: str,
    dest: str,
    value: float,
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = build_parser()
    by_new = parser.parse_args([*command.split(), *extra, new, new_value])
    assert capsys.readouterr().err == ""
    by_old = parser.parse_args([*command.split(), *extra, old, old_value])
    warning = capsys.readouterr().err.splitlines()
    assert getattr(by_old, dest) == pytest.approx(value) == getattr(by_new, dest)
    assert len(warning) == 1 and f"{old} is deprecated" in warning[0] and f"use {new}" in warning[0]


def test_a_bad_number_is_one_line_and_exit_2() -> None:
    proc = run_cli("ble", "scan", "--virtual", "1", "--timeout", "-1")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "m3sense ble scan: error: argument --timeout: expected a positive number of seconds, got '-1' "
        "(see m3sense ble scan --help)"
    ]
    for args in (["e4-server", "--port", "70000"], ["store", "--sink", "a.db", "--max-spool-mb", "0"]):
        proc = run_cli(*args)
        assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
        assert f"argument {args[-2]}: expected" in proc.stderr
    proc = run_cli("e4-client", "--server", "127.0.0.1:70000")  # a port inside HOST:PORT is in range too
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        "m3sense e4-client: error: --server '127.0.0.1:70000' must be HOST:PORT, PORT from 1 to 65535"
    ]


def test_the_old_spelling_runs_the_command(tmp_path: Path) -> None:
    proc = run_cli("ble", "scan", "--virtual", "2", "--timeout", "0.1", "--json")
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["name"] for line in proc.stdout.splitlines()] == ["Empatica E4"] * 2
    assert proc.stderr.strip().endswith("use --timeout-s")


REPLAY_FIELDS = {"command", "exit_code", "reason", "finished", "devices", "messages", "samples", "recorded_s", "wall_s"}
RUN_FIELDS = {
    "command",
    "exit_code",
    "reason",
    "devices",
    "affect_windows",
    "sink",
    "written",
    "affect_records",
    "spooled",
    "spool_dir",
    "dropped",
    "refused",
    "lost_windows",
    "lost_windows_by_device",
    "restarts",
    "stages",
    "died",
    "failure",
    "problems",
    "store",
    "lines",
}


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rec")
    run_cli("simulate", str(out), "--minutes", "2", "--seed", "4", "--subjects", "1", "--no-faults", check=True)
    return out


def test_replay_json_says_what_it_published(recording: Path, hub: Hub) -> None:
    proc = run_cli("replay", str(recording), "--bus", hub.address, "--speed", "max", "--wait-s", "0", "--json")
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()  # one object, nothing else on stdout
    report = json.loads(line)
    assert set(report) == REPLAY_FIELDS
    assert report["command"] == "replay" and report["exit_code"] == 0 and report["reason"] == "done"
    assert report["finished"] is True and report["devices"] == 1 and report["recorded_s"] == pytest.approx(120, abs=1)
    done = re.search(r"replay: done, (\d+) device\(s\), (\d+) messages, (\d+) samples", proc.stderr)
    assert done is not None  # the text summary stays on stderr, with the same figures
    assert [int(x) for x in done.groups()] == [report["devices"], report["messages"], report["samples"]]


def test_run_json_says_what_reached_the_sink(recording: Path, tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    proc = run_cli("run", str(recording), "--sink", f"sqlite:///{db}", "--json", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (line,) = proc.stdout.splitlines()  # the live table went to stderr
    report = json.loads(line)
    assert set(report) == RUN_FIELDS
    assert report["command"] == "run" and report["reason"] == "done" and report["problems"] == []
    assert report["exit_code"] == 0 and report["devices"] == 1 and report["affect_windows"] > 0
    assert report["written"] == report["store"]["written"] > 0 and report["dropped"] == report["refused"] == 0
    assert report["lines"][-1] in proc.stderr and f"{report['written']} records" in report["lines"][0]
    assert set(report["stages"]) == {"preprocess", "infer", "store"} and set(report["stages"].values()) == {0}
    with sqlite3.connect(db) as conn:  # the count is the sink's own
        stored = conn.execute("SELECT count(*) FROM affect").fetchone()[0]
    assert stored == report["affect_records"]


def test_a_report_names_why_it_is_not_zero_and_holds_no_nan() -> None:
    from common.summary import summary
    from m3sense.pipeline import PipelineResult
    from m3sense.reports import finish, run_report

    result = PipelineResult(store={"sink": "sqlite:x.db", "written": 5, "dropped": 2, "refused": 1, "exit_code": 1})
    result.restarts["infer"] += 1
    report = finish("run", run_report(result, "sqlite:x.db", 1, ["run: ..."]), 1)
    assert report["reason"] == "stage infer was restarted 1 time(s); 3 records lost"
    assert finish("run", None, 130)["reason"] == "interrupted (Ctrl-C)"
    demo = finish("demo", {"agreement": {"stress": {"accuracy": float("nan"), "n": 0}}}, 0)
    assert json.loads(json.dumps(demo, allow_nan=False))["agreement"]["stress"]["accuracy"] is None
    assert summary("lsl", 1, {"lost": 3}, ["3 messages lost on the bus"])["reason"] == "3 messages lost on the bus"
    assert summary("lsl", 0, {"lost": 0})["reason"] == "done"


STAGE_SUMMARIES = [
    (["preprocess"], "preprocess: subscribed", {"counters"}),
    (["infer", "--state-dir", "none"], "listening on", {"counters"}),
    (
        ["e4-server", "--port", "0"],
        "e4-server: listening on",
        {"clients", "lines", "dropped_clients", "refused_clients"},
    ),
]


@pytest.mark.parametrize(("args", "ready", "fields"), STAGE_SUMMARIES, ids=[s[0][0] for s in STAGE_SUMMARIES])
def test_a_stopped_stage_prints_its_summary_as_json(
    args: list[str], ready: str, fields: set[str], hub: Hub, procs: list[Proc]
) -> None:
    stage = Proc([*args, "--bus", hub.address, "--json"])
    procs.append(stage)
    stage.wait_for_stderr(ready)
    stage.popen.send_signal(signal.SIGTERM)
    out, err = stage.popen.communicate(timeout=60)
    assert stage.popen.returncode == 0, err
    (line,) = out.splitlines()
    report = json.loads(line)
    assert set(report) == {"command", "exit_code", "reason"} | fields
    assert report["command"] == args[0] and report["exit_code"] == 0 and report["reason"] == "done"
    if "counters" in fields:  # the same counts as the last line on stderr
        last = [line for line in err.splitlines() if line.startswith(f"{args[0]}: ")][-1]
        said = dict(pair.rsplit(" ", 1) for pair in re.split(r", |; ", last.split(": ", 1)[1]))
        assert len(said) >= 2 and {k: int(v) for k, v in said.items()} == {
            k: report["counters"].get(k, 0) for k in said
        }
