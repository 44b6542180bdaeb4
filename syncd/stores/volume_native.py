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
import functools
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

BUFFERS = 4  # pieces copied and waiting to be hashed or written, per download
PIECE = 2 << 20  # bytes per piece: a part arrives as several, so memory stays small
LANES = 2  # threads hashing a composite claim's MD5/SHA parts side by side (both cores)

_Slice = tuple[Any, int, int, int, threading.Event]  # buffer, from, to, part, hashed


class _Into:
    """The sink. The engine calls it on its own thread, one piece at a time, in order; it
    only copies the piece into an aligned buffer (a memcpy) and queues it, so that thread
    goes back to its sockets at once. A hashing thread takes the queue in order (every
    hash from the same buffer: nothing is read back) and passes each piece to a writing
    thread, which writes it, direct where the filesystem takes it. A composite claim's
    MD5/SHA parts are hashed by `LANES` threads, part i by lane i % LANES: one part's
    hash is sequential, two parts' run on two cores. At most `BUFFERS` pieces wait: the
    engine is held back, not memory (its own buffers are bounded by its part size and
    sockets: native.py)."""

    def __init__(self, file: StagingFile, writer: Writer, ranges: Sequence[tuple[int, int]],
                 digests: list[Digest], ordered: Digest | None, laned: list[Digest] | None,
                 finished: Callable[[int], None], key: str, piece: int) -> None:
        self._file = file
        self._writer = writer
        self._ends = [end for _, end in ranges]
        self._digests = digests
        self._ordered = ordered
        self._laned = laned
        self._finished = finished
        self._loop = asyncio.get_running_loop()
        self._key = key
        self._pool = Buffers(piece, BUFFERS)
        self._free: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for _ in range(BUFFERS):
            self._free.put(self._pool.take())
        self._jobs: queue.SimpleQueue[tuple[Any, int, int] | None] = queue.SimpleQueue()
        self._hashed: queue.SimpleQueue[
            tuple[Any, int, int, int, list[threading.Event]] | None] = queue.SimpleQueue()
        self._lanes: list[queue.SimpleQueue[_Slice | None]] = [
            queue.SimpleQueue() for _ in range(LANES if laned else 0)]
        work = [("hash", self._hash_all), ("write", self._write_all)]
        work += [(f"part{i}", functools.partial(self._lane, q))
                 for i, q in enumerate(self._lanes)]
        self._threads = [
            threading.Thread(target=run, name=f"syncd-{what}-{key[:40]}", daemon=True)
            for what, run in work]
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
            tickets: list[threading.Event] = []
            try:
                if self.error is None:
                    part = self._hash(buf, n, offset, part, tickets)
            except BaseException as exc:
                self.error = exc
            self._hashed.put((buf, n, offset, part, tickets))
        for lane in self._lanes:
            lane.put(None)
        self._hashed.put(None)

    def _lane(self, slices: queue.SimpleQueue[_Slice | None]) -> None:
        assert self._laned is not None
        while (job := slices.get()) is not None:
            buf, start, end, part, hashed = job
            try:
                if self.error is None:
                    with memoryview(buf) as view:
                        self._laned[part].update(view[start:end])
            except BaseException as exc:
                self.error = exc
            hashed.set()

    def _write_all(self) -> None:
        part = 0
        while (job := self._hashed.get()) is not None:
            buf, n, offset, done, tickets = job
            try:
                if self.error is None:
                    if (self._file.direct is not None
                            and can_write_direct(offset, offset + n, self._file.size)):
                        self._writer.write_block(self._file, buf, n, offset)
                    else:
                        with memoryview(buf) as view:
                            pwrite_all(self._file.fd, view[:n], offset)
            except BaseException as exc:
                self.error = exc
            for ticket in tickets:  # the lanes are done with this buffer
                ticket.wait()
            if self.error is None:
                self.written = offset + n
                for finished in range(part, done):  # hashed and on disk: readable
                    self._loop.call_soon_threadsafe(self._finished, finished)
                part = done
            self._free.put(buf)

    def _hash(self, buf: Any, n: int, offset: int, part: int,
              tickets: list[threading.Event]) -> int:
        """The hashes of buf[:n] (a composite claim's MD5/SHA handed to the lanes, with a
        ticket each); returns the first part not yet complete."""
        at = 0
        with memoryview(buf) as view:
            data = view[:n]
            if self._ordered is not None:
                self._ordered.update(data)
            while at < n:
                end = self._ends[part]
                upto = min(n, at + end - offset)
                self._digests[part].update(data[at:upto])
                if self._lanes:
                    ticket = threading.Event()
                    tickets.append(ticket)
                    self._lanes[part % len(self._lanes)].put((buf, at, upto, part, ticket))
                offset += upto - at
                at = upto
                if offset == end:
                    part += 1
        return part

    async def close(self) -> None:
        """Wait for every thread to finish what was queued; an error, if any, is raised."""
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
    # composite CRC claim's algorithm; a composite MD5/SHA claim's parts go to the lanes;
    # in order: the whole-file MD5/SHA
    crc_part = per_part if per_part in CRC_ALGOS else None
    digests = [Digest(crcs | ({crc_part} if crc_part else set()), start)
               for start, _ in ranges]
    laned = ([Digest({per_part}, start) for start, _ in ranges]
             if per_part and not crc_part else None)
    ordered = Digest(algos - crcs) if algos - crcs else None
    saving = partial.progress.autosave() if partial else contextlib.nullcontext()

    def finished(i: int) -> None:
        if partial is not None:
            partial.done(i, digests[i])

    async with saving:
        into = _Into(file, writer, ranges, digests, ordered, laned, finished, key, PIECE)
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
    parts = tuple(d.results()[per_part] for d in (laned or digests)) if per_part else ()
    return sums, parts
