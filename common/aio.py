"""Running a long-lived asyncio command until it ends or is asked to stop: the one place that
handles signals, so every command stops the same way and says so with the same exit code.

The convention, for every long-running command:

- ``main(stop)`` gets a :class:`Stop` (an :class:`asyncio.Event`). SIGINT or SIGTERM set it; the
  command then stops taking new work, flushes what it holds and returns its exit code as if it
  had finished (0 done, 1 something lost or refused; see the README's "Exit codes").
- SIGINT (Ctrl-C) turns that code into **130**; SIGTERM keeps it, so a supervisor that stops a
  stage cleanly sees 0 unless something was really lost.
- A second signal cancels ``main`` (its ``finally`` blocks still run): a user who presses Ctrl-C
  twice is not kept waiting for a stuck flush. The code is then 130 for SIGINT, 1 for SIGTERM
  (stopped before it could say that nothing was lost).
- Readiness: a stage says it is ready through an ``on_ready(where: str)`` callback, ``where``
  being the address it serves or listens on (the bus address, or ``host:port``).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

#: the exit code of a command stopped by Ctrl-C (128 + SIGINT, what shells report)
INTERRUPTED = 130
#: how long a loop that polls its stop event may take to notice it when idle
STOP_POLL_S = 0.2

OnReady = Callable[[str], None]


class Stop(asyncio.Event):
    """An event set by the first stop signal; ``signal`` says which one (None: not signalled,
    or set by the program itself, which counts as a clean stop)."""

    def __init__(self) -> None:
        super().__init__()
        self.signal: signal.Signals | None = None

    def request(self, sig: signal.Signals | None = None) -> None:
        if not self.is_set():
            self.signal = sig
            self.set()

    @property
    def interrupted(self) -> bool:
        """True once Ctrl-C (SIGINT) asked to stop."""
        return self.signal == signal.SIGINT

    def exit_code(self, code: int) -> int:
        """``code`` as the command would have returned it, or 130 after Ctrl-C."""
        return INTERRUPTED if self.interrupted else code

    async def first(self, aw: Awaitable[T]) -> T | None:
        """``aw``'s result, or None once stop is set first (``aw`` is then cancelled, so its
        ``finally`` blocks run). For work with no loop of its own that could look at the event."""
        work = asyncio.ensure_future(aw)
        waiter = asyncio.ensure_future(self.wait())
        try:
            await asyncio.wait([work, waiter], return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if work.done():
            return work.result()
        work.cancel()
        try:
            await work
        except asyncio.CancelledError:
            pass
        return None


def run_until_signal(main: Callable[[Stop], Coroutine[Any, Any, int]]) -> int:
    """Run ``main(stop)`` to its end and return its exit code under the rules above."""

    async def runner() -> int:
        stop = Stop()
        task = asyncio.ensure_future(main(stop))
        loop = asyncio.get_running_loop()

        def on_signal(sig: signal.Signals) -> None:
            if stop.is_set():
                task.cancel()  # asked twice: stop waiting for the flush
            else:
                stop.request(sig)

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            code = await task
        except asyncio.CancelledError:
            return stop.exit_code(1)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        return stop.exit_code(code)

    return asyncio.run(runner())
