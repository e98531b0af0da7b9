"""The 80 ms frame clock: deadline-based ticks that never drift and skip (and count) ticks it missed."""

from __future__ import annotations

import asyncio
import time


class FrameClock:
    def __init__(self, period: float = 0.08):
        self.period = period
        self._next: float | None = None
        self.late_ticks = 0
        self.ticks = 0

    def reset(self) -> None:
        self._next = None

    async def wait(self) -> None:
        """Sleep until the next tick. After an overrun, ticks that already passed are skipped, not queued."""
        now = time.monotonic()
        if self._next is None:
            self._next = now
        delay = self._next - now
        if delay > 0:
            await asyncio.sleep(delay)
        elif -delay >= self.period:
            missed = int(-delay // self.period)
            self.late_ticks += missed
            self._next += missed * self.period
        self._next += self.period
        self.ticks += 1
