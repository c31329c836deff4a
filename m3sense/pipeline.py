"""``m3sense run``: a whole pipeline on one machine.

Theory of operation. The hub runs in this process; preprocess, inference and storage run
as child processes (two cores: the model and the filters should not share one
interpreter's GIL), each the same command a user would start by hand. Start-up is
back to front and sleep-free: after starting the stages, this process waits until the
subscriptions for ``window/`` and ``affect/`` of every device have reached the hub,
and the replay waits for ``raw/``. So the first sample already has a path to storage.

Shut-down is end-to-end: a replay ends each device with a ``status`` end event; the
preprocessor answers with an end marker on ``window/<device>/``, the inference node with
one on ``affect/<device>/``, and the store, once it has written everything before it,
reports ``end of device <device>`` on stderr. When every device has ended, the stages
get SIGTERM, flush and exit. Ctrl-C takes the same path from wherever it is.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bus import Hub, Message, Publisher, Subscriber, free_bus_address, topic_for
from m3sense.errors import UserError
from replay.clock import ReplayStats, replay
from replay.recording import Recording

log = logging.getLogger(__name__)

END_LINE = "end of device "


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineConfig:
    sink: str
    speed: float = math.inf
    bus: str | None = None
    model: str | None = None
    tasks: str | None = None
    start_timeout_s: float = 120.0
    drain_timeout_s: float = 300.0


@dataclass(slots=True)
class PipelineResult:
    replay: ReplayStats | None = None
    affect: list[Message] = field(default_factory=list)
    exit_codes: dict[str, int] = field(default_factory=dict)


class Stage:
    """A stage as a child process; its stderr is relayed with a prefix and watched for lines."""

    def __init__(self, name: str, args: Sequence[str]) -> None:
        self.name = name
        self.args = list(args)
        self.proc: asyncio.subprocess.Process | None = None
        self.ended: set[str] = set()
        self.changed = asyncio.Event()
        self._relay: asyncio.Task | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "m3sense", *self.args,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._relay = asyncio.create_task(self._read_stderr())

    async def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            if END_LINE in line:
                self.ended.add(line.split(END_LINE, 1)[1].split()[0])
            print(f"[{self.name}] {line}", file=sys.stderr)
            self.changed.set()
        self.changed.set()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, then the exit code; a stage that stopped cleanly on the signal counts as 0."""
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
        if self._relay is not None:
            await self._relay
        return 0 if self.proc.returncode in (130, -signal.SIGTERM) else self.proc.returncode


def stage_commands(cfg: PipelineConfig, bus: str) -> list[tuple[str, list[str]]]:
    """The stages, downstream first (the order they start in)."""
    infer = ["infer", "--bus", bus]
    if cfg.model:
        infer += ["--model", cfg.model]
    if cfg.tasks:
        infer += ["--tasks", cfg.tasks]
    return [
        ("store", ["store", "--bus", bus, "--sink", cfg.sink]),
        ("infer", infer),
        ("preprocess", ["preprocess", "--bus", bus]),
    ]


async def _until(stages: Sequence[Stage], done: Callable[[], bool], timeout_s: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not done():
        dead = [s.name for s in stages if not s.running]
        if dead:
            raise UserError(f"stage {', '.join(dead)} exited while waiting for {what}; see its messages above")
        for s in stages:
            s.changed.clear()
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise UserError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        waits = [asyncio.create_task(s.changed.wait()) for s in stages]
        await asyncio.wait(waits, timeout=min(remaining, 1.0), return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()


async def run_pipeline(
    recordings: Sequence[Recording],
    cfg: PipelineConfig,
    on_affect: Callable[[Message], None] | None = None,
) -> PipelineResult:
    """Replay ``recordings`` through preprocess → infer → store; returns what was replayed and
    every affect message seen on the way (for live views and summaries)."""
    bus = cfg.bus or free_bus_address()
    devices = [r.device for r in recordings]
    result = PipelineResult()
    with Hub(bus):
        stages = [Stage(name, args) for name, args in stage_commands(cfg, bus)]
        watcher: asyncio.Task | None = None
        try:
            async with Subscriber(bus, ["affect/"]) as affect_sub:
                for s in stages:
                    await s.start()

                async def watch() -> None:
                    async for msg in affect_sub:
                        if msg.meta.get("event") is None:
                            result.affect.append(msg)
                            if on_affect is not None:
                                on_affect(msg)

                watcher = asyncio.create_task(watch())
                async with Publisher(bus) as probe:
                    needed = [topic_for(k, d) for d in devices for k in ("window", "affect")]
                    ready = asyncio.create_task(probe.wait_for_subscribers(needed, cfg.start_timeout_s))
                    await _until(stages, ready.done, cfg.start_timeout_s, "the stages to subscribe")
                    if missing := ready.result():
                        raise UserError(f"no subscriber for {missing[0]} after {cfg.start_timeout_s:.0f} s")
                async with Publisher(bus) as pub:
                    result.replay = await replay(recordings, pub, speed=cfg.speed, wait_s=cfg.start_timeout_s)
                store = stages[0]
                await _until(stages, lambda: store.ended >= set(devices), cfg.drain_timeout_s,
                             "storage to finish every device")
        finally:
            if watcher is not None:
                watcher.cancel()
            for s in reversed(stages):  # upstream first, so each flushes into a running consumer
                result.exit_codes[s.name] = await s.stop()
    return result
