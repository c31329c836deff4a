"""``m3sense run`` tells the truth: exit codes, a stage that dies (and is started again), a run that is killed."""

from __future__ import annotations

import os
import re
import select
import signal
import sqlite3
import subprocess
from collections import Counter
from pathlib import Path
from typing import IO

import pytest

from m3sense.pipeline import PipelineResult, outcome
from preprocess.offline import recording_windows
from replay.e4csv import read_source
from tests.conftest import REPO, m3sense_cmd, run_cli
from tests.test_restarts import model  # noqa: F401  (the tiny model fixture)

STORE_OK = {
    "sink": "sqlite:/x.db",
    "written": 120,
    "spooled": 0,
    "spool_dir": None,
    "dropped": 0,
    "refused": 0,
    "affect_records": 60,
    "exit_code": 0,
}


def test_outcome_is_0_only_when_everything_reached_the_sink() -> None:
    code, lines = outcome(
        PipelineResult(store=STORE_OK, exit_codes={"preprocess": 0, "infer": 0, "store": 0}), "sqlite:/x.db", 1
    )
    assert code == 0 and "120 records (60 affect) written to sqlite:/x.db; none lost" in lines[-1]
    spooled = {**STORE_OK, "written": 0, "spooled": 817, "spool_dir": "/s/influx", "exit_code": 1}
    code, lines = outcome(PipelineResult(store=spooled), "influx://h:9?bucket=b", 1)
    assert (
        code == 1
        and "nothing reached sqlite:/x.db" in lines[0]
        and "817 points wait in the spool /s/influx" in lines[0]
    )
    lost = {**STORE_OK, "dropped": 3, "refused": 2, "exit_code": 1}
    code, lines = outcome(PipelineResult(store=lost), "x", 1)
    assert code == 1 and lines[0].endswith("; 5 lost (2 refused by the sink, 3 dropped)")
    code, lines = outcome(PipelineResult(store=None, exit_codes={"store": 1}, tails={"store": ["boom"]}), "x", 1)
    assert (
        code == 1
        and "unknown" in lines[0]
        and lines[-2:]
        == ["run: stage store exited with code 1 when asked to stop; its last messages:", "  [store] boom"]
    )


def test_outcome_of_a_run_whose_store_was_restarted_names_the_restart_and_the_lost_windows() -> None:
    store = {**STORE_OK, "lost_windows": 7, "lost_windows_by_device": {"s1": 7}, "exit_code": 1}
    result = PipelineResult(
        store=store,
        exit_codes={"preprocess": 0, "infer": 0, "store": 0},
        restarts=Counter(store=1),
        deaths=["store was killed by SIGKILL while replaying"],
    )
    code, lines = outcome(result, "sqlite:/x.db", 1)
    assert code == 1
    assert (
        "written to sqlite:/x.db by the store started last; none lost; 7 windows never reached the store "
        "(s1 7; stored as bus_gap rows)" in lines[0]
    )
    assert lines[-1] == "run: restarted store 1 time(s): store was killed by SIGKILL while replaying"


def _overflowing_export(tmp_path: Path) -> Path:
    """A valid export whose start time is 1e300 (a float the readers accept, an int no grid can hold)."""
    src = tmp_path / "rec"
    run_cli("simulate", str(src), "--minutes", "2", "--seed", "4", "--subjects", "1", check=True)
    folder = src / "sim01"
    (folder / "labels.csv").unlink(missing_ok=True)
    (folder / "tags.csv").write_text("")
    for name in ("ACC", "BVP", "EDA", "TEMP", "HR", "IBI"):
        path = folder / f"{name}.csv"
        head, rest = path.read_text().split("\n", 1)
        path.write_text(",".join("1e300" if f.strip()[:1].isdigit() else f for f in head.split(",")) + "\n" + rest)
    return src


