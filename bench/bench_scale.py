"""Many wristbands at real speed through a 3-server NATS cluster (or the ZeroMQ hub): what one
machine holds, what each stage costs per wristband-hour, and the latency the system adds.

K gateway processes publish N virtual wristbands (``replay/simulate.py`` recordings, the same
physiology under N device ids) at real speed; ``preprocess``, ``infer`` and ``store`` (SQLite) run
as the commands a user starts, one worker each, all on the same bus. Printed per run:

- wristbands held in real time: every window stored, and the p99 latency below the 5 s hop
  (a system that falls behind grows a backlog, and its latency grows past any bound);
- CPU per wristband-hour per stage (gateways, bus servers, preprocess, infer, store):
  each process's own CPU seconds (``/proc``, all its threads) over the replay and the drain,
  divided by N x the replayed hours;
- latency as the system adds it: from the moment the last packet a window needs was due (the
  wristband would have sent it; our own windower, run offline over the same recording, says
  which packet that is) to the moment its row was visible in the store's SQLite file (polled
  every ``--poll-ms``): the packet cadence and the filter delay are physics and are not in it;
  a gateway running late is, so the figure is an upper bound;
- windows lost: expected (the offline windower over each recording) minus stored, and what
  the store itself counted as lost, dropped or refused. Must be 0.

Usage (small default: 40 s of replay, about a minute with start-up and drain):
    .venv/bin/python bench/bench_scale.py [--devices 50[,200]] [--gateways 2] [--seconds 40]
        [--bus nats|zmq|both] [--flush-interval 0.1] [--seed 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the tests' server fixtures live in the repository
    sys.path.insert(0, str(ROOT))

from bus import Publisher, Subscriber, free_bus_address, topic_for  # noqa: E402
from preprocess import Preprocessor  # noqa: E402
from preprocess.windower import WindowConfig, grid_phase_s  # noqa: E402
from replay import simulate_recordings  # noqa: E402
from replay.chunks import recording_messages  # noqa: E402
from replay.clock import replay  # noqa: E402
from replay.recording import Recording  # noqa: E402

MAX_BASES = 99  # distinct simulated people; more devices reuse their physiology under other ids
CLK_TCK = os.sysconf("SC_CLK_TCK")
END_LINE = "end of device "  # what the store says on stderr once a device is wholly in the sink
OWNS_LINE = ": owns partitions "  # what a worker of a group says when its share changes
PARTITIONS = 16  # a worker group's device partitions (bus.partitions)


def device_ids(n: int) -> list[str]:
    return [f"w{i:05d}" for i in range(n)]


def base_recordings(n: int, seconds: float, seed: int) -> list[Recording]:
    return simulate_recordings(minutes=seconds / 60, seed=seed, subjects=min(n, MAX_BASES))


def fleet(n: int, seconds: float, seed: int, gateway: int | None = None, gateways: int = 1) -> list[Recording]:
    """The N recordings (or those of one gateway: every ``gateways``-th device)."""
    bases = base_recordings(n, seconds, seed)
    ids = device_ids(n)
    chosen = range(n) if gateway is None else range(gateway, n, gateways)
    return [replace(bases[i % len(bases)], device=ids[i]) for i in chosen]


def window_deadlines(rec: Recording, config: WindowConfig | None = None) -> dict[float, float]:
    """Per window (by its end, data time) the offset from the recording's start at which the
    last packet it needs was due: our own windower run over the replay's messages in due order
    says which message completes each window (its end, end of recording, closes the last)."""
    pre = Preprocessor(config)
    out: dict[float, float] = {}
    for due, msg in recording_messages(rec):
        for w in pre.push(msg, now_s=due):
            out[round(w.t_end_s, 3)] = due - rec.start_s
    last = max(out.values(), default=0.0)
    for w in pre.flush():
        out[round(w.t_end_s, 3)] = last
    return out


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (not its children)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# ---- a gateway: its share of the wristbands at real speed, in its own process -------------------


async def _gateway(args: argparse.Namespace) -> None:
    recs = fleet(args.devices, args.seconds, args.seed, args.gateway, args.gateways)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    async with Publisher(args.bus) as pub:
        stats = await replay(recs, pub, speed=1.0, wait_s=120.0, packet_s=args.packet_s)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    report = {
        "started_unix_s": stats.started_unix_s,
        "messages": stats.messages,
        "wall_s": stats.wall_s,
        "cpu_s": cpu,
        "devices": [r.device for r in recs],
    }
    Path(args.out).write_text(json.dumps(report))


# ---- the store watcher: when each window's row became visible ----------------------------------


class StoreWatcher(threading.Thread):
    """Polls the SQLite file for new affect rows; records the wall time each (device, window end)
    was first seen. Reads only the last ``slack_s`` of data time each round (the time index)."""

    def __init__(self, path: Path, poll_s: float, slack_s: float = 30.0) -> None:
        super().__init__(daemon=True, name="store-watcher")
        self.path, self.poll_s, self.slack_s = path, poll_s, slack_s
        self.seen: dict[tuple[str, float], float] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        newest = 0.0
        conn: sqlite3.Connection | None = None
        while not self._halt.wait(self.poll_s):
            try:
                if conn is None:
                    if not self.path.exists():
                        continue
                    conn = sqlite3.connect(self.path, timeout=5.0)  # only reads; WAL lets the store write on
                rows = conn.execute(
                    "SELECT DISTINCT device, time_s FROM affect WHERE time_s > ?", (newest - self.slack_s,)
                ).fetchall()
            except sqlite3.Error:  # no tables yet, or the file is being made: look again next round
                continue
            now = time.time()
            for device, t in rows:
                key = (device, round(t, 3))
                if key not in self.seen:
                    self.seen[key] = now
                    newest = max(newest, t)
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        self._halt.set()
        self.join()


# ---- the bus: a 3-server NATS cluster or a ZeroMQ hub -------------------------------------------


class Bus:
    def __init__(self, kind: str, folder: Path) -> None:
        self.kind = kind
        self._cluster = None
        self._hub: subprocess.Popen | None = None
        if kind == "nats":
            from tests.nats_servers import NatsCluster

            self._cluster = NatsCluster(folder / "nats").start()
            self.address = self._cluster.bus
        else:
            self.address = free_bus_address()
            self._hub = subprocess.Popen(
                [sys.executable, "-m", "m3sense", "hub", "--bus", self.address],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

    def pids(self) -> list[int]:
        if self._cluster is not None:
            return [s._proc.pid for s in self._cluster.servers if s._proc is not None]
        return [self._hub.pid] if self._hub is not None else []

    def stop(self) -> None:
        if self._cluster is not None:
            self._cluster.stop()
        if self._hub is not None:
            self._hub.terminate()
            self._hub.wait(timeout=20)


class StageProcess:
    """One stage command as a child process: stderr to a log file (N devices make N lines),
    the store's ``end of device`` lines tracked, stdout kept (the store's JSON report). Its own
    small wrapper rather than ``run``'s supervisor: a bench must not follow the shell's internals."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, profile: Path | None = None) -> None:
        self.name, self.argv, self.log_path = name, list(argv), log_path
        #: where cProfile writes the stage's profile at its (clean, SIGTERM) exit; None: no profiling
        self.profile = profile
        self.proc: asyncio.subprocess.Process | None = None
        self.ended: set[str] = set()
        #: the partitions this worker owns now (``--workers-group``: it says so on stderr)
        self.owned: set[int] = set()
        self.changed = asyncio.Event()
        self.stdout = b""
        self._readers: list[asyncio.Task] = []

    async def start(self) -> None:
        prof = ["-m", "cProfile", "-o", str(self.profile)] if self.profile else []
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *prof,
            "-m",
            "m3sense",
            *self.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._readers = [asyncio.create_task(self._read_stderr()), asyncio.create_task(self._read_stdout())]

    async def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        with open(self.log_path, "a") as log:
            async for raw in self.proc.stderr:
                line = raw.decode(errors="replace").rstrip()
                if END_LINE in line:
                    self.ended.add(line.split(END_LINE, 1)[1].split()[0])
                elif OWNS_LINE in line:
                    owned = line.split(OWNS_LINE, 1)[1].split()[0]
                    self.owned = set() if owned == "none" else {int(p) for p in owned.split(",")}
                log.write(line + "\n")
                self.changed.set()
        self.changed.set()

    async def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        self.stdout = await self.proc.stdout.read()

    async def stop(self, timeout_s: float = 60.0) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout_s)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        await asyncio.gather(*self._readers)
        code = self.proc.returncode
        assert code is not None  # waited for above
        return code

    def report(self) -> dict:
        """The last JSON object the stage printed on stdout (the store's ``--json``)."""
        for line in reversed(self.stdout.decode(errors="replace").splitlines()):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                return obj
        return {}


