"""An append-only journal of every write and lease event, with generation and monotonic times.

It exists for audits and for the multi-writer tests: CLOCK_MONOTONIC is shared by every
process on a machine, so intervals from several instances' journals can be compared to prove
that no two writers overlapped (tests/journal_audit.py does). Off unless `lease.journal`
names a file. One JSON object per line; every line has `instance`, `pid` and `nonce` (who
wrote it: the nonce tells two processes apart even if their instance ids collide), `event`
and `at` (CLOCK_MONOTONIC when it was written). docs/leases.md, "The journal", lists the
events and their fields.

A publication is two lines. `<op>_begin` is written before anything can land; the outcome
line after it says what happened:
- `<op>` with `outcome` "ok" (done) or "unknown" (it failed or was cut off after its commit
  point: it may have landed);
- `<op>_fenced` (`outcome` "fenced"): the fence refused it before anything landed;
- `<op>_failed` (`outcome` "failed"): it failed before its commit point, nothing landed.
So `event == op` means exactly "may have taken effect". A begin line without an outcome is a
publication cut off with its process (kill -9, power loss): it may have landed.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from syncd.errors import ConfigError, LeaseLost
from syncd.lease.record import me

if TYPE_CHECKING:
    from syncd.stores.base import Fence

_SEQ = itertools.count(1)  # per process: pairs each begin line with its outcome line


class Write:
    """One publication in progress, as `Journal.write` hands it out.

    The commit point is the moment after which the publication may have taken effect. The
    journal can only call an error before it "failed" (provably nothing landed) when the
    caller marks that point, one of two ways:
    - pass `w.fence` to the store instead of the lease's fence: its first successful
      `check()` is the commit point (stores check it right before their rename or PUT);
    - or open it with `marks_commit=True` and call `w.committing()` right before the step
      that makes bytes visible.
    After the publication ended, `w.fence` refuses (LeaseLost), so a worker thread still
    running when the outcome was written can never make it untrue. Unmarked, an error is
    "unknown" and a LeaseLost "fenced" (a single fence check guards the one commit step)."""

    def __init__(self, fence: Fence | None) -> None:
        self._inner = fence
        self._lock = threading.Lock()  # stores check the fence on worker threads
        self.marked = False  # the caller marks the commit point: errors before it are "failed"
        self.committed = False
        self.checked_at: float | None = None  # the latest check that let it through
        self._ended = False

    @property
    def generation(self) -> int:
        assert self._inner is not None
        return self._inner.generation

    @property
    def fence(self) -> Fence:
        """The lease's fence, marking the commit point when a check of it passes."""
        if self._inner is None:
            raise TypeError("Journal.write was given a generation, not a fence")
        self.marked = True
        return self

    def check(self) -> None:
        assert self._inner is not None
        self._refuse_if_ended()
        self._inner.check()
        self.committing()

    def committing(self) -> None:
        """From here on the publication may take effect."""
        with self._lock:
            self.marked = True
            self._refuse_if_ended()
            self.committed = True
            self.checked_at = time.monotonic()

    def _refuse_if_ended(self) -> None:
        if self._ended:
            raise LeaseLost("this publication already ended (its outcome is journaled)")

    def end(self) -> bool:
        """Close the window for good; whether its commit point was passed."""
        with self._lock:
            self._ended = True
            return self.committed


class Journal:
    def __init__(self, path: str | None, instance: str, *, nonce: str | None = None) -> None:
        self._fd: int | None = None
        self._path = path
        # the same nonce as the lease holder of this process (record.me caches it)
        self._who = {"instance": instance, "pid": os.getpid(),
                     "nonce": nonce if nonce is not None else me(instance).nonce}
        if path:
            try:
                self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                                   0o644)
            except OSError as exc:
                raise ConfigError(f"cannot open {path}: {exc.strerror}",
                                  field="lease.journal") from None

    @property
    def enabled(self) -> bool:
        return self._fd is not None

    def event(self, event: str, *, at: float | None = None, **fields: Any) -> None:
        """One line, written at once with one write() (O_APPEND: lines never interleave)."""
        if self._fd is None:
            return
        line = {**self._who, "event": event, "at": time.monotonic() if at is None else at,
                **fields}
        try:
            os.write(self._fd, json.dumps(line, separators=(",", ":")).encode() + b"\n")
        except OSError as exc:  # an audit aid must not stop the mirroring: report, stop it
            structlog.get_logger().error("journal_failed", path=self._path, error=str(exc))
            self.close()

    @contextlib.contextmanager
    def write(self, op: str, key: str | Sequence[str], gen: int | Fence, *,
              marks_commit: bool = False) -> Iterator[Write]:
        """Brackets one publication of `key` (or of the list `keys`, for a batch) under a
        generation: an `<op>_begin` line first, its outcome after (module docstring).

        `gen` is the generation, or better the fence guarding the publication: then the
        handle's `fence` is the fence to publish with, and taking it marks the commit point
        (see `Write`). `marks_commit` promises a `w.committing()` call right before the step
        that makes anything visible instead."""
        fence = None if isinstance(gen, int) else gen
        w = Write(fence)
        w.marked = marks_commit
        ident: dict[str, Any] = {"op": op, **({"key": key} if isinstance(key, str)
                                              else {"keys": list(key)})}
        ident.update(gen=gen if isinstance(gen, int) else gen.generation, seq=next(_SEQ))
        target = getattr(fence, "target", None)  # a lease's fence names what it guards
        if isinstance(target, str):
            ident["target"] = target
        start = time.monotonic()
        self.event(f"{op}_begin", at=start, **ident, start=start)
        try:
            yield w
        except BaseException as exc:
            committed, end = w.end(), time.monotonic()
            error = f"{type(exc).__name__}: {exc}"[:300]
            if committed or (not w.marked and not isinstance(exc, LeaseLost)):
                event, outcome = op, "unknown"
            elif isinstance(exc, LeaseLost):
                event, outcome = f"{op}_fenced", "fenced"
            else:
                event, outcome = f"{op}_failed", "failed"
            self.event(event, at=end, **ident, start=start, end=end, outcome=outcome,
                       checked_at=w.checked_at, error=error)
            raise
        w.end()
        end = time.monotonic()
        self.event(op, at=end, **ident, start=start, end=end, outcome="ok",
                   checked_at=w.checked_at)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


NULL = Journal(None, "", nonce="")
