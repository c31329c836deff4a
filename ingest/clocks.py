"""Host clocks for the BLE shell and the virtual E4.

Sample timestamps come from the host clock (e4-facts 1.4), so a virtual E4 that runs
faster than real time must share a clock with the code that timestamps its packets:
a :class:`ScaledClock` runs ``scale`` times faster than the wall clock, and both sides
read and sleep on it, so packet cadence and timestamps stay consistent at any speed.
"""

from __future__ import annotations

import asyncio
import time


class SystemClock:
    """Unix time, at real speed."""

    scale = 1.0

    def now(self) -> float:
        return time.time()

    async def sleep_until(self, t_s: float) -> None:
        delay = t_s - self.now()
        if delay > 0:
            await asyncio.sleep(delay)


class ScaledClock(SystemClock):
    """Unix time that starts at the wall clock and runs ``scale`` times faster."""

    def __init__(self, scale: float) -> None:
        if not scale > 0:
            raise ValueError(f"clock scale must be positive, got {scale}")
        self.scale = float(scale)
        self._origin_s = time.time()
        self._mono0 = time.monotonic()

    def now(self) -> float:
        return self._origin_s + (time.monotonic() - self._mono0) * self.scale

    async def sleep_until(self, t_s: float) -> None:
        delay = (t_s - self.now()) / self.scale
        if delay > 0:
            await asyncio.sleep(delay)


Clock = SystemClock