async def _partitions_owned(stages: Sequence[StageProcess], timeout_s: float) -> None:
    """Wait until each worker group's members own all partitions between them, once each."""
    groups: dict[str, list[StageProcess]] = {}
    for s in stages:
        if s.name[-1].isdigit():  # a worker of a group
            groups.setdefault(s.name.rstrip("0123456789"), []).append(s)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s

    def settled() -> bool:
        return all(sum(len(w.owned) for w in ws) == PARTITIONS for ws in groups.values()) and all(
            len(set().union(*(w.owned for w in ws))) == PARTITIONS for ws in groups.values()
        )

    while not settled():
        if loop.time() > deadline:
            owned = "; ".join(f"{w.name} owns {sorted(w.owned)}" for ws in groups.values() for w in ws)
            raise RuntimeError(
                f"the worker groups did not share the {PARTITIONS} partitions in {timeout_s:.0f} s: {owned}"
            )
        await asyncio.sleep(0.2)


async def _tap_hops(address: str, seen: dict[str, dict[tuple[str, float], float]]) -> None:
    """When each window reached the bus (``window/``) and its answer did (``affect/``): the
    latency split by hop. A plain subscription (no durable consumer), so it takes nothing
    from the stages."""
    async with Subscriber(address, ["window/", "affect/"]) as sub:
        while True:
            msg = await sub.recv()
            t_end = msg.meta.get("t_end")
            if msg.meta.get("event") is None and isinstance(t_end, (int, float)):
                seen.setdefault(msg.kind, {}).setdefault((msg.device, round(t_end, 3)), time.time())


