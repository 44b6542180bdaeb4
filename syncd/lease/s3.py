"""S3 lease: one lease object per bucket prefix, arbitrated by conditional writes.

- `<prefix>.syncd/lease.json`: created with `If-None-Match: *`, renewed and taken over with
  `If-Match: <ETag>`, so the server lets exactly one writer through per change. Released by
  a conditional write of `released: true`, never deleted (a delete would reset the
  generation and race: two contenders could each delete the other's fresh record).
- `<prefix>.syncd/commit.json`: the commit object. A new holder rewrites it (conditionally)
  with its generation right after acquiring, and every pass ends with a conditional write of
  it, so the server itself rejects a writer that lost the lease, however late it wakes up. It
  also remembers the generation if an operator deletes the lease object.

Servers that ignore the conditions (`rclone serve s3` returns 200 and overwrites) would let two
writers in, so `prepare` probes for support and refuses to run a lease there.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any, Protocol

from syncd.errors import (
    AccessDenied,
    Conflict,
    LeaseError,
    LeaseLost,
    LeaseUnsupported,
    NotFound,
    PreconditionFailed,
    SyncdError,
)
from syncd.keys import RESERVED_DIR
from syncd.lease.record import Corrupt, LeaseRecord, View, decode, encode

LEASE_KEY = f"{RESERVED_DIR}/lease.json"
COMMIT_KEY = f"{RESERVED_DIR}/commit.json"
_NO_SUCH_ETAG = "0" * 32


class SmallObjects(Protocol):
    """All the lease asks of a bucket prefix: small objects written under a condition
    (litestream's s3/leaser.go declares the few calls it makes the same way). S3Store is
    one; the lease needs nothing of listings, transfers or botocore."""

    bucket: str
    name: str  # the prefix as operators name it: s3://bucket/prefix

    @property
    def endpoint_url(self) -> str:
        """The configured URL; "" for AWS S3."""
        ...

    def object_key(self, key: str) -> str:
        """The full object key of `key`, which is relative to the prefix."""
        ...

    async def check(self) -> None:
        """Raise the error that names what is wrong: endpoint, credentials, bucket."""
        ...

    async def get_small(self, key: str) -> tuple[bytes, str] | None:
        """The object's bytes and ETag, or None when absent."""
        ...

    async def put_small(self, key: str, body: bytes, *, if_match: str | None = None,
                        if_none_match: bool = False) -> str:
        """Write under a condition; the new ETag. PreconditionFailed when the condition does
        not hold, Conflict when another conditional write raced this one."""
        ...

    async def delete_small(self, key: str) -> None: ...

    async def close(self) -> None: ...


class S3Lease:
    kind = "s3"

    def __init__(self, store: SmallObjects, endpoint: str, target: str | None = None, *,
                 keys: str = RESERVED_DIR) -> None:
        self.store = store
        self._keys = keys  # the lease's own folder, under the store's prefix
        self._lease_key = f"{keys}/lease.json"
        self._commit_key = f"{keys}/commit.json"
        # what the lease is, the same on every host whatever its endpoint is called
        self.identity = f"{store.endpoint_url or 'aws'} {self._url(self._lease_key)}"
        self.target = target or store.name
        self._endpoint = endpoint
        self._commit_etag: str | None = None
        self._lock = asyncio.Lock()

    def _url(self, key: str) -> str:
        return f"s3://{self.store.bucket}/{self.store.object_key(key)}"

    async def prepare(self) -> None:
        await self.store.check()
        probe = f"{self._keys}/probe-{uuid.uuid4().hex}"
        try:
            await self.store.put_small(probe, b"1", if_none_match=True)
        except AccessDenied:
            raise LeaseError(f"cannot write the lease object {self._url(self._lease_key)}: "
                             "access denied (s3:PutObject is missing)",
                             hint="grant s3:PutObject, s3:GetObject and s3:DeleteObject on "
                                  f"{self._url(self._keys)}/*") from None
        try:
            ignored = await self._ignores_conditions(probe)
        finally:
            with contextlib.suppress(SyncdError):
                await self.store.delete_small(probe)
        if ignored:
            raise LeaseUnsupported(
                f"{self._endpoint} ignores S3 conditional writes ({ignored}), so it cannot "
                f"arbitrate the write lease of {self.target}",
                hint="use a server that supports If-None-Match/If-Match (AWS S3, MinIO, R2, "
                     "...) or set lease = \"volume\" for this mirror")

    async def _ignores_conditions(self, probe: str) -> str | None:
        try:
            await self.store.put_small(probe, b"2", if_none_match=True)
            return "a second PUT with If-None-Match: * succeeded"
        except PreconditionFailed:
            pass
        try:
            await self.store.put_small(probe, b"3", if_match=_NO_SUCH_ETAG)
            return "a PUT with a wrong If-Match succeeded"
        except PreconditionFailed:
            return None

    async def _get(self, key: str) -> tuple[LeaseRecord | None, str | None, str | None]:
        """(record, corrupt reason, ETag) of one of our objects; all None when absent."""
        got = await self.store.get_small(key)
        if got is None:
            return None, None, None
        body, etag = got
        try:
            return decode(body), None, etag
        except Corrupt as exc:
            return None, f"{self._url(key)}: {exc}", etag

    async def read(self) -> View:
        record, corrupt, etag = await self._get(self._lease_key)
        committed, _, commit_etag = await self._get(self._commit_key)
        view = View(gen=record.gen if record else 0, record=record, corrupt=corrupt,
                    token=etag, floor=committed.gen if committed else 0,
                    extra={"etag": etag, "commit_etag": commit_etag})
        if corrupt and etag is not None and view.gen == 0:
            view.gen = view.floor  # unknown generation: at least the committed one
        if etag is None and committed is not None and not committed.released:
            # the lease object is gone (deleted by hand, a lifecycle rule) but a holder
            # committed: held-but-silent until its commits stop changing
            view.gen, view.token = committed.gen, ("commit", commit_etag)
            view.corrupt = (f"{self._url(self._lease_key)} is missing; "
                            f"{self._url(self._commit_key)} shows generation "
                            f"{committed.gen} of {committed.holder.describe()}")
        return view

    async def create(self, view: View, record: LeaseRecord) -> Any | None:
        etag = view.extra.get("etag")
        token: str | None
        try:
            if etag is None:
                token = await self.store.put_small(self._lease_key, encode(record),
                                                   if_none_match=True)
            else:
                token = await self.store.put_small(self._lease_key, encode(record), if_match=etag)
        except (PreconditionFailed, NotFound):  # 412/409: another contender got there;
            token = await self._ours(record)     # 404: If-Match on a deleted object
            if token is None:
                return None
        async with self._lock:
            await self._claim_commit(record)
        return token

    async def _ours(self, record: LeaseRecord) -> str | None:
        """The ETag of the lease object if it holds exactly `record` (a write of ours that
        succeeded although its reply was lost and the retry was refused), else None."""
        now, _, etag = await self._get(self._lease_key)
        return etag if now == record else None

    async def _claim_commit(self, record: LeaseRecord) -> None:
        """Stamp the commit object with our generation: from now on a stale holder's commit
        is rejected by the server. A newer generation already there means we lost."""
        for _ in range(8):
            committed, _, etag = await self._get(self._commit_key)
            if committed is not None and committed.gen > record.gen:
                raise LeaseLost(f"lease on {self.target}: generation {committed.gen} committed "
                                f"while we acquired {record.gen}")
            try:
                if etag is None:
                    self._commit_etag = await self.store.put_small(
                        self._commit_key, encode(record), if_none_match=True)
                else:
                    self._commit_etag = await self.store.put_small(
                        self._commit_key, encode(record), if_match=etag)
                return
            except PreconditionFailed:
                continue  # a stale holder's last commit raced ours: read again
        raise LeaseError(f"could not stamp {self._url(self._commit_key)}: it keeps changing")

    async def renew(self, record: LeaseRecord, token: Any) -> Any:
        try:
            return await self.store.put_small(self._lease_key, encode(record), if_match=str(token))
        except Conflict:
            raise
        except PreconditionFailed:
            if (etag := await self._ours(record)) is not None:
                return etag
            raise LeaseLost(f"lease on {self.target}: the lease object changed under "
                            f"generation {record.gen}") from None
        except NotFound:
            raise LeaseLost(f"lease on {self.target}: the lease object was deleted") from None

    def superseded(self, record: LeaseRecord) -> bool:
        return False  # only the server can tell; the commit object makes it say so

    async def commit(self, record: LeaseRecord) -> None:
        async with self._lock:  # mirrors sharing this prefix commit one at a time
            await self._commit(record)

    async def _commit(self, record: LeaseRecord) -> None:
        if self._commit_etag is None:
            raise LeaseLost(f"lease on {self.target}: generation {record.gen} never committed")
        try:
            self._commit_etag = await self.store.put_small(self._commit_key, encode(record),
                                                           if_match=self._commit_etag)
        except Conflict:
            raise
        except (PreconditionFailed, NotFound):
            raise LeaseLost(f"lease on {self.target}: the server rejected generation "
                            f"{record.gen}'s commit (a newer writer took over)") from None

    async def close(self) -> None:
        await self.store.close()
