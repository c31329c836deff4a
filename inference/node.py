"""The inference node: ``window/<device>/`` in, ``affect/<device>/`` out.

Theory of operation. Windows from every device go into one :class:`MicroBatcher`; a batch
is run when it holds ``max_batch`` windows or when its oldest window has waited
``max_wait_s``, so a lone wristband is answered within ``max_wait_s`` plus one forward pass
and many wristbands share the cheaper large batches (see ``bench/bench_inference.py``). The
model runs in a worker thread, so the loop keeps receiving (ZeroMQ queues what arrives
meanwhile). An end marker on ``window/<device>/`` (meta ``{"event": "end"}``) first flushes
every pending window, then is answered by ``{"event": "end"}`` on ``affect/<device>/``, so
a store downstream knows it has seen everything of that device. The ``stop`` event (SIGINT,
SIGTERM through :func:`common.aio.run_until_signal`), or cancellation, flushes the pending
windows before the sockets close.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from bus import AFFECT, WINDOW, Message, Publisher, Subscriber, topic_for
from common.aio import STOP_POLL_S, OnReady
from inference.dataset import window_meta_problem

log = logging.getLogger(__name__)

SUBSCRIPTIONS = (f"{WINDOW}/",)
END_WAIT_S = 60.0  # how long a device's end marker waits for a subscriber (a store being restarted)


def is_end_marker(msg: Message) -> bool:
    return msg.meta.get("event") == "end"


def lineage(window: Message) -> dict:
    """Which window an answer is for: its preprocess incarnation and number, and its grid's hop.
    The store counts from them the windows that never got an answer (see storage.positions)."""
    hop = window.meta.get("hop_s")
    out = {"window_incarnation": f"{window.incarnation:x}", "window_seq": window.seq}
    if isinstance(hop, (int, float)) and not isinstance(hop, bool):
        out["hop_s"] = hop
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Due:
    """Work that is due: run ``windows`` as one batch, then forward ``ends`` (in that order)."""

    windows: tuple[Message, ...]
    ends: tuple[Message, ...] = ()


class MicroBatcher:
    """Pure batching core: no clock of its own, time is passed in (seconds, any origin)."""

    def __init__(self, *, max_batch: int = 32, max_wait_s: float = 0.05) -> None:
        if max_batch < 1 or not max_wait_s >= 0:
            raise ValueError("max_batch must be >= 1 and max_wait_s >= 0")
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self._pending: list[Message] = []
        self._oldest_s: float | None = None

    @property
    def pending(self) -> int:
        """Windows waiting for their batch."""
        return len(self._pending)

    @property
    def deadline_s(self) -> float | None:
        """When the pending batch must run (None when nothing is pending)."""
        return None if self._oldest_s is None else self._oldest_s + self.max_wait_s

    def push(self, msg: Message, now_s: float) -> list[Due]:
        if is_end_marker(msg):
            return [*self.flush(), Due(windows=(), ends=(msg,))]
        if not self._pending:
            self._oldest_s = now_s
        self._pending.append(msg)
        out = []
        while len(self._pending) >= self.max_batch:
            out.append(Due(windows=tuple(self._pending[: self.max_batch])))
            self._pending = self._pending[self.max_batch :]
            self._oldest_s = now_s if self._pending else None
        return out + self.due(now_s)

    def due(self, now_s: float) -> list[Due]:
        if self.deadline_s is not None and now_s >= self.deadline_s:
            return self.flush()
        return []

    def flush(self) -> list[Due]:
        if not self._pending:
            return []
        out = [
            Due(windows=tuple(self._pending[i : i + self.max_batch]))
            for i in range(0, len(self._pending), self.max_batch)
        ]
        self._pending, self._oldest_s = [], None
        return out


async def serve(
    bus: str,
    predictor,
    *,
    max_batch: int = 32,
    max_wait_s: float = 0.05,
    on_ready: OnReady | None = None,
    report: Callable[[Counter], None] | None = None,
    calibrations=None,
    metrics=None,
    stop: asyncio.Event | None = None,
) -> int:
    """Answer windows until ``stop`` is set or the task is cancelled; returns 0.
    ``on_ready(bus)`` runs once subscribed. ``predictor`` is an :class:`inference.answer.Answerer`
    (or a bare :class:`inference.Predictor`); ``calibrations`` the wearers' calibrators
    (:class:`inference.answer.Calibrations`; a fresh, unsaved set if None); ``metrics`` a
    :class:`bus.metrics.StageMetrics` to serve the counters from."""
    from inference.answer import Answerer, Calibrations
    from inference.calibration import CalibrationConfig
    from inference.predict import affect_meta

    if not hasattr(predictor, "answer_windows"):
        predictor = Answerer({t: predictor for t in predictor.tasks}, model_id=predictor.model_id)
    if calibrations is None:
        calibrations = Calibrations(predictor.calibration_config or CalibrationConfig())
    batcher = MicroBatcher(max_batch=max_batch, max_wait_s=max_wait_s)
    stop = stop or asyncio.Event()
    counters: Counter = Counter()
    loop = asyncio.get_running_loop()

    async def run(pub: Publisher, due: Due) -> None:
        if due.windows:
            started = time.perf_counter()
            results = await asyncio.to_thread(predictor.answer_windows, list(due.windows), calibrations)
            if metrics is not None:
                metrics.observe(time.perf_counter() - started)
            counters["batches"] += 1
            for msg, answers in zip(due.windows, results):
                meta = affect_meta(msg, answers, predictor.model_id)
                meta.update(lineage(msg))
                counters["answered"] += 1
                for status in {a.status for a in answers.values()} - {"ok"}:
                    counters[status] += 1
                await pub.publish(AFFECT, msg.device, AFFECT, t0_s=meta["t_end"], fs_hz=0.0, meta=meta)
                sub.done(msg)  # on NATS: acknowledged once its answer is stored (a kill -9 before: sent again)
        for end in due.ends:
            counters["devices_ended"] += 1
            if await pub.wait_for_subscribers([topic_for(AFFECT, end.device)], END_WAIT_S):
                log.warning("no subscriber for affect/%s/ after %.0f s: its end marker is lost", end.device, END_WAIT_S)
            await pub.publish(
                AFFECT,
                end.device,
                AFFECT,
                t0_s=end.t0_s,
                fs_hz=0.0,
                meta={"event": "end", "model": predictor.model_id, **lineage(end)},
            )
            sub.done(end)

    async with Publisher(bus) as pub, Subscriber(bus, SUBSCRIPTIONS, acks="explicit") as sub:
        if metrics is not None:
            from bus.metrics import bus_snapshot

            metrics.watch(
                lambda: bus_snapshot(
                    sub.stats,
                    published=pub.sent,
                    queue_depth=batcher.pending,
                    drops={k: v for k, v in counters.items() if k.startswith("malformed_")},
                )
            )
        if on_ready is not None:
            on_ready(bus)
        try:
            while not stop.is_set():
                deadline = batcher.deadline_s
                wait_s = STOP_POLL_S if deadline is None else min(STOP_POLL_S, max(0.0, deadline - loop.time()))
                try:
                    msg = await sub.recv(wait_s)
                except TimeoutError:
                    msg = None
                now = loop.time()
                if msg is not None and not is_end_marker(msg):
                    problem = window_meta_problem(msg.meta)
                    if problem is not None:
                        if not counters[f"malformed_{problem}"]:
                            log.warning(
                                "dropping a window of %s with unreadable meta %r; further ones are only counted",
                                msg.device,
                                problem,
                            )
                        counters[f"malformed_{problem}"] += 1
                        sub.done(msg)
                        msg = None
                    else:
                        counters["windows"] += 1
                for due in batcher.push(msg, now) if msg is not None else batcher.due(now):
                    await run(pub, due)
        finally:
            for due in batcher.flush():
                await run(pub, due)
            calibrations.save_all()
            await pub.flush()
            counters["bus_missing"] = sub.stats.gaps
            counters["bus_malformed"] = sum(sub.stats.malformed.values())
            counters.update({f"bus_malformed_{k}": v for k, v in sub.stats.malformed.items()})
            if report is not None:
                report(counters)
        return 0
