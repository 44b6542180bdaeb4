"""A byte budget: bounds the memory that in-flight uploads hold, whatever the file sizes.

Each holder takes what it keeps in memory (a part, or a small file's bytes until it is
published) and gives it back when done. A request larger than the whole budget is granted
alone, so one huge part never deadlocks; it just runs by itself.
"""

from __future__ import annotations

import asyncio


class ByteBudget:
    def __init__(self, limit_bytes: int) -> None:
        self.limit = max(1, limit_bytes)
        self.used = 0
        self.peak = 0
        self._cond = asyncio.Condition()

    async def take(self, n: int) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: self.used == 0 or self.used + n <= self.limit)
            self.used += n
            self.peak = max(self.peak, self.used)

    async def give(self, n: int) -> None:
        async with self._cond:
            self.used -= n
            self._cond.notify_all()
