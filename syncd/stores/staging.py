"""Writing a staging file: free space, hash-and-write batches, and in-order hashing behind
parallel parts.

These run on worker threads (one hand-off per batch, not per chunk). pwritev writes the
chunks as aiohttp delivered them, without joining them into one buffer first.
"""

from __future__ import annotations

import asyncio
import errno
import mmap
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from syncd.errors import TooLarge
from syncd.listing import Algo
from syncd.stores.base import CHUNK_BYTES
from syncd.stores.direct import Buffers, read_direct
from syncd.verify import Digest

WRITE_BATCH = 2 * CHUNK_BYTES  # bytes hashed and written per worker-thread call
IOV_MAX = 1024  # Linux's limit on buffers per pwritev; tiny chunks can exceed it
FRESH_S = 0.5  # a free-space reading this recent is reused for small writes


class Space:
    """The free space of one volume's staging area, shared by its store and the stores of its
    artifact versions (they stage in the same tmp directory).

    An object that cannot fit above `min_free_bytes` is refused on its own, before a byte of
    it is downloaded (TooLarge, issue 18): everything that fits still moves. Only a volume
    with nothing at all left above its floor is full (OSError ENOSPC, which the store reports
    as NoSpace and stops the pass): then no object could be written. `starved` records that
    the volume ran out of space during this store's life (the store sets it when it
    translates ENOSPC or EDQUOT), so partial downloads abandoned afterwards are not kept."""

    def __init__(self, path: Path, min_free_bytes: int, *, root: Path) -> None:
        self.path = path  # statvfs of this: the tmp directory, on the volume's filesystem
        self.root = root
        self.min_free = min_free_bytes
        self.starved = False
        self._free, self._free_at = 0, -1.0

    def read(self) -> int:
        """Bytes free now, for this process. A filesystem that reports no size at all (ramfs,
        some FUSE mounts) cannot be judged in advance: only ENOSPC from writes counts there."""
        st = os.statvfs(self.path)
        self._free = st.f_bavail * st.f_frsize if st.f_blocks else sys.maxsize
        self._free_at = time.monotonic()
        return self._free

    def above_floor(self) -> int:
        """Bytes free above `min_free_bytes` now (negative below it); a fresh reading."""
        return self.read() - self.min_free

    def reserve(self, size: int, key: str, *, store: str) -> None:
        """Count `size` bytes as taken, or refuse: TooLarge when this object does not fit,
        ENOSPC when nothing does. Small writes reuse a reading under FRESH_S old, but a
        refusal is always judged on a fresh one."""
        if size >= WRITE_BATCH or time.monotonic() - self._free_at > FRESH_S:
            self.read()
        if size and self._free - size < self.min_free:
            free = self.read()
            if free - size < self.min_free:
                self._refuse(size, key, free, store)
        self._free -= size

    def fits_recently(self, size: int) -> bool:
        """Did a reading under FRESH_S old leave room for `size` bytes? (No system call: a
        small file need not pay a hand-off to a thread to learn it fits.)"""
        return (time.monotonic() - self._free_at <= FRESH_S
                and (not size or self._free - size >= self.min_free))

    def check(self, size: int, key: str, *, store: str) -> None:
        """`reserve` without taking anything: may `size` bytes be written now?"""
        self.reserve(size, key, store=store)
        self._free += size

    def _refuse(self, size: int, key: str, free: int, store: str) -> None:
        above = free - self.min_free
        if above <= 0:
            raise OSError(errno.ENOSPC, f"no space left above min_free_bytes ({self.min_free})")
        raise TooLarge(
            f"{key}: {size} bytes do not fit on volume {self.root}: {max(above, 0)} bytes "
            f"free above min_free_bytes ({self.min_free})", store=store, key=key,
            hint="free space on the volume or grow it; the files that fit were synced")


def hash_and_write(
    fd: int, batch: Sequence[bytes], offset: int, digest: Digest | None,
) -> None:
    """pwritev of the chunks at `offset`, hashed first unless `digest` is None."""
    if digest is not None:
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
            raise OSError(errno.EIO, f"file shorter than the {end} bytes written")
        digest.update(chunk)
        start += len(chunk)


class ReadBack:
    """Aligned buffers for reading staged files back direct, shared by a store's in-order
    hashers: `pairs` of them hash at once (a block hashed, the next one read), so memory
    stays bounded however many large files download together."""

    def __init__(self, block: int, pairs: int) -> None:
        self.buffers = Buffers(block, 2 * pairs)
        self.turns = asyncio.Semaphore(pairs)


class InOrderHash:
    """Hashes a staged file from the start as its parts complete, whatever their order.

    With a direct descriptor the file is read back with O_DIRECT, one block read ahead of
    the hash: direct-written bytes are not in the page cache, and filling it only to hash
    costs more kernel CPU than the hash itself."""

    def __init__(
        self, fd: int, ranges: list[tuple[int, int]], algos: frozenset[Algo],
        direct: int | None = None, readback: ReadBack | None = None,
    ) -> None:
        self.digest = Digest(algos)
        self._fd = fd
        self._direct = direct  # read back direct only with `readback`'s buffers
        self._readback = readback
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
            start, end = self._ranges[i][0], self._ranges[j - 1][1]
            if self._direct is not None and self._readback is not None:
                async with self._readback.turns:
                    start = await self._hash_direct(self._direct, start, end,
                                                    self._readback.buffers)
            if start < end:
                await asyncio.to_thread(hash_range, self._fd, start, end, self.digest)
            i = j

    async def _hash_direct(self, dfd: int, start: int, end: int, buffers: Buffers) -> int:
        """Hash [start, end) read with O_DIRECT, reading the next block while hashing this
        one; returns where it stopped: `end`, or earlier if the filesystem refused."""
        bufs = [buffers.take(), buffers.take()]
        size = buffers.size
        got = await _direct_read(dfd, bufs[0], start, min(size, end - start))
        k = 0
        while got > 0 and start < end:
            nxt = start + got
            hashing = asyncio.ensure_future(
                asyncio.to_thread(_hash_block, bufs[k], got, self.digest))
            reading = asyncio.ensure_future(
                _direct_read(dfd, bufs[1 - k], nxt, min(size, end - nxt)) if nxt < end
                else asyncio.sleep(0, 0))
            # both threads finish before anything else happens to the buffers: a thread
            # still reading into a buffer handed to another download would corrupt it
            await asyncio.wait({hashing, reading})
            hashing.result()
            start, k, got = nxt, 1 - k, reading.result()
        for buf in bufs:
            buffers.give(buf)
        if got < 0:  # refused: the caller hashes the rest through the page cache
            self._direct = None
        elif start < end:
            raise OSError(errno.EIO, f"file shorter than the {end} bytes written")
        return start


async def _direct_read(dfd: int, buf: mmap.mmap, offset: int, n: int) -> int:
    """read_direct on a worker thread; -1 when the filesystem refuses direct reads."""
    try:
        return await asyncio.to_thread(read_direct, dfd, buf, offset, n)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        return -1


def _hash_block(buf: mmap.mmap, n: int, digest: Digest) -> None:
    with memoryview(buf) as view:
        digest.update(view[:n])
