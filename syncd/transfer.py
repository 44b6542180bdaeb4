"""Executes a plan's actions between two stores. Decides nothing the planner did not.

Every copy is: open the source, stage (bytes hashed as they stream, nothing visible), verify
against the checksum the source vouches for, make sure the source did not move, publish under
the fence, record. A failed verification discards the staged bytes: they are never published.
Errors that doom every action (unreachable endpoint, full disk, bad credentials) stop the run;
errors that concern one key are reported on their own line and the rest goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from syncd.checkpoint import Checkpoint
from syncd.errors import IntegrityError, SyncdError, disposition, first_error
from syncd.lease.journal import NULL, Journal
from syncd.listing import Checksum, Entry, Record, Recorded, fingerprint
from syncd.plan import Adopt, Copy, Delete, Plan
from syncd.stores.base import Fence, Sink, Source, Store, Stream, native_stream, part_boundaries
from syncd.verify import OWN_ALGO, Unvouched, mismatch

QUIET_BELOW = 1 << 20  # files smaller than this are logged at debug level when published
DELETE_BATCH = 1000  # keys per journalled delete (the S3 DeleteObjects limit too)
Log = Any  # a structlog BoundLogger


@dataclass(slots=True)
class Stats:
    """What a run did; the summary line and the tests read it."""

    copied: int = 0
    copied_bytes: int = 0
    streamed_bytes: int = 0  # bytes that crossed the wire, including failed attempts
    resumed_bytes: int = 0  # bytes an earlier, interrupted attempt had already staged
    verified: int = 0
    unverified: int = 0
    adopted: int = 0
    deleted: int = 0
    failed: int = 0
    refused: int = 0
    skipped: int = 0
    started: float = field(default_factory=time.monotonic)
    errors: list[SyncdError] = field(default_factory=list)

    def add(self, other: Stats) -> None:
        """Fold in the stats of another transfer of the same pass."""
        for name in ("copied", "copied_bytes", "streamed_bytes", "resumed_bytes", "verified",
                     "unverified", "adopted", "deleted", "failed", "refused", "skipped"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.errors.extend(other.errors)

    @property
    def elapsed_s(self) -> float:
        return max(time.monotonic() - self.started, 1e-9)


class Meter(Protocol):
    """Where a transfer reports what it does as it happens (the daemon's metrics)."""

    def streamed(self, n: int) -> None: ...

    def begun(self) -> None: ...

    def ended(self, seconds: float, *, published: bool, verified: bool,
              error: BaseException | None) -> None: ...

    def deleted(self, n: int) -> None: ...

    def unverified(self, reason: str) -> None:
        """A file published after a size check only, and why (`verify.Unvouched`)."""

    def failed(self, error: BaseException) -> None:
        """A failure outside any one transfer (a build that does not match its manifest)."""


class _NoMeter:
    def streamed(self, n: int) -> None:
        pass

    def begun(self) -> None:
        pass

    def ended(self, seconds: float, *, published: bool, verified: bool,
              error: BaseException | None) -> None:
        pass

    def deleted(self, n: int) -> None:
        pass

    def unverified(self, reason: str) -> None:
        pass

    def failed(self, error: BaseException) -> None:
        pass


NO_METER: Meter = _NoMeter()


class _Counted:
    """A Source whose reads report their bytes (progress, metrics)."""

    def __init__(self, inner: Source, on_bytes: Callable[[int], None]) -> None:
        self._inner = inner
        self._on_bytes = on_bytes
        self.key = inner.key
        self.size = inner.size

    async def read(self, start: int = 0, end: int | None = None) -> Any:
        async with contextlib.aclosing(self._inner.read(start, end)) as chunks:
            async for chunk in chunks:
                self._on_bytes(len(chunk))
                yield chunk

    async def vouched(self) -> Checksum | None:
        return await self._inner.vouched()

    async def digest(self, algo: Any) -> Checksum:
        return await self._inner.digest(algo)

    async def identity(self) -> Entry:
        return await self._inner.identity()

    def boundaries(self) -> list[tuple[int, int]] | None:
        return part_boundaries(self._inner)

    def native(self) -> Stream | None:
        stream = native_stream(self._inner)
        if stream is None:
            return None
        loop = asyncio.get_running_loop()
        on_bytes = self._on_bytes

        async def counted(sink: Sink) -> None:
            def counting(chunk: memoryview, offset: int) -> None:
                sink(chunk, offset)
                loop.call_soon_threadsafe(on_bytes, len(chunk))
            await stream(counting)

        return counted

    @property
    def unverified_reason(self) -> str:
        return str(getattr(self._inner, "unverified_reason", Unvouched.NO_CHECKSUM))


async def same_bytes(a: Store, a_entry: Entry, b: Store, b_entry: Entry) -> Checksum | None:
    """syncd's own checksum when both sides hold the same bytes, else None.

    The remote side states its checksum (a HEAD); the local side hashes its file with that
    algorithm. Nothing stated means nothing proven: None, and the caller copies."""
    (local, local_entry), (remote, remote_entry) = (
        ((a, a_entry), (b, b_entry)) if a.caps.local else ((b, b_entry), (a, a_entry)))
    claim = await remote.checksum(remote_entry)
    if claim is None or await local.checksum(local_entry, claim.algo) != claim:
        return None
    return claim if claim.algo is OWN_ALGO else await local.checksum(local_entry, OWN_ALGO)


_WARNED_SIZE_ONLY: set[tuple[str, str]] = set()  # mirrors (source, destination) warned


class Transfer:
    def __init__(
        self, src: Store, dst: Store, record: Record, fence: Fence, *, concurrency: int,
        log: Log, on_bytes: Callable[[int], None] | None = None, journal: Journal = NULL,
        stopping: Callable[[], bool] = lambda: False, meter: Meter = NO_METER,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        self.src = src
        self.dst = dst
        self.record = record
        self.fence = fence
        self.concurrency = concurrency
        self.log = log
        self.stats = Stats()
        self._on_bytes = on_bytes
        self.journal = journal
        self.stopping = stopping  # once true, no new action starts; those in flight finish
        self.meter = meter
        self.checkpoint = checkpoint  # saves `record` as files are published, in batches

    def _bytes(self, n: int) -> None:
        self.stats.streamed_bytes += n
        self.meter.streamed(n)
        if self._on_bytes is not None:
            self._on_bytes(n)

    async def run(self, plan: Plan) -> Stats:
        for refused in plan.refused:
            self.stats.refused += 1
            self.log.warning("key_refused", key=refused.key, reason=str(refused.reason),
                             detail=refused.detail)
        work: list[Copy | Adopt] = [a for a in plan.actions if isinstance(a, Copy | Adopt)]
        self.stats.skipped = len(plan.actions) - len(work) - len(plan.deletes) - self.stats.refused
        pending: Iterator[Copy | Adopt] = iter(work)
        try:
            async with asyncio.TaskGroup() as tg:
                for i in range(min(self.concurrency, len(work))):
                    tg.create_task(self._worker(pending), name=f"transfer-worker-{i}")
        except BaseExceptionGroup as group:
            raise first_error(group) from None
        finally:
            if self.checkpoint is not None:
                await self.checkpoint.close()
        if plan.deletes and self.stats.failed:
            # a failed copy may be the new name of a file a delete would remove: keep both
            self.log.warning("deletes_held", count=len(plan.deletes), failed=self.stats.failed)
        elif plan.deletes and not self.stopping():
            await self._delete(plan.deletes)
        return self.stats

    async def _worker(self, pending: Iterator[Copy | Adopt]) -> None:
        for action in pending:
            if self.stopping():
                self.stats.skipped += 1
                continue
            began, verified, error = time.monotonic(), None, None
            self.meter.begun()
            try:
                if isinstance(action, Adopt) and await self._adopt(action):
                    continue
                verified = await self._copy(action.key, action.src, str(action.reason))
            except SyncdError as exc:
                if disposition(exc).stops_pass:  # the pass reports it (errors._TABLE)
                    raise
                error = exc
                self.stats.failed += 1
                # kept for the summary only: drop the frames, which would keep streams alive
                exc.__traceback__ = exc.__context__ = exc.__cause__ = None
                self.stats.errors.append(exc)
                self.log.error("copy_failed", key=action.key, error=str(exc),
                               kind=type(exc).__name__)
            finally:
                self.meter.ended(time.monotonic() - began, published=verified is not None,
                                 verified=bool(verified), error=error)

    async def _adopt(self, action: Adopt) -> bool:
        """True when the destination already holds the source's bytes (now recorded)."""
        agreed = await same_bytes(self.src, action.src, self.dst, action.dst)
        if agreed is None:
            return False
        self.record[action.key] = Recorded(
            fingerprint(action.src), fingerprint(action.dst), str(agreed), self.fence.generation)
        self._recorded()
        self.stats.adopted += 1
        self.log.info("copy_adopted", key=action.key, reason=str(action.reason))
        return True

    async def _copy(self, key: str, entry: Entry, reason: str) -> bool:
        """Stage, verify, publish; whether a checksum the source vouches for was matched."""
        source: Source = _Counted(await self.src.open(entry), self._bytes)
        staged = await self.dst.stage(source, frozenset(), self.fence.generation)
        try:
            claim = await source.vouched()
            wrong = mismatch(claim, staged.checksums, staged.parts) if claim else None
            if claim is not None and wrong is not None:
                raise IntegrityError(
                    f"{key}: {claim.algo} of the received bytes does not match the source's "
                    f"({wrong}); not published", store=self.src.name, key=key)
            if staged.size != entry.size:
                raise IntegrityError(f"{key}: received {staged.size} bytes, listed {entry.size}",
                                     store=self.src.name, key=key)
            ident = await source.identity()
            with self.journal.write("publish", key, self.fence) as w:
                published = await self.dst.publish(staged, w.fence)
        except BaseException:
            await self.dst.discard(staged)
            raise
        verified = claim is not None or self.dst.caps.verifies_checksums
        self.record[key] = Recorded(
            fingerprint(ident), fingerprint(published),
            str(Checksum(OWN_ALGO, staged.checksums[OWN_ALGO])), self.fence.generation)
        self._recorded()
        self.stats.copied += 1
        self.stats.copied_bytes += staged.size
        self.stats.resumed_bytes += staged.resumed
        if verified:
            self.stats.verified += 1
        else:
            self.stats.unverified += 1
            self._size_only(key, str(getattr(source, "unverified_reason", "")))
        # a line per small file would be most of a large pass's CPU and of its log volume;
        # the pass summary and the metrics count them, --log-level debug lists them
        log = self.log.info if staged.size >= QUIET_BELOW else self.log.debug
        log("copy_published", key=key, bytes=staged.size, reason=reason, verified=verified,
            resumed=staged.resumed, algo=str(claim.algo) if claim else None)
        return verified

    def _size_only(self, key: str, reason: str) -> None:
        """Count a size-only file by reason, and warn once per mirror and process: the
        source vouches for nothing, so a corrupted copy would not be noticed."""
        self.meter.unverified(reason)
        mirror = (self.src.name, self.dst.name)
        if mirror not in _WARNED_SIZE_ONLY:
            _WARNED_SIZE_ONLY.add(mirror)
            self.log.warning("size_only", key=key, reason=reason,
                             hint="the source has no checksum syncd can verify; only the size "
                                  "of such files is checked")

    def _recorded(self) -> None:
        """A file was just published or adopted and recorded: a checkpoint may be due."""
        if self.checkpoint is not None:
            self.checkpoint.published(self.dst)

    async def _delete(self, deletes: list[Delete]) -> None:
        keys = [d.key for d in deletes]
        for i in range(0, len(keys), DELETE_BATCH):  # journal lines of a bounded size
            batch = keys[i:i + DELETE_BATCH]
            with self.journal.write("delete", batch, self.fence) as w:
                await self.dst.delete(batch, w.fence)
        for key in keys:
            self.record.pop(key, None)
            self.log.info("delete_done", key=key)
        self.stats.deleted += len(keys)
        self.meter.deleted(len(keys))
