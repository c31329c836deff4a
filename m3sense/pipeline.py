"""``m3sense run``: a whole pipeline on one machine.

Theory of operation. The hub runs in this process; preprocess, inference and storage run
as child processes (two cores: the model and the filters should not share one
interpreter's GIL), each the same command a user would start by hand. Start-up is
back to front and sleep-free: after starting the stages, this process waits until the
subscriptions for ``window/`` and ``affect/`` of every device have reached the hub,
and the replay waits for ``raw/``. So the first sample already has a path to storage.

Shut-down is end-to-end and rides on the bus like every other handshake: a replay ends
each device with a ``status`` end event; the preprocessor answers with an end marker on
``window/<device>/``, the inference node with one on ``affect/<device>/``, and the store,
once it has written everything before it, with one on ``stored/<device>/``, which this
process subscribes to (on ZeroMQ and NATS alike; the stages' stderr is only relayed for
people to read). When every device has ended, the stages get SIGTERM, flush and exit 0.
A stop signal (SIGTERM, or Ctrl-C) takes the same path from wherever the run is: the
stages are stopped upstream first, the store flushes, and the last lines say what reached
the sink (the exit code is then 130 after Ctrl-C; see :mod:`common.aio`).

Supervision. The stages are watched all the time, not only at the end: a stage that exits
before it is asked to (a crash, a ``kill -9``) is started again, at most ``max_restarts``
times per stage, and the run goes on; what it lost on the way is counted by the store in
windows and stored as ``bus_gap`` rows (see ``storage/positions.py``: the store of a run
keeps its positions in the run's own temporary folder, so a restarted store counts what it
had not flushed). A stage that exits with code 2 (bad input: it would fail the same way
again) or dies once more than allowed stops the run at once, and the result names it with
its last stderr lines. A run with a restart or a loss ends with exit code 1. The store
runs with ``--json`` and says at exit what reached the sink, what waits in
its spool and what was lost; :func:`outcome` turns that into run's last line and exit code.
Each stage is in its own process group (Ctrl-C reaches only ``run``, which stops them in
order) and, on Linux, is signalled by the kernel when ``run`` dies, even of SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import math
import os
import signal
import sys
import tempfile
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bus import Hub, Message, Publisher, Subscriber, free_bus_address, topic_for
from bus.endpoints import is_nats
from bus.partitions import PARTITIONS
from bus.topics import STORED
from common.aio import Stop
from replay.clock import ReplayStats, replay
from replay.recording import Recording

log = logging.getLogger(__name__)

TAIL_LINES = 12  # a dead stage's last stderr lines, shown at the end of the run
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineConfig:
    sink: str
    speed: float = math.inf
    bus: str | None = None
    model: str | None = None
    tasks: str | None = None
    start_timeout_s: float = 120.0
    drain_timeout_s: float = 300.0
    #: how often each stage may be started again after dying (0: a dead stage stops the run)
    max_restarts: int = 3
    #: more store flags (further --sink, --alerts, --mqtt-password-file), given to the store as they are
    store_args: tuple[str, ...] = ()
    #: preprocess and infer workers (more than 1: a worker group each, NATS only; see bus/shards.py)
    preprocess_workers: int = 1
    infer_workers: int = 1
    #: each device's windows on its own grid phase (preprocess --stagger)
    stagger: bool = False


@dataclass(slots=True)
class PipelineResult:
    replay: ReplayStats | None = None
    affect: list[Message] = field(default_factory=list)
    exit_codes: dict[str, int] = field(default_factory=dict)
    #: the stage that exited before it was asked to, and what the run was doing then
    died: str | None = None
    phase: str = "starting"
    #: why the run could not finish, when no stage died (a time-out)
    failure: str | None = None
    #: the signal that stopped the run before it finished (None: it was not stopped)
    stopped_by: str | None = None
    #: the devices the store said are in the sink up to their end (``stored/<device>/``)
    stored: set[str] = field(default_factory=set)
    #: the object ``store --json`` printed at exit; None if it printed none
    store: dict[str, Any] | None = None
    tails: dict[str, list[str]] = field(default_factory=dict)
    #: restarts per stage, and how each death was seen ("killed by SIGKILL while replaying ...")
    restarts: Counter = field(default_factory=Counter)
    deaths: list[str] = field(default_factory=list)


def _die_with_parent(parent: int, sig: signal.Signals) -> None:
    """In the child between fork and exec: ``sig`` when ``run`` dies, of any signal (Linux).
    A parent already gone before the call would never send it: then go at once."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, sig)
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)


