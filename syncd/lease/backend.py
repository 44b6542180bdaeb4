"""What a lease store must do: the one interface the volume and S3 backends implement.

A backend only arbitrates: it reads the current record, creates the next generation so that
exactly one contender wins it, and rewrites the holder's own generation. Deciding *when* a
lease may be taken over is lease.py's job, the same for every backend.
"""

from __future__ import annotations

from typing import Any, Protocol

from syncd.lease.record import LeaseRecord, View


class Backend(Protocol):
    kind: str  # "volume" or "s3"
    target: str  # what the lease guards, as operators name it

    async def prepare(self) -> None:
        """Create what the lease needs and prove the store can arbitrate; raise a LeaseError
        (LeaseUnsupported, or one naming the path or object that cannot be written)."""
        ...

    async def read(self) -> View: ...

    async def create(self, view: View, record: LeaseRecord) -> Any | None:
        """Create generation `record.gen` atomically, given the `view` it was decided on.
        Returns the holder's token, or None when another contender won that generation."""
        ...

    async def renew(self, record: LeaseRecord, token: Any) -> Any:
        """Rewrite the holder's record; the new token. LeaseLost if a newer gen exists."""
        ...

    def superseded(self, record: LeaseRecord) -> bool:
        """A cheap synchronous look, right before a publish, for any sign that `record` is
        no longer the current one: a newer generation, or this generation held by another
        holder (identity is holder id and nonce, not the number alone). False when the
        backend cannot tell without a network round trip."""
        ...

    async def commit(self, record: LeaseRecord) -> None:
        """Mark a pass's publications with the holder's generation where the store itself
        rejects a stale writer (S3: a conditional write of the commit object)."""
        ...

    async def close(self) -> None: ...
