"""A large download through the native engine, into its staging file.

The engine (`native.NativeEngine`) fetches ranged parts on its own threads and hands the
body over in order; here each piece is hashed as it passes (CRCs per part, combined at the
end; MD5/SHA in order, or per upload part for a composite claim) on the download's hashing
thread, then written at its offset on its writing thread, so hashing and the disk overlap
(an in-order MD5 of 2 GiB takes ~3 s, its direct write ~1.5 s). A part is recorded in the
partial download's sidecar as soon as it is hashed and its last byte written, so an
interrupted download resumes on syncd's own path, like one of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

from syncd.errors import Interrupted, StoreError
from syncd.listing import Algo
from syncd.stores.base import Stream
from syncd.stores.direct import Buffers, can_write_direct, pwrite_all
from syncd.stores.resume import PartialDownload
from syncd.stores.volume_write import StagingFile, Writer
from syncd.verify import CRC_ALGOS, Digest, combine

BUFFERS = 6  # pieces copied and waiting to be hashed or written, per download
PIECE = 2 << 20  # bytes per piece: a part arrives as several, so memory stays small


class _Into:
    """The sink. The engine calls it on its own thread, one piece at a time, in order; it
    only copies the piece into an aligned buffer (a memcpy) and queues it, so that thread
    goes back to its sockets at once. A hashing thread takes the queue in order (every
    hash from the same buffer: nothing is read back) and passes each piece to a writing
    thread, which writes it, direct where the filesystem takes it. At most `BUFFERS`
    pieces wait: the engine is held back, not memory (its own buffers are bounded by its
    part size and sockets: native.py)."""

    def __init__(self, file: StagingFile, writer: Writer, ranges: Sequence[tuple[int, int]],
                 digests: list[Digest], ordered: Digest | None,
                 finished: Callable[[int], None], key: str, piece: int) -> None:
        self._file = file
        self._writer = writer
        self._ends = [end for _, end in ranges]
        self._digests = digests
        self._ordered = ordered
        self._finished = finished
        self._loop = asyncio.get_running_loop()
        self._key = key
        self._pool = Buffers(piece, BUFFERS)
        self._free: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for _ in range(BUFFERS):
            self._free.put(self._pool.take())
        self._jobs: queue.SimpleQueue[tuple[Any, int, int] | None] = queue.SimpleQueue()
        self._hashed: queue.SimpleQueue[tuple[Any, int, int, int] | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=work, name=f"syncd-{what}-{key[:40]}", daemon=True)
            for what, work in (("hash", self._hash_all), ("write", self._write_all))]
        for thread in self._threads:
            thread.start()
        self.error: BaseException | None = None
        self.pos = 0  # bytes handed over (engine thread)
        self.written = 0  # bytes written (writing thread)

    def __call__(self, chunk: memoryview, offset: int) -> None:
        if self.error is not None:
            raise self.error  # the engine stops the download
        if offset != self.pos or offset + len(chunk) > self._ends[-1]:
            raise StoreError(f"{self._key}: the engine delivered bytes {offset}+{len(chunk)} "
                             f"where {self.pos} was next", key=self._key)
        data = memoryview(chunk).cast("B")
        while data:
            buf = self._free.get()
            n = min(len(data), len(buf))
            with memoryview(buf) as view:
                view[:n] = data[:n]
            self._jobs.put((buf, n, self.pos))
            data, self.pos = data[n:], self.pos + n

    def _hash_all(self) -> None:
        part = 0
        while (job := self._jobs.get()) is not None:
            buf, n, offset = job
            try:
                if self.error is None:
                    part = self._hash(buf, n, offset, part)
            except BaseException as exc:
                self.error = exc
            self._hashed.put((buf, n, offset, part))
        self._hashed.put(None)

    def _write_all(self) -> None:
        part = 0
        while (job := self._hashed.get()) is not None:
            buf, n, offset, done = job
            try:
                if self.error is None:
                    if (self._file.direct is not None
                            and can_write_direct(offset, offset + n, self._file.size)):
                        self._writer.write_block(self._file, buf, n, offset)
                    else:
                        with memoryview(buf) as view:
                            pwrite_all(self._file.fd, view[:n], offset)
                    self.written = offset + n
                    for finished in range(part, done):  # hashed and on disk: readable
                        self._loop.call_soon_threadsafe(self._finished, finished)
                    part = done
            except BaseException as exc:
                self.error = exc
            self._free.put(buf)

    def _hash(self, buf: Any, n: int, offset: int, part: int) -> int:
        """The hashes of buf[:n]; returns the first part not yet complete."""
        with memoryview(buf) as view:
            data = view[:n]
            if self._ordered is not None:
                self._ordered.update(data)
            while data:
                end = self._ends[part]
                piece, data = data[:end - offset], data[end - offset:]
                self._digests[part].update(piece)
                offset += len(piece)
                if offset == end:
                    part += 1
        return part

    async def close(self) -> None:
        """Wait for both threads to finish what was queued; an error, if any, is raised."""
        self._jobs.put(None)
        for thread in self._threads:
            await asyncio.to_thread(thread.join)
        while not self._free.empty():
            self._pool.give(self._free.get())
        if self.error is not None:
            raise self.error


async def stream_into(
    file: StagingFile, writer: Writer, stream: Stream, algos: frozenset[Algo],
    partial: PartialDownload | None, ranges: Sequence[tuple[int, int]],
    per_part: Algo | None, key: str,
) -> tuple[dict[Algo, str], tuple[str, ...]]:
    """The whole object into `file` through `stream`: its checksums and, for a composite
    claim, the claim algorithm's digest of each of the upload's parts (`ranges`)."""
    crcs = frozenset(a for a in algos if a in CRC_ALGOS)
    # per part: the CRCs (combined at the end, and what the resume sidecar records) and a
    # composite claim's algorithm; in order: the whole-file MD5/SHA
    digests = [Digest(crcs | ({per_part} if per_part else set()), start) for start, _ in ranges]
    ordered = Digest(algos - crcs) if algos - crcs else None
    saving = partial.progress.autosave() if partial else contextlib.nullcontext()

    def finished(i: int) -> None:
        if partial is not None:
            partial.done(i, digests[i])

    async with saving:
        into = _Into(file, writer, ranges, digests, ordered, finished, key, PIECE)
        try:
            await stream(into)
        finally:
            await into.close()
        await asyncio.sleep(0)  # the last part's `finished`, queued from the writer
    if into.written != ranges[-1][1]:
        raise Interrupted(f"{key}: the download ended after {into.written} of "
                          f"{ranges[-1][1]} bytes", key=key)
    sums = combine(digests)
    if ordered is not None:
        sums.update(ordered.results())
    parts = tuple(d.results()[per_part] for d in digests) if per_part else ()
    return sums, parts