@dataclass
class RunResult:
    kind: str
    devices: int
    seconds: float
    expected: int = 0
    stored: int = 0
    store_lost: int = 0
    latencies: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: per hop (window out of preprocess, affect out of infer, row in the store) its share of the latency
    hops: dict[str, np.ndarray] = field(default_factory=dict)
    unobserved: int = 0
    cpu_s: dict[str, float] = field(default_factory=dict)
    drained: bool = True
    gateway_wall_s: float = 0.0
    workers: tuple[int, ...] = (1, 1, 1)  # preprocess, infer, store
    #: stages that exited before they were stopped (their CPU counts up to the last reading)
    early_exits: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return self.expected - self.stored + self.store_lost

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies.size else math.nan

    @property
    def held(self) -> bool:
        return (
            not self.early_exits
            and self.drained
            and self.lost == 0
            and self.unobserved == 0
            and self.percentile(99) < 5.0
        )


async def run_once(
    kind: str,
    n: int,
    gateways: int,
    seconds: float,
    seed: int,
    flush_s: float,
    poll_s: float,
    folder: Path,
    profile: Path | None = None,
    workers: tuple[int, ...] = (1, 1, 1),
    packet_s: float | None = None,
    stagger: bool = False,
) -> RunResult:
    res = RunResult(kind=kind, devices=n, seconds=seconds)
    bases = base_recordings(n, seconds, seed)
    ids = device_ids(n)
    config = WindowConfig(stagger=stagger)
    by_phase: dict[tuple[int, float], dict[float, float]] = {}  # (base, grid phase): its windows' deadlines
    for i, device in enumerate(ids):
        b, phase = i % len(bases), grid_phase_s(device, config.hop_s) if stagger else 0.0
        if (b, phase) not in by_phase:
            by_phase[b, phase] = window_deadlines(replace(bases[b], device=device), config)
    deadlines = {
        device: by_phase[i % len(bases), grid_phase_s(device, config.hop_s) if stagger else 0.0]
        for i, device in enumerate(ids)
    }
    res.expected = sum(len(d) for d in deadlines.values())
    db = folder / f"{kind}-{n}.db"
    bus = Bus(kind, folder / f"{kind}-{n}-bus")
    stages: list[StageProcess] = []
    try:
        on_bus = ["--bus", bus.address]
        store_argv = ["store", *on_bus, "--sink", f"sqlite:///{db}", "--json", "--positions", "none"]
        if flush_s > 0:
            store_argv += ["--flush-interval", str(flush_s)]
        sharded = kind == "nats" and max(workers) > 1
        if sharded and workers[2] > 1:  # a store worker group, sharing one SQLite file
            specs = [(f"store{i}", [*store_argv, "--workers-group", "st"]) for i in range(workers[2])]
        else:
            specs = [("store", store_argv)]
        for stage, argv, count, group in (
            ("infer", ["infer", *on_bus, "--state-dir", "none"], workers[1], "inf"),
            ("preprocess", ["preprocess", *on_bus, *(["--stagger"] if stagger else [])], workers[0], "pre"),
        ):
            if sharded:  # every worker of a stage in one group (both stages grouped, so both are partitioned)
                specs += [(f"{stage}{i}", [*argv, "--workers-group", group]) for i in range(count)]
            else:
                specs.append((stage, argv))
        for name, argv in specs:
            prof = profile / f"{kind}-{n}-{name}.prof" if profile else None
            s = StageProcess(name, argv, folder / f"{kind}-{n}-{name}.log", prof)
            await s.start()
            stages.append(s)
        if sharded:
            await _partitions_owned(stages, 90.0)
        async with Publisher(bus.address) as probe:  # every stage has subscribed (a durable consumer on NATS)
            needed = [topic_for(k, d) for d in ids for k in ("window", "affect")]
            if missing := await probe.wait_for_subscribers(needed, 180.0):
                raise RuntimeError(f"no subscriber for {missing[0]}; stage logs in {folder}")
        watcher = StoreWatcher(db, poll_s)
        watcher.start()
        on_bus_at: dict[str, dict[tuple[str, float], float]] = {"window": {}, "affect": {}}
        tap = asyncio.create_task(_tap_hops(bus.address, on_bus_at))
        pids = {s.name: s.proc.pid for s in stages if s.proc is not None}  # all started above
        cpu0 = {name: proc_cpu_s(pid) for name, pid in pids.items()}
        last_cpu = dict(cpu0)  # the last reading of each stage: one that exits early keeps its CPU so far

        async def sample_cpu() -> None:
            while True:
                await asyncio.sleep(1.0)
                for name, pid in pids.items():
                    if not math.isnan(cpu := proc_cpu_s(pid)):
                        last_cpu[name] = cpu

        sampler = asyncio.create_task(sample_cpu())
        bus0 = sum(proc_cpu_s(p) for p in bus.pids())
        outs = [folder / f"{kind}-{n}-gw{i}.json" for i in range(gateways)]
        script = Path(__file__).resolve()
        gw = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                str(script),
                "--gateway",
                str(i),
                "--gateways",
                str(gateways),
                "--devices",
                str(n),
                "--seconds",
                str(seconds),
                "--seed",
                str(seed),
                "--bus-address",
                bus.address,
                "--out",
                str(outs[i]),
                *(("--packet-s", str(packet_s)) if packet_s else ()),
            )
            for i in range(gateways)
        ]
        codes = await asyncio.gather(*(p.wait() for p in gw))
        if any(codes):
            raise RuntimeError(f"a gateway failed (exit codes {codes})")
        reports = [json.loads(o.read_text()) for o in outs]
        res.gateway_wall_s = max(r["wall_s"] for r in reports)
        stores = [s for s in stages if s.name.startswith("store")]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(120.0, 2 * seconds)
        while not set().union(*(s.ended for s in stores)) >= set(ids):
            for s in stores:
                s.changed.clear()
            waits = [asyncio.ensure_future(s.changed.wait()) for s in stores]
            left = max(0.0, deadline - loop.time())
            _, pending = await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            for w in pending:
                w.cancel()
            if len(pending) == len(waits):
                res.drained = False
                break
        await asyncio.sleep(2 * poll_s)  # the watcher's last look at what the store flushed
        sampler.cancel()
        cpu1 = {name: proc_cpu_s(pid) for name, pid in pids.items()}
        for st in stages:
            if st.proc is not None and st.proc.returncode is not None:
                res.early_exits.append(f"{st.name} exited early (code {st.proc.returncode}); log: {st.log_path}")
                cpu1[st.name] = last_cpu[st.name]
        for name in pids:  # a stage's workers together
            stage = name.rstrip("0123456789")
            used = cpu1[name] - cpu0[name]  # NaN: it died before the replay began (it used nothing since)
            res.cpu_s[stage] = res.cpu_s.get(stage, 0.0) + (0.0 if math.isnan(used) else used)
        res.workers = workers if any(s.name[-1].isdigit() for s in stages) else (1, 1, 1)
        res.cpu_s["bus servers" if kind == "nats" else "hub"] = sum(proc_cpu_s(p) for p in bus.pids()) - bus0
        res.cpu_s["gateways"] = sum(r["cpu_s"] for r in reports)
        watcher.stop()
        tap.cancel()
        for s in reversed(stages):  # upstream first, so each flushes into a running consumer
            await s.stop()
        for report in (s.report() for s in stores):
            res.store_lost += int(report.get("lost_windows", 0) or 0) + int(report.get("dropped", 0) or 0)
            res.store_lost += int(report.get("refused", 0) or 0)
        with sqlite3.connect(db) as conn:
            stored = set(conn.execute("SELECT DISTINCT device, time_s FROM affect").fetchall())
        res.stored = len(stored)
        started = {d: r["started_unix_s"] for r in reports for d in r["devices"]}
        lat: list[float] = []
        hops: dict[str, list[float]] = {"preprocess": [], "infer": [], "store": []}
        for device, t in stored:
            key = (device, round(t, 3))
            due = deadlines[device].get(key[1])
            landed = watcher.seen.get(key)
            if due is None or landed is None:
                res.unobserved += 1
                continue
            arrived = started[device] + due
            lat.append(landed - arrived)
            window, affect = on_bus_at["window"].get(key), on_bus_at["affect"].get(key)
            if window is not None and affect is not None:
                hops["preprocess"].append(window - arrived)
                hops["infer"].append(affect - window)
                hops["store"].append(landed - affect)
        res.latencies = np.array(lat)
        res.hops = {k: np.array(v) for k, v in hops.items()}
    finally:
        for s in reversed(stages):
            if s.proc is not None and s.proc.returncode is None:
                await s.stop()
        bus.stop()
    return res