def test_the_issues_overflowing_start_time_is_now_bad_input(tmp_path: Path) -> None:
    """Once a start time of 1e300 killed preprocess mid-run; the reader now refuses it up front."""
    proc = run_cli("run", str(_overflowing_export(tmp_path)), "--sink", f"sqlite:///{tmp_path / 'a.db'}", timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "ACC.csv:1: start time 1e+300" in proc.stderr and not (tmp_path / "a.db").exists()


def test_a_stage_that_dies_makes_run_exit_1_naming_it(tmp_path: Path) -> None:
    src = tmp_path / "rec"
    run_cli("simulate", str(src), "--minutes", "2", "--seed", "4", "--subjects", "1", check=True)
    bundle = tmp_path / "bad.bundle.json"  # infer dies loading it: a part that does not exist
    bundle.write_text('{"format": "m3sense-bundle", "tasks": {"stress": "nowhere.onnx"}}')
    proc = run_cli("run", str(src), "--sink", f"sqlite:///{tmp_path / 'a.db'}", "--model", str(bundle), timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    tail = proc.stderr[proc.stderr.index("run: 0 affect windows") :]
    assert "run: stage infer exited with code 2" in tail and "[infer] m3sense infer: error:" in tail  # its own words


def test_run_into_an_unreachable_influxdb_exits_1_saying_what_waits_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "rec"
    run_cli("simulate", str(src), "--minutes", "2", "--seed", "4", "--subjects", "1", check=True)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("INFLUX_TOKEN", "t")
    proc = run_cli("run", str(src), "--sink", "influx://127.0.0.1:9?bucket=b&org=o", timeout=300)
    assert proc.returncode == 1
    last = proc.stderr.rstrip().splitlines()[-1]
    spool = next((tmp_path / "state" / "m3sense" / "spool").iterdir())
    assert "nothing reached influx://127.0.0.1:9" in last and f"points wait in the spool {spool};" in last
    assert "sends them first" in last


def test_bad_input_exits_2(tmp_path: Path) -> None:
    proc = run_cli("run", str(tmp_path / "missing"), "--sink", f"sqlite:///{tmp_path / 'a.db'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


class _Run:
    """``m3sense run`` (by default at real speed on an 8-minute recording), read up to the start of the replay."""

    def __init__(self, tmp_path: Path, *extra: str, minutes: str = "8", speed: str = "1") -> None:
        self.src = src = tmp_path / "rec"
        run_cli("simulate", str(src), "--minutes", minutes, "--seed", "4", "--subjects", "1", "--no-faults", check=True)
        self.popen = subprocess.Popen(
            m3sense_cmd("run", str(src), "--speed", speed, "--sink", f"sqlite:///{tmp_path / 'a.db'}", *extra),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.popen.stderr is not None, "started with stderr=PIPE"
        self.stderr: IO[str] = self.popen.stderr
        self.err: list[str] = []
        for line in self.stderr:
            self.err.append(line)
            if line.startswith("run: replaying"):
                break
        assert self.popen.poll() is None, "".join(self.err)
        children = Path(f"/proc/{self.popen.pid}/task/{self.popen.pid}/children").read_text().split()
        self.stages = {Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[3].decode(): int(pid) for pid in children}

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


def _gone_within(pid: int, timeout_s: float) -> bool:
    """Waits on a pidfd (no polling) until ``pid`` has exited."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout_s)[0])
    finally:
        os.close(fd)


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs Linux pidfds")
def test_a_stage_killed_mid_run_is_started_again_and_the_run_says_what_was_lost(tmp_path: Path, model: Path) -> None:  # noqa: F811
    run = _Run(tmp_path, "--model", str(model), "--tasks", "stress", minutes="6", speed="20")
    try:
        os.kill(run.stages["infer"], signal.SIGKILL)
        assert run.popen.wait(timeout=300) == 1
        rest = run.stderr.read()
        assert (
            "run: stage infer was killed by SIGKILL while replaying the recordings; starting it again (1 of at most 3)"
        ) in rest
        lines = rest.rstrip().splitlines()
        assert lines[-1] == "run: restarted infer 1 time(s): infer was killed by SIGKILL while replaying the recordings"
        said = re.search(r"; (\d+) windows never reached the store \(sim01 \1; stored as bus_gap rows\)", lines[-2])
        assert said, rest[-3000:]
        lost = int(said.group(1))
        with sqlite3.connect(tmp_path / "a.db") as conn:
            stored = conn.execute("SELECT count(DISTINCT t_start_s) FROM affect").fetchone()[0]
            gaps = conn.execute("SELECT sum(value) FROM device_status WHERE event = 'bus_gap'").fetchone()[0]
        (rec,) = read_source(run.src)
        assert lost > 0 and gaps == lost and stored + lost == len(recording_windows(rec))
    finally:
        run.stop()


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs Linux pidfds")
def test_with_no_restarts_allowed_a_stage_killed_mid_run_stops_the_run_at_once(tmp_path: Path) -> None:
    run = _Run(tmp_path, "--max-restarts", "0")
    try:
        assert set(run.stages) == {"store", "infer", "preprocess"}
        os.kill(run.stages["infer"], signal.SIGKILL)
        assert run.popen.wait(timeout=60) == 1  # the replay alone would take 8 minutes
        rest = run.stderr.read()
        assert "run: stage infer was killed by SIGKILL while replaying the recordings" in rest
        assert rest.rstrip().splitlines()[-1].startswith("  [infer]")  # its last words end the output
    finally:
        run.stop()


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs Linux pidfds")
def test_kill_9_of_run_takes_its_stages_with_it(tmp_path: Path) -> None:
    run = _Run(tmp_path)
    try:
        os.kill(run.popen.pid, signal.SIGKILL)
        for name, pid in run.stages.items():
            assert _gone_within(pid, 10.0), f"{name} outlived run"
    finally:
        run.stop()
