"""Writing a staging file: hash-and-write batches, and in-order hashing behind parallel parts.

These run on worker threads (one hand-off per batch, not per chunk). pwritev writes the
chunks as aiohttp delivered them, without joining them into one buffer first.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Sequence

from syncd.listing import Algo
from syncd.stores.base import CHUNK_BYTES
from syncd.verify import Digest

WRITE_BATCH = 2 * CHUNK_BYTES  # bytes hashed and written per worker-thread call
IOV_MAX = 1024  # Linux's limit on buffers per pwritev; tiny chunks can exceed it


def hash_and_write(fd: int, batch: Sequence[bytes], offset: int, digest: Digest) -> None:
    for chunk in batch:
        digest.update(chunk)
    views = [memoryview(c) for c in batch]
    while views:
        n = os.pwritev(fd, views[:IOV_MAX], offset)  # EINVAL past IOV_MAX buffers
        offset += n
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if views and n:
            views[0] = views[0][n:]


def hash_range(fd: int, start: int, end: int, digest: Digest) -> None:
    while start < end:
        chunk = os.pread(fd, min(WRITE_BATCH, end - start), start)
        if not chunk:
            raise OSError(errno.EIO, "staged file shorter than written")
        digest.update(chunk)
        start += len(chunk)


class InOrderHash:
    """Hashes a staged file from the start as its parts complete, whatever their order."""

    def __init__(self, fd: int, ranges: list[tuple[int, int]], algos: frozenset[Algo]) -> None:
        self.digest = Digest(algos)
        self._fd = fd
        self._ranges = ranges
        self._finished = [False] * len(ranges)
        self._wake = asyncio.Event()

    def done(self, part: int) -> None:
        self._finished[part] = True
        self._wake.set()

    async def run(self) -> None:
        i, n = 0, len(self._ranges)
        while i < n:
            if not self._finished[i]:
                self._wake.clear()
                await self._wake.wait()
                continue
            j = i
            while j < n and self._finished[j]:
                j += 1
            await asyncio.to_thread(
                hash_range, self._fd, self._ranges[i][0], self._ranges[j - 1][1], self.digest)
            i = j