class Stage:
    """A stage as a child process; its stderr is relayed with a prefix (its last lines kept for
    the report of a dead stage), its stdout kept when ``capture`` (the store's JSON report).
    ``orphan_signal`` is what it gets when ``run`` dies: the hub dies with ``run``, so a stage
    that only publishes has nothing left to flush (SIGKILL), while the store can still flush
    into its sink (SIGTERM)."""

    def __init__(
        self, name: str, args: Sequence[str], *, capture: bool = False, orphan_signal: signal.Signals = signal.SIGKILL
    ) -> None:
        self.name = name
        self.args = list(args)
        self.capture = capture
        self.orphan_signal = orphan_signal
        self.proc: asyncio.subprocess.Process | None = None
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.stdout = b""
        self.stopping = False
        self._readers: list[asyncio.Task] = []

    def how_it_ended(self) -> str:
        code = None if self.proc is None else self.proc.returncode
        if code is not None and code < 0:
            return f"was killed by {signal.Signals(-code).name}"
        return f"exited with code {code}"

    async def start(self) -> None:
        parent = os.getpid()
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "m3sense",
            *self.args,
            stdin=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE if self.capture else asyncio.subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            process_group=0,
            preexec_fn=lambda: _die_with_parent(parent, self.orphan_signal),
        )
        self._readers = [asyncio.create_task(self._read_stderr())]
        if self.capture:
            self._readers.append(asyncio.create_task(self._read_stdout()))

    async def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.tail.append(line)
            print(f"[{self.name}] {line}", file=sys.stderr)

    async def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        self.stdout = await self.proc.stdout.read()

    async def exited(self) -> Stage:
        assert self.proc is not None
        await self.proc.wait()
        return self

    async def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, then the exit code: 0 from a stage that stopped cleanly on it (every stage
        follows :mod:`common.aio`). One that the signal killed (-15) was not running its loop:
        crashing, or stuck."""
        self.stopping = True
        if self.proc is None:
            return 0
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout_s)
            except TimeoutError:
                log.warning("%s did not stop within %.0f s; killing it", self.name, timeout_s)
                self.proc.kill()
                await self.proc.wait()
        await asyncio.gather(*self._readers)  # the output up to the end
        code = self.proc.returncode
        assert code is not None  # waited for above
        return code

    def report(self) -> dict[str, Any] | None:
        """The last JSON object the stage printed on stdout, if any."""
        for line in reversed(self.stdout.decode(errors="replace").splitlines()):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                return obj
        return None


def stage_commands(cfg: PipelineConfig, bus: str, positions: str = "none") -> list[tuple[str, list[str]]]:
    """The stages, downstream first (the order they start in). ``positions`` is the store's
    ledger file: one per run, so a restarted store counts its losses and a new run starts afresh."""
    from bus.security import current

    on_bus = ["--bus", bus, *current().as_args()]  # run's bus keys (or --insecure) go to its stages too
    # a replay starts every wearer from the recording's beginning: its calibration starts afresh too
    infer = ["infer", *on_bus, "--state-dir", "none"]
    if cfg.model:
        infer += ["--model", cfg.model]
    if cfg.tasks:
        infer += ["--tasks", cfg.tasks]
    preprocess = ["preprocess", *on_bus, *(["--stagger"] if cfg.stagger else [])]
    return [
        ("store", ["store", *on_bus, "--sink", cfg.sink, *cfg.store_args, "--json", "--positions", positions]),
        *_workers("infer", infer, cfg.infer_workers),
        *_workers("preprocess", preprocess, cfg.preprocess_workers),
    ]


#: the worker group of the stages ``run`` starts several of
RUN_GROUP = "run"


def _workers(name: str, args: list[str], n: int) -> list[tuple[str, list[str]]]:
    """One stage, or ``n`` workers of the group :data:`RUN_GROUP` named ``NAME-1`` ... ``NAME-n``."""
    if n <= 1:
        return [(name, args)]
    return [(f"{name}-{i}", [*args, "--workers-group", RUN_GROUP]) for i in range(1, n + 1)]


def check_workers(cfg: PipelineConfig, bus: str | None) -> None:
    """Several workers of a stage share a NATS stream: refuse them on any other bus, in one line."""
    from common.errors import UserError

    for flag, n in (("--preprocess-workers", cfg.preprocess_workers), ("--infer-workers", cfg.infer_workers)):
        if not 1 <= n <= PARTITIONS:
            raise UserError(f"{flag} must be 1 to {PARTITIONS} (one partition each at most), not {n}")
        if n > 1 and not (bus and is_nats(bus)):
            raise UserError(f"{flag} {n} needs --bus nats://HOST:PORT (workers share a NATS stream)")


async def _wait_for_groups(cfg: PipelineConfig, bus: str) -> None:
    """Wait until each worker group has split the partitions, so none is handed over mid-replay."""
    from bus.shards import ShardSpec, wait_for_workers

    for stage, n in (("infer", cfg.infer_workers), ("preprocess", cfg.preprocess_workers)):
        if n > 1 and not await wait_for_workers(bus, ShardSpec(stage, RUN_GROUP), n, cfg.start_timeout_s):
            raise _TimedOut(f"the {n} {stage} workers had not split the partitions after {cfg.start_timeout_s:.0f} s")


class _TimedOut(Exception):
    pass


async def _flow(
    recordings: Sequence[Recording], cfg: PipelineConfig, bus: str, stored: asyncio.Event, result: PipelineResult
) -> None:
    """Wait for the stages' subscriptions, replay, wait until the store has every device
    (``stored`` is set each time one more device is in ``result.stored``)."""
    devices = [r.device for r in recordings]
    result.phase = "waiting for the stages to subscribe"
    async with Publisher(bus) as probe:
        needed = [topic_for(k, d) for d in devices for k in ("window", "affect")]
        if not is_nats(bus):  # ours too: the store's answers must have a way back (NATS: live as soon as made)
            needed += [topic_for(STORED, d) for d in devices]
        if missing := await probe.wait_for_subscribers(needed, cfg.start_timeout_s):
            raise _TimedOut(f"no subscriber for {missing[0]} after {cfg.start_timeout_s:.0f} s")
    await _wait_for_groups(cfg, bus)
    result.phase = "replaying the recordings"
    print(f"run: replaying {len(devices)} device(s)", file=sys.stderr, flush=True)
    async with Publisher(bus) as pub:
        result.replay = await replay(recordings, pub, speed=cfg.speed, wait_s=cfg.start_timeout_s)
    result.phase = "waiting for storage to finish every device"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + cfg.drain_timeout_s
    while not result.stored >= set(devices):
        stored.clear()
        try:
            await asyncio.wait_for(stored.wait(), max(0.0, deadline - loop.time()))
        except TimeoutError:
            raise _TimedOut(f"storage had not finished every device after {cfg.drain_timeout_s:.0f} s") from None


async def run_pipeline(
    recordings: Sequence[Recording],
    cfg: PipelineConfig,
    on_affect: Callable[[Message], None] | None = None,
    stop: Stop | None = None,
) -> PipelineResult:
    """Replay ``recordings`` through preprocess → infer → store; returns what was replayed,
    every affect message seen on the way (for live views and summaries), how each stage
    ended and the store's report. A stage that dies for good ends the run at once; ``stop``
    (set by a signal) ends it early the same orderly way."""
    check_workers(cfg, cfg.bus)
    bus = cfg.bus or free_bus_address()
    result = PipelineResult()
    stop = stop or Stop()
    hub = contextlib.nullcontext() if is_nats(bus) else Hub(bus)  # nats://: the user's servers carry it, no hub
    with hub, tempfile.TemporaryDirectory(prefix="m3sense-run-") as state:
        stages = [
            Stage(
                name, args, capture=name == "store", orphan_signal=signal.SIGTERM if name == "store" else signal.SIGKILL
            )
            for name, args in stage_commands(cfg, bus, os.path.join(state, "positions.json"))
        ]
        tasks: list[asyncio.Task] = []
        try:
            async with Subscriber(bus, ["affect/", f"{STORED}/"]) as watcher:
                for s in stages:
                    await s.start()
                stored = asyncio.Event()

                answered: set[tuple[str, Any]] = set()

                async def watch() -> None:
                    async for msg in watcher:
                        if msg.kind == STORED:
                            if msg.meta.get("event") == "end":
                                result.stored.add(msg.device)
                                stored.set()
                        elif msg.meta.get("event") is None:
                            # at least once on NATS: a window answered again (by a worker taking over) is one window
                            if (msg.device, msg.meta.get("t_start")) in answered:
                                continue
                            answered.add((msg.device, msg.meta.get("t_start")))
                            result.affect.append(msg)
                            if on_affect is not None:
                                on_affect(msg)

                tasks.append(asyncio.create_task(watch()))
                flow = asyncio.create_task(_flow(recordings, cfg, bus, stored, result))
                tasks.append(flow)
                result.died = await _supervise(stages, flow, cfg.max_restarts, result, tasks, stop)
                if stop.is_set() and not flow.done():
                    result.stopped_by = stop.signal.name if stop.signal else "a stop request"
                elif result.died is None:
                    try:
                        flow.result()
                    except _TimedOut as exc:
                        result.failure = str(exc)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for s in reversed(stages):  # upstream first, so each flushes into a running consumer
                result.exit_codes[s.name] = await s.stop()
            result.store = stages[0].report()
            result.tails = {s.name: list(s.tail) for s in stages}
    return result


async def _supervise(
    stages: list[Stage],
    flow: asyncio.Task,
    max_restarts: int,
    result: PipelineResult,
    tasks: list[asyncio.Task],
    stop: asyncio.Event,
) -> str | None:
    """Wait for ``flow`` (or ``stop``), starting again each stage that dies on the way (up to
    ``max_restarts`` times each); returns the name of a stage that died for good, or None when
    ``flow`` ended or ``stop`` was set."""
    exits = {asyncio.create_task(s.exited()): s for s in stages}
    tasks += list(exits)
    stopping = asyncio.create_task(stop.wait())
    tasks.append(stopping)
    while True:
        done, _ = await asyncio.wait([flow, stopping, *exits], return_when=asyncio.FIRST_COMPLETED)
        if flow in done or stopping in done:
            return None
        for task in [t for t in done if t in exits]:
            stage = exits.pop(task)
            death = f"{stage.how_it_ended()} while {result.phase}"
            if (stage.proc is not None and stage.proc.returncode == 2) or result.restarts[stage.name] >= max_restarts:
                return stage.name
            result.restarts[stage.name] += 1
            result.deaths.append(f"{stage.name} {death}")
            print(
                f"run: stage {stage.name} {death}; starting it again ({result.restarts[stage.name]} of at most "
                f"{max_restarts})",
                file=sys.stderr,
                flush=True,
            )
            await asyncio.gather(*stage._readers)  # its last words, before the new process speaks
            await stage.start()
            again = asyncio.create_task(stage.exited())
            exits[again] = stage
            tasks.append(again)


def outcome(result: PipelineResult, sink: str, devices: int) -> tuple[int, list[str]]:
    """Run's exit code and last lines. 0 only when every stage ran to the end and the store
    says that everything reached the sink; 1 otherwise, saying what and where."""
    lines = []
    head = f"run: {len(result.affect)} affect windows from {devices} device(s)"
    store = result.store
    if store is None:
        lines.append(f"{head}; the store reported nothing, so what reached {sink} is unknown")
    else:
        parts = [head]
        written, spooled = int(store.get("written", 0)), int(store.get("spooled", 0))
        dropped, refused = int(store.get("dropped", 0)), int(store.get("refused", 0))
        where = store.get("sink") or sink
        parts.append(
            f"{written} records ({store.get('affect_records', 0)} affect) written to {where}"
            if written
            else f"nothing reached {where}"
        )
        if result.restarts.get("store"):  # a killed store reports nothing: what it wrote is in the sink, uncounted
            parts[-1] += " by the store started last"
        if spooled:
            parts.append(
                f"{spooled} points wait in the spool {store.get('spool_dir')}; the next `m3sense store` or "
                "`m3sense run` with this sink sends them first"
            )
        lost = dropped + refused
        parts.append(f"{lost} lost ({refused} refused by the sink, {dropped} dropped)" if lost else "none lost")
        windows = int(store.get("lost_windows", 0) or 0)
        if windows:
            each = store.get("lost_windows_by_device") or {}
            per = ", ".join(f"{d} {n}" for d, n in sorted(each.items()))
            parts.append(f"{windows} windows never reached the store ({per}; stored as bus_gap rows)")
        lines.append("; ".join(parts))
    if result.restarts:
        restarted = ", ".join(f"{name} {n} time(s)" for name, n in sorted(result.restarts.items()))
        lines.append(f"run: restarted {restarted}: " + "; ".join(result.deaths))
    failed = [
        name for name, code in result.exit_codes.items() if code != 0 and (name != "store" or store is None)
    ]  # a store that reported speaks for itself
    if result.failure:
        lines.append(f"run: stopped: {result.failure}")
    if result.stopped_by:
        lines.append(f"run: stopped by {result.stopped_by} while {result.phase}")
    for name in ([result.died] if result.died else []) + [n for n in failed if n != result.died]:
        code = result.exit_codes.get(name)
        end = (
            f"was killed by {signal.Signals(-code).name}"
            if code is not None and code < 0
            else f"exited with code {code}"
        )
        how = f"{end} while {result.phase}" if name == result.died else f"{end} when asked to stop"
        lines.append(f"run: stage {name} {how}; its last messages:")
        lines += [f"  [{name}] {line}" for line in result.tails.get(name, [])] or ["  (none)"]
    ok = (
        store is not None
        and store.get("exit_code") == 0
        and not result.died
        and not failed
        and not result.failure
        and not result.restarts
    )
    return (0 if ok else 1), lines
