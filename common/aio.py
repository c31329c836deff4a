"""Running an asyncio command until it ends or the user stops it."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine
from typing import Any


def run_until_signal(main: Coroutine[Any, Any, int]) -> int:
    """Run ``main``; SIGINT or SIGTERM cancel it, so its ``finally`` blocks flush and close.

    Returns ``main``'s exit code, or 130 when it was stopped by a signal.
    """

    async def runner() -> int:
        task = asyncio.ensure_future(main)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            return await task
        except asyncio.CancelledError:
            return 130
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    return asyncio.run(runner())
