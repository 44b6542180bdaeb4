"""Reading a file on the volume as the source of an upload (push) or a checksum.

A file must not change between open and publish: `identity()` compares its stat with the
listing's, so a file rewritten while it was uploaded is reported (SourceChanged), never
recorded as what was sent. Files are opened through the store's confined paths, never
through a symlink.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING

from syncd.errors import SourceChanged
from syncd.listing import Algo, Checksum, Entry
from syncd.stores.base import CHUNK_BYTES
from syncd.stores.volume_walk import entry_of

if TYPE_CHECKING:
    from syncd.stores.volume import VolumeStore


class VolumeSource:
    """A file being uploaded; it must not change between open and publish."""

    def __init__(self, store: VolumeStore, entry: Entry) -> None:
        self.store = store
        self.key = entry.key
        self.size = entry.size
        self._entry = entry
        self._own: Checksum | None = None

    async def read(self, start: int = 0, end: int | None = None) -> AsyncGenerator[bytes, None]:
        end = self.size if end is None else end
        store = self.store
        with store.translated(self.key, reading=True):
            fd = await asyncio.to_thread(store.open_file, self.key)
        try:
            offset = start
            while offset < end:
                with store.translated(self.key, reading=True):
                    chunk = await asyncio.to_thread(
                        os.pread, fd, min(CHUNK_BYTES, end - offset), offset)
                if not chunk:
                    raise SourceChanged(f"{store.root / self.key} shrank while it was read",
                                        store=store.name, key=self.key)
                offset += len(chunk)
                yield chunk
        finally:
            os.close(fd)

    async def vouched(self) -> Checksum | None:
        """A file vouches for nothing but what syncd computed from it (see `digest`)."""
        return self._own

    async def digest(self, algo: Algo) -> Checksum:
        if self._own is None or self._own.algo is not algo:
            own = await self.store.checksum(self._entry, algo)
            assert own is not None
            self._own = own
        return self._own

    async def identity(self) -> Entry:
        def current() -> os.stat_result:
            fd = self.store.open_file(self.key)
            try:
                return os.fstat(fd)
            finally:
                os.close(fd)
        with self.store.translated(self.key, reading=True):
            st = await asyncio.to_thread(current)
        now = entry_of(self.key, st)
        if now.stat_signature() != self._entry.stat_signature():
            raise SourceChanged(f"{self.store.root / self.key} changed while it was uploaded",
                                store=self.store.name, key=self.key)
        return now
