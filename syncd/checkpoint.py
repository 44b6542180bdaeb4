"""The per-mirror record saved while a pass runs, so a crash costs only the last few files.

Issue 18: the record was saved once, at the end of a pass; after a kill -9 mid-pass every
file already published was fetched (pull) or uploaded (push) again. A `Checkpoint` saves it
in batches as files are published: once `every_n` of them wait, or `every_s` after the first
one that waits, whichever comes first. A save rewrites the whole record, so saves are also
spaced by COST_SHARE times what the last one took: at 100,000 entries (a save of ~0.3 s)
at most a tenth of the pass goes to saving.

Two rules keep a saved record from saying more than the destination holds: the record is
copied first, then every store a recorded file was published to is flushed (a volume's
renames are durable only once their directories are fsynced), then the fence is checked and
the copy written with `published.save` (temp file, fsync, rename). Only the end of the pass drops
entries of keys no longer listed (`runtime/mirror.py`); a checkpoint writes every entry.

A checkpoint only adds safety: a save that fails (a full disk) is logged and retried later,
the record being a cache; a lost lease is terminal and surfaces at the next publication.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from syncd import published
from syncd.errors import LeaseLost, SyncdError
from syncd.listing import Record
from syncd.stores.base import Fence

EVERY_S = 2.0  # the longest a published file waits to be recorded (unless saves are slow)
EVERY_N = 500  # ... or this many published files, whichever comes first
COST_SHARE = 10  # the interval is at least this many times what the last save took


class Flushable(Protocol):
    """A destination store: `flush` makes what it published so far durable."""

    async def flush(self) -> None: ...


class Checkpoint:
    """Saves `record` (the pass's own dict, which transfers update) in batches."""

    def __init__(self, root: Path, mirror: str, record: Record, fence: Fence, *,
                 every_s: float = EVERY_S, every_n: int = EVERY_N, log: Any = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.root = root
        self.mirror = mirror
        self.record = record
        self.fence = fence
        self.every_s = every_s
        self.every_n = every_n
        self.log = log
        self.clock = clock
        self.saves = 0  # how many checkpoints were written (tests, the pass summary)
        self._waiting = 0  # files recorded since the last checkpoint
        self._since: float | None = None  # when the first of them was recorded
        self._last = float("-inf")  # when the last checkpoint was written
        self._gap_s = 0.0  # the least time between two checkpoints, from what one costs
        self._stores: dict[int, Flushable] = {}
        self._wake = asyncio.Event()
        self._saver: asyncio.Task[None] | None = None
        self._lost: LeaseLost | None = None

    @property
    def waiting(self) -> int:
        return self._waiting

    def published(self, dst: Flushable) -> None:
        """A file published to (or adopted on) `dst` was just recorded. Raises LeaseLost
        when a checkpoint found the lease lost: nothing more may be published."""
        if self._lost is not None:
            raise self._lost
        self._stores[id(dst)] = dst
        self._waiting += 1
        if self._since is None:
            self._since = self.clock()
        if self._saver is None or self._saver.done():
            self._saver = asyncio.create_task(self._run(), name=f"checkpoint:{self.mirror}")
        self._wake.set()

    async def close(self) -> None:
        """Stop saving (the transfer that published ends). A save under way completes;
        what waits stays counted for the next transfer of the pass or its final save."""
        saver, self._saver = self._saver, None
        if saver is None:
            return
        saver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await saver

    def _due_in(self) -> float:
        if self._since is None:
            return float("inf")
        now = self.clock()
        due = now if self._waiting >= self.every_n else self._since + self.every_s
        return max(due, self._last + self._gap_s) - now

    async def _run(self) -> None:
        while True:
            while (delay := self._due_in()) > 0:
                self._wake.clear()
                # not wait_for: on 3.11 it drops a cancel that meets a set event (gh-86296)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(None if delay == float("inf") else delay):
                        await self._wake.wait()
            if not await self.save():
                return  # the lease is lost: `published` says so to the next publication

    async def save(self) -> bool:
        """Write a checkpoint now; False once the lease is lost. Cancelling it waits for the
        write under way, so no save of the record ever races the next one."""
        snapshot, stores, waiting = dict(self.record), list(self._stores.values()), self._waiting
        self._stores, self._waiting, self._since = {}, 0, None
        work = asyncio.ensure_future(self._write(snapshot, stores))
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            await asyncio.wait({work})
            if not work.cancelled() and isinstance(failed := work.exception(), LeaseLost):
                self._lost = failed
            raise
        except LeaseLost as exc:
            self._lost = exc
            return False
        except (OSError, SyncdError) as exc:
            # a cache: the pass goes on; what waited is saved by the next checkpoint
            for store in stores:
                self._stores.setdefault(id(store), store)
            self._waiting += waiting
            self._since = self.clock()
            if self.log is not None:
                self.log.warning("checkpoint_failed", error=str(exc))
        return True

    async def _write(self, snapshot: Record, stores: list[Flushable]) -> None:
        for store in stores:  # the renames the snapshot records are durable before it is
            await store.flush()
        self.fence.check()
        began = self.clock()
        await published.save(self.root, self.mirror, snapshot)
        self._last = self.clock()
        self._gap_s = COST_SHARE * (self._last - began)
        self.saves += 1
