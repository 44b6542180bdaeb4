"""Reading one S3 object for a copy: its claim, its part boundaries, its pinned version.

Kept apart from `s3.py` (the store: client, listing, writes) because what an object vouches
for takes more than one request when it was a multipart upload (issue 19): the claim is per
part and the part boundaries come from a second HEAD. The store does the requests.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncGenerator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from syncd.errors import PreconditionFailed, SourceChanged, StoreError
from syncd.listing import Algo, Checksum, Entry, epoch_s, normalize_etag, weak_etag
from syncd.stores.base import Stream
from syncd.verify import Composite, Unvouched, unvouched, vouched

if TYPE_CHECKING:
    from syncd.stores.s3 import S3Store

_UNSET = object()
# Parts of unequal size are learnt one HEAD each; beyond this many, the object is size-only.
_MAX_PROBED = 1000
_PROBES = 8  # HEADs in flight while learning unequal parts


class S3Source:
    """One object to read. A small one learns its checksum from its single GET's headers.

    A multipart object's claim is per part (`Composite`): its upload's part boundaries are
    learnt with one more HEAD (`first_part`) and `boundaries()` hands them to the store
    that stages it. A version whose ETag does not depend on its content is pinned by its
    Last-Modified, and its identity is checked again once read (`identity`)."""

    def __init__(self, store: S3Store, entry: Entry) -> None:
        self.store = store
        self.key = entry.key
        self.size = entry.size
        self._entry = entry
        self._head: dict[str, Any] | None = None
        self._claim: object = _UNSET
        self._ranged = False  # read in more than one GET: identity is checked again
        self.unverified: Unvouched | None = None

    async def vouched(self) -> Checksum | None:
        if self._head is None:
            self._head = await self.store.head(self.key)
            self._check_size(self._head)
        if self._claim is _UNSET:
            claim = vouched(self._head)
            if isinstance(claim, Composite) and not claim.part_size:
                claim = await self._learn_parts(claim)
            self._claim = claim
        return self._claim  # type: ignore[return-value]

    async def _learn_parts(self, claim: Composite) -> Checksum | None:
        """`claim` with its part boundaries, or None (size-only) when the server cannot tell
        them or they do not fit the object's size."""
        if claim.parts == 1:
            return replace(claim, part_size=self.size)
        try:
            learnt = await self._told_parts(claim) or await self._probed_parts(claim)
        except PreconditionFailed:
            raise SourceChanged(f"{self.key} changed while it was read",
                                store=self.store.name, key=self.key) from None
        except StoreError:
            learnt = None
        if learnt is None or not learnt.ranges(self.size):
            self.unverified = Unvouched.PARTS_UNKNOWN
            return None
        return learnt

    async def _told_parts(self, claim: Composite) -> Composite | None:
        """Every part's size (and checksum, where kept) in one GetObjectAttributes."""
        told = await self.store.object_parts(self.key)
        if told is None:
            return None
        etag, parts = told
        if etag != self._etag():
            raise PreconditionFailed(f"{self.key} changed", store=self.store.name, key=self.key)
        field = f"Checksum{claim.algo.name}"  # none for MD5: S3 keeps no part ETags
        return replace(claim, parts=len(parts), sizes=tuple(int(p.get("Size") or 0) for p in parts),
                       part_sums=tuple(str(p.get(field) or "") for p in parts))

    async def _probed_parts(self, claim: Composite) -> Composite | None:
        """The boundaries from HEAD ?partNumber: part 1's size, if the last part is the rest
        (equal parts, as SDKs upload); else every part's own size, one HEAD each."""
        first = await self.store.part(self.key, 1, self._etag())
        count = first.get("PartsCount")
        parts = claim.parts or count or 0
        if parts < 2 or (count is not None and count != parts):
            return None
        step = int(first["PartLength"])
        last = await self.store.part(self.key, parts, self._etag())
        heads = [first, last]
        if int(last["PartLength"]) != self.size - step * (parts - 1):
            if parts > _MAX_PROBED:
                return None
            probes = asyncio.Semaphore(_PROBES)

            async def probe(number: int) -> dict[str, Any]:
                async with probes:
                    return await self.store.part(self.key, number, self._etag())

            heads = [first, *await asyncio.gather(*(probe(n) for n in range(2, parts + 1)))]
        sums = [str(h.get(f"Checksum{claim.algo.name}") or "") for h in heads]
        if len(heads) == parts:
            return replace(claim, parts=parts, sizes=tuple(int(h["PartLength"]) for h in heads),
                           part_sums=tuple(sums))
        return replace(claim, parts=parts, part_size=step,
                       part_sums=(sums[0], *[""] * (parts - 2), sums[1]))

    @property
    def unverified_reason(self) -> Unvouched:
        """Why the source vouches for nothing (asked once `vouched()` returned None)."""
        return self.unverified or unvouched(self._head or {})

    def boundaries(self) -> list[tuple[int, int]] | None:
        """The upload's part ranges when the claim is per part, else None (after vouched)."""
        claim = self._claim
        return claim.ranges(self.size) if isinstance(claim, Composite) else None

    def native(self) -> Stream | None:
        """The engine's stream of the whole object, pinned by its ETag, or None: no engine,
        or an ETag that pins no version (then Last-Modified does, on syncd's own path)."""
        etag = self._etag()
        if self.store.native is None or not etag or weak_etag(etag):
            return None
        return functools.partial(self.store.stream_native, self.key, etag)

    def _etag(self) -> str | None:
        return normalize_etag(self._head.get("ETag")) if self._head else self._entry.etag

    def _since(self) -> str | None:
        return self._head.get("LastModified") if self._head else None

    def _check_size(self, head: dict[str, Any]) -> None:
        size = head.get("ContentLength")
        if size is not None and int(size) != self.size and "ContentRange" not in head:
            raise SourceChanged(f"{self.key} changed since it was listed",
                                store=self.store.name, key=self.key)

    async def digest(self, algo: Algo) -> Checksum:
        raise StoreError(f"{self.key}: hashing a remote object up front is not supported",
                         store=self.store.name, key=self.key)

    async def identity(self) -> Entry:
        """What was read. A version with a weak ETag was pinned only by Last-Modified, which
        a server may not honour on GET: its size, ETag and Last-Modified are read again, and
        any change is SourceChanged (never published)."""
        etag = self._etag()
        if self._ranged and self._head is not None and weak_etag(etag):
            now = await self.store.head(self.key)
            if (now.get("ContentLength"), normalize_etag(now.get("ETag")),
                    now.get("LastModified")) != (self.size, etag, self._head.get("LastModified")):
                raise SourceChanged(f"{self.key} changed while it was read",
                                    store=self.store.name, key=self.key)
        since = epoch_s(self._since()) if weak_etag(etag) else None  # then time is identity
        return Entry(self.key, self.size, etag=etag, last_modified=since)

    async def read(self, start: int = 0, end: int | None = None) -> AsyncGenerator[bytes, None]:
        end = self.size if end is None else end
        whole = start == 0 and end == self.size
        if end <= start and not whole:
            return
        self._ranged = self._ranged or not whole
        async with self.store.streamed(self.key, start, end, self._etag() if self._head
                                       else None, ranged=not whole,
                                       since=self._since()) as (fields, chunks):
            if self._head is None:
                self._head = fields
                self._check_size(fields)
            async for chunk in chunks:
                yield chunk
