"""``train`` and ``experiment`` under the one stop convention (``common/aio.py``, the README's
"Exit codes"), though their work is blocking CPU-bound code, not a coroutine.

The work runs in a worker thread while the event loop of :func:`common.aio.run_until_signal`
waits for the signals. The first SIGINT or SIGTERM sets a :class:`StopFlag` that the training
loops read between batches (``train_model``'s ``should_stop``), so a stop is noticed within one
batch, not at the end of an hour-long run; the command then writes what it completed and returns
its code (130 after Ctrl-C, by the helper). A second signal abandons the work: the flag then
raises :class:`Abandoned` at the next check and the command leaves without writing more.

Before the work holds anything worth writing (it is still reading its data, which for a large
data set read without the cache takes minutes and checks nothing), a first signal does not wait:
the command says that nothing was written and leaves at once, abandoning the worker. The work
says when that phase ends with :meth:`StopFlag.start_work`.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable

from common.aio import Stop, run_until_signal

#: how long a second signal waits for the worker to reach its next check before leaving anyway
ABANDON_WAIT_S = 2.0


class Abandoned(Exception):
    """Raised in the worker by a check after a second signal: leave, write nothing more."""


class StopFlag:
    """What the worker thread sees of the stop signals. Calling it answers "was a stop asked?"."""

    def __init__(self) -> None:
        self._asked = threading.Event()
        self._abandoned = threading.Event()
        self._working = threading.Event()
        self.signal: str | None = None  # "SIGTERM", "SIGINT", or None (not asked, or asked by the program)

    def start_work(self) -> None:
        """From here on the work holds something to write: a stop waits for it to write that."""
        self._working.set()
        self()  # already abandoned (a stop came while it was reading): leave now

    @property
    def working(self) -> bool:
        return self._working.is_set()

    @property
    def abandoned(self) -> bool:
        return self._abandoned.is_set()

    def request(self, signal: str | None) -> None:
        if not self._asked.is_set():
            self.signal = signal
            self._asked.set()

    def abandon(self) -> None:
        self._abandoned.set()

    def __call__(self) -> bool:
        if self._abandoned.is_set():
            raise Abandoned
        return self._asked.is_set()

    @property
    def why(self) -> str:
        """How the stop was asked, for the line that says so."""
        return self.signal or "request"


def run_blocking(work: Callable[[StopFlag], int], *, name: str, before: str, flag: StopFlag | None = None) -> int:
    """Run ``work(flag)`` in a worker thread under :func:`run_until_signal`; its return value is
    the exit code (130 after Ctrl-C). An exception of ``work`` (a ``UserError``) is raised here.
    A stop before ``flag.start_work()`` leaves at once with the line "NAME: stopped by SIG before
    BEFORE: nothing written"."""
    flag = flag or StopFlag()

    async def main(stop: Stop) -> int:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[int] = loop.create_future()

        def deliver(result: int | None, exc: BaseException | None) -> None:
            if done.done():  # abandoned: nobody waits for it any more
                return
            if exc is not None:
                done.set_exception(exc)
            else:
                done.set_result(int(result or 0))

        def target() -> None:
            result, exc = None, None
            try:
                result = work(flag)
            except Abandoned:
                return
            except BaseException as e:  # handed to the event loop, raised there
                exc = e
            try:
                loop.call_soon_threadsafe(deliver, result, exc)
            except RuntimeError:  # the loop has closed: a second signal left without the worker
                pass

        # a daemon thread: after a second signal the process may leave while it is still busy
        worker = threading.Thread(target=target, name=name, daemon=True)
        worker.start()

        async def relay() -> None:
            await stop.wait()
            flag.request(stop.signal.name if stop.signal else None)
            if not flag.working:  # nothing to write yet: do not wait for the reading to end
                flag.abandon()
                print(f"{name}: stopped by {flag.why} before {before}: nothing written", file=sys.stderr, flush=True)
                deliver(0, None)

        relay_task = asyncio.ensure_future(relay())
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            flag.abandon()
            print(f"{name}: asked twice to stop: left without writing anything more", file=sys.stderr, flush=True)
            # give the worker a moment to reach a check, so it is not killed inside torch at exit
            worker.join(ABANDON_WAIT_S)  # blocks the loop: nothing else is left to do
            raise
        finally:
            relay_task.cancel()

    return run_until_signal(main)