def print_result(r: RunResult) -> None:
    hours = r.devices * r.seconds / 3600
    held = "yes" if r.held else "NO"
    print(
        f"{r.kind:4s} {r.devices:5d} wristbands x {r.seconds:.0f} s, workers {'+'.join(map(str, r.workers))}: "
        f"held in real time {held}; "
        f"windows {r.stored}/{r.expected} stored, lost {r.lost}"
        + ("" if r.drained else " (the store had not finished every device in time)")
        + (f", {r.unobserved} not seen by the watcher" if r.unobserved else "")
        + f"; the gateways took {r.gateway_wall_s:.0f} s to publish {r.seconds:.0f} s"
    )
    print(
        f"     latency (last packet needed -> row in the store) p50 {r.percentile(50) * 1e3:.0f} ms, "
        f"p99 {r.percentile(99) * 1e3:.0f} ms, max {r.percentile(100) * 1e3:.0f} ms"
    )
    if all(v.size for v in r.hops.values()):
        parts = ", ".join(
            f"{k} {np.percentile(v, 50) * 1e3:.0f}/{np.percentile(v, 99) * 1e3:.0f}" for k, v in r.hops.items()
        )
        print(f"     by hop, p50/p99 ms (packet -> window on the bus -> affect on the bus -> row): {parts}")
    for line in r.early_exits:
        print(f"     {line}")
    total = sum(r.cpu_s.values())
    parts = ", ".join(f"{k} {v / hours:.1f}" for k, v in r.cpu_s.items())
    print(
        f"     CPU s per wristband-hour: {parts}; total {total / hours:.1f} "
        f"({total / r.gateway_wall_s:.2f} cores over the {r.gateway_wall_s:.0f} s replay)"
    )


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", default="50", help="N wristbands; several sizes comma-separated (default 50)")
    ap.add_argument("--gateways", type=int, default=2, help="K gateway processes sharing the wristbands")
    ap.add_argument("--seconds", type=float, default=40, help="length of every recording (default 40)")
    ap.add_argument("--bus", choices=("nats", "zmq", "both"), default="nats")
    ap.add_argument(
        "--flush-interval", type=float, default=0.1, help="the store's --flush-interval in s (0: its default)"
    )
    ap.add_argument("--poll-ms", type=float, default=50, help="how often the store file is read for new rows")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument(
        "--preprocess-workers", type=int, default=1, help="nats: P preprocess workers in one --workers-group"
    )
    ap.add_argument("--infer-workers", type=int, default=1, help="nats: M infer workers in one --workers-group")
    ap.add_argument("--store-workers", type=int, default=1, help="nats: S store workers in one --workers-group")
    ap.add_argument("--profile", type=Path, default=None, help="write each stage's cProfile output into this folder")
    ap.add_argument(
        "--keep", type=Path, default=None, help="keep the stages' logs, stores and NATS data in this folder"
    )
    ap.add_argument(
        "--packet-s",
        type=float,
        default=None,
        help="gateways send about S seconds of each signal per message (replay --packet-s); latency is "
        "still measured from when the wristband's own packet was due, so the wait counts against it",
    )
    ap.add_argument(
        "--stagger",
        action="store_true",
        help="preprocess --stagger: each wristband's windows on its own grid phase, not all closing at once",
    )
    ap.add_argument("--gateway", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--bus-address", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.gateway is not None:  # one gateway process, started by the bench itself
        args.devices = int(args.devices)
        args.bus = args.bus_address
        asyncio.run(_gateway(args))
        return
    if args.seconds < 30:
        ap.error("--seconds must be >= 30 (a window is 20 s)")
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    kinds = ("nats", "zmq") if args.bus == "both" else (args.bus,)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        folder = args.keep or Path(tmp)
        for n in (int(x) for x in args.devices.split(",")):
            for kind in kinds:
                res = asyncio.run(
                    run_once(
                        kind,
                        n,
                        max(1, min(args.gateways, n)),
                        args.seconds,
                        args.seed,
                        args.flush_interval,
                        args.poll_ms / 1e3,
                        folder,
                        args.profile,
                        (args.preprocess_workers, args.infer_workers, args.store_workers),
                        args.packet_s,
                        args.stagger,
                    )
                )
                print_result(res)


if __name__ == "__main__":
    main()
