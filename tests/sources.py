"""Stand-ins for store tests: an in-memory source with ranged reads, a revoked fence."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from syncd.errors import LeaseLost
from syncd.listing import Algo, Checksum, Entry
from syncd.verify import hash_bytes


class BytesSource:
    """`chunk` sets the size of the pieces a read yields (odd sizes cross buffer edges);
    `vouch` names the checksum the source claims for its bytes, like an S3 object's."""

    def __init__(self, key: str, data: bytes, *, chunk: int = 256 * 1024,
                 vouch: Algo | None = None) -> None:
        self.key, self.size, self._data = key, len(data), data
        self._chunk = chunk
        self._vouch = vouch

    async def read(self, start: int = 0, end: int | None = None
                   ) -> AsyncGenerator[bytes, None]:
        end = self.size if end is None else end
        for i in range(start, end, self._chunk):
            yield self._data[i:min(i + self._chunk, end)]

    async def vouched(self) -> Checksum | None:
        return await self.digest(self._vouch) if self._vouch else None

    async def digest(self, algo: Algo) -> Checksum:
        return Checksum(algo, hash_bytes(self._data, (algo,))[algo])

    async def identity(self) -> Entry:
        return Entry(self.key, self.size)


class RevokedFence:
    """The fence of a writer that lost its lease."""

    generation = 7

    def check(self) -> None:
        raise LeaseLost("lease lost")
