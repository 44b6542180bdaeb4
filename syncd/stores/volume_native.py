"""A large download through the native engine, into its staging file.

The engine (`native.NativeEngine`) fetches ranged parts on its own threads and hands the
body over in order; here each piece is written at its offset and hashed as it passes: CRCs
per part (combined at the end, and the claim's algorithm per upload part when the claim is
composite), MD5/SHA in order. A part is recorded in the partial download's sidecar as soon
as its last byte is written, so an interrupted download resumes on syncd's own path, like
one of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Sequence

from syncd.errors import Interrupted, StoreError
from syncd.listing import Algo
from syncd.stores.base import Stream
from syncd.stores.resume import PartialDownload
from syncd.stores.volume_write import StagingFile
from syncd.verify import CRC_ALGOS, Digest, combine


class _Into:
    """The sink: called on an engine thread, one piece at a time, in order."""

    def __init__(self, fd: int, ranges: Sequence[tuple[int, int]], digests: list[Digest],
                 ordered: Digest | None, finished: Callable[[int], None], key: str) -> None:
        self._fd = fd
        self._ends = [end for _, end in ranges]
        self._digests = digests
        self._ordered = ordered
        self._finished = finished
        self._loop = asyncio.get_running_loop()
        self._key = key
        self.pos = 0
        self._part = 0

    def __call__(self, chunk: memoryview, offset: int) -> None:
        if offset != self.pos or offset + len(chunk) > self._ends[-1]:
            raise StoreError(f"{self._key}: the engine delivered bytes {offset}+{len(chunk)} "
                             f"where {self.pos} was next", key=self._key)
        view = memoryview(chunk).cast("B")
        written = 0
        while written < len(view):
            written += os.pwrite(self._fd, view[written:], offset + written)
        while view:
            end = self._ends[self._part]
            piece, view = view[:end - self.pos], view[end - self.pos:]
            self._digests[self._part].update(piece)
            if self._ordered is not None:
                self._ordered.update(piece)
            self.pos += len(piece)
            if self.pos == end:
                self._loop.call_soon_threadsafe(self._finished, self._part)
                self._part += 1


async def stream_into(
    file: StagingFile, stream: Stream, algos: frozenset[Algo],
    partial: PartialDownload | None, ranges: Sequence[tuple[int, int]],
    per_part: Algo | None, key: str,
) -> tuple[dict[Algo, str], tuple[str, ...]]:
    """The whole object into `file` through `stream`: its checksums and, for a composite
    claim, the claim algorithm's digest of each of the upload's parts (`ranges`)."""
    crcs = frozenset(a for a in algos if a in CRC_ALGOS)
    own = frozenset({per_part}) if per_part else frozenset()
    digests = [Digest(crcs | own, start) for start, _ in ranges]
    ordered = Digest(algos - crcs) if algos - crcs else None

    def finished(i: int) -> None:
        if partial is not None:
            partial.done(i, digests[i])

    into = _Into(file.fd, ranges, digests, ordered, finished, key)
    saving = partial.progress.autosave() if partial else contextlib.nullcontext()
    async with saving:
        await stream(into)
        await asyncio.sleep(0)  # the last part's `finished`, queued from the engine thread
    if into.pos != ranges[-1][1]:
        raise Interrupted(f"{key}: the download ended after {into.pos} of {ranges[-1][1]} "
                          "bytes", key=key)
    sums = combine(digests)
    if ordered is not None:
        sums.update(ordered.results())
    parts = tuple(d.results()[per_part] for d in digests) if per_part else ()
    return sums, parts
