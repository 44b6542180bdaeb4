"""A real source whose reads are counted and can be held at a byte offset, and a bounded
poll: what the resume and free-space tests use to stop a transfer part-way."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from syncd.listing import Algo, Checksum, Entry
from syncd.stores.base import Source


class Tap:
    """A real source whose reads are counted; reads starting at `hold_from` or later (or
    before `hold_before`) wait until `release` is set."""

    def __init__(self, inner: Source, hold_from: int | None = None,
                 hold_before: int | None = None) -> None:
        self.inner = inner
        self.key, self.size = inner.key, inner.size
        self.read_bytes = 0
        self.hold_from = hold_from
        self.hold_before = hold_before
        self.release = asyncio.Event()

    async def read(self, start: int = 0, end: int | None = None):
        if ((self.hold_from is not None and start >= self.hold_from)
                or (self.hold_before is not None and start < self.hold_before)):
            await self.release.wait()
        async with contextlib.aclosing(self.inner.read(start, end)) as chunks:
            async for chunk in chunks:
                self.read_bytes += len(chunk)
                yield chunk

    async def vouched(self) -> Checksum | None:
        return await self.inner.vouched()

    async def digest(self, algo: Algo) -> Checksum:
        return await self.inner.digest(algo)

    async def identity(self) -> Entry:
        return await self.inner.identity()


async def until(probe: Callable[[], Any], timeout_s: float = 20.0) -> Any:
    """Poll `probe` until it returns something truthy (with a deadline, never a bare sleep)."""
    deadline = time.monotonic() + timeout_s
    while not (value := probe()):
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.02)
    return value
