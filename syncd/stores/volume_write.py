"""Writing a source's bytes into a staging file: buffered, or through O_DIRECT while the
filesystem takes it (`direct.py` says why).

Kept apart from `volume_download.py` (which decides what is staged where: space, small files,
parts, resumable partial downloads) because this is the byte-moving half of it: batching
chunks so one worker-thread call hashes and writes many, aligned buffers for direct writes,
and falling back to buffered writes for good once the filesystem refuses O_DIRECT.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from syncd.errors import SourceChanged
from syncd.stores.base import Source
from syncd.stores.direct import (
    ALIGN,
    DIRECT_MIN,
    Buffers,
    can_write_direct,
    open_direct,
    pwrite_all,
    set_direct,
    write_direct,
)
from syncd.stores.staging import WRITE_BATCH, hash_and_write
from syncd.verify import Digest

IDLE_BUFFERS = 8  # aligned write buffers kept between writes (WRITE_BATCH each)


@dataclass(slots=True)
class StagingFile:
    """A staging file's descriptors: `fd` for reads, fsync, truncation and buffered writes;
    `direct` (O_DIRECT) for block-aligned writes and reads while the filesystem takes them."""

    fd: int
    size: int
    direct: int | None = None

    def close(self) -> None:
        if self.direct is not None:
            os.close(self.direct)
        os.close(self.fd)


class Writer:
    """How one volume's staging files are written: with O_DIRECT while `direct` holds (cleared
    for good when the filesystem refuses it), from a pool of aligned buffers."""

    def __init__(self, *, name: str, direct_io: bool = True) -> None:
        self.name = name  # the store, named in errors
        self.direct = direct_io
        self._buffers = Buffers(WRITE_BATCH, IDLE_BUFFERS)

    def file(self, fd: int, path: str, size: int) -> StagingFile:
        """The staging file, with a direct descriptor when it is large enough to gain."""
        direct = open_direct(path) if self.direct and size >= DIRECT_MIN else None
        if direct is None and size >= DIRECT_MIN:
            self.direct = False
        return StagingFile(fd, size, direct)

    def write_small(
        self, fd: int, chunks: Sequence[bytes], size: int, digest: Digest | None,
    ) -> None:
        """A small file's bytes at offset 0 of `fd`, in one write where it can be one, hashed
        into `digest` unless it is None (on a worker thread)."""
        if not (self.direct and size >= DIRECT_MIN and self._write_small_direct(
                fd, chunks, size, digest)):
            hash_and_write(fd, chunks, 0, digest)

    def _write_small_direct(
        self, fd: int, chunks: Sequence[bytes], size: int, digest: Digest | None,
    ) -> bool:
        """One aligned write straight to the disk; False (nothing hashed, O_DIRECT off again)
        when the filesystem refuses it, so the caller writes buffered."""
        if not set_direct(fd, True):
            self.direct = False
            return False
        buf = self._buffers.take()  # pooled again only after a clean write: Buffers.give
        with memoryview(buf) as view:
            pos = 0
            for chunk in chunks:
                view[pos:pos + len(chunk)] = chunk
                pos += len(chunk)
        if not write_direct(fd, buf, size, 0):
            self.direct = False
            set_direct(fd, False)
            return False
        if digest is not None:
            with memoryview(buf) as view:
                digest.update(view[:size])
        self._buffers.give(buf)
        if size % ALIGN:
            os.ftruncate(fd, size)
        return True

    async def fill(
        self, file: StagingFile, source: Source, start: int, end: int, digest: Digest,
        chunks: AsyncGenerator[bytes, None] | None = None,
    ) -> None:
        """Stream [start, end) into the file; chunks are batched so one worker-thread call
        hashes and writes WRITE_BATCH bytes with pwritev (no joining copy)."""
        if file.direct is not None and can_write_direct(start, end, file.size):
            return await self._fill_direct(file, source, start, end, digest, chunks)
        fd = file.fd
        offset = start
        batch: list[bytes] = []
        batch_len = 0
        async with contextlib.aclosing(chunks or source.read(start, end)) as stream:
            async for chunk in stream:
                batch.append(chunk)
                batch_len += len(chunk)
                if batch_len >= WRITE_BATCH:
                    await settled(hash_and_write, fd, batch, offset, digest)
                    offset += batch_len
                    batch, batch_len = [], 0
        if batch:
            await settled(hash_and_write, fd, batch, offset, digest)
            offset += batch_len
        if offset != end:
            raise SourceChanged(f"{source.key}: range {start}-{end} ended at {offset}",
                                store=self.name, key=source.key)

    async def _fill_direct(
        self, file: StagingFile, source: Source, start: int, end: int, digest: Digest,
        chunks: AsyncGenerator[bytes, None] | None,
    ) -> None:
        """`fill` through O_DIRECT: chunks are copied into an aligned buffer (a memcpy on
        the loop, ~10x cheaper than the page-cache copy it replaces) and each full buffer is
        hashed and written by one worker-thread call."""
        buf = self._buffers.take()
        view = memoryview(buf)
        cap, pos, offset = len(buf), 0, start
        try:
            async with contextlib.aclosing(chunks or source.read(start, end)) as stream:
                async for chunk in stream:
                    if offset + pos + len(chunk) > end:
                        raise SourceChanged(f"{source.key}: range {start}-{end} overran",
                                            store=self.name, key=source.key)
                    data = memoryview(chunk)
                    while data:
                        n = min(len(data), cap - pos)
                        view[pos:pos + n] = data[:n]
                        pos, data = pos + n, data[n:]
                        if pos == cap:
                            await settled(self._write_block, file, buf, cap, offset, digest)
                            offset, pos = offset + cap, 0
            if pos:
                await settled(self._write_block, file, buf, pos, offset, digest)
                offset += pos
        except BaseException:
            view.release()  # the buffer is dropped, not pooled: see Buffers.give
            raise
        view.release()
        self._buffers.give(buf)
        if offset != end:
            raise SourceChanged(f"{source.key}: range {start}-{end} ended at {offset}",
                                store=self.name, key=source.key)

    def _write_block(
        self, file: StagingFile, buf: Any, n: int, offset: int, digest: Digest,
    ) -> None:
        """Hash buf[:n] and write it at `offset`: direct, or buffered where refused."""
        with memoryview(buf) as view:
            digest.update(view[:n])
        self.write_block(file, buf, n, offset)

    def write_block(self, file: StagingFile, buf: Any, n: int, offset: int) -> None:
        """Write the aligned buf[:n] at `offset` (off the event loop): direct, or buffered
        where the filesystem refuses it."""
        if file.direct is not None and write_direct(file.direct, buf, n, offset):
            if offset + n == file.size and n % ALIGN:
                # drop the tail's padding now: a partial download kept after an
                # interruption must have its exact size to be resumed
                os.ftruncate(file.fd, file.size)
            return
        self.direct = False
        with memoryview(buf) as view:
            pwrite_all(file.fd, view[:n], offset)


async def settled(fn: Callable[..., None], *args: Any) -> None:
    """`fn` on a worker thread; a cancelled caller still waits for it to return. A write
    that outlived its caller could land after the descriptor was closed and its number
    reused (by the sidecar being saved, by another staging file)."""
    thread = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        await asyncio.shield(thread)
    except asyncio.CancelledError:
        await asyncio.wait({thread})
        raise
