"""An append-only journal of every write and lease event, with generation and monotonic times.

It exists for audits and for the multi-writer tests: CLOCK_MONOTONIC is shared by every
process on a machine, so intervals from several instances' journals can be compared to prove
that no two writers overlapped. Off unless `lease.journal` names a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import structlog

from syncd.errors import ConfigError, LeaseLost


class Journal:
    def __init__(self, path: str | None, instance: str) -> None:
        self._fd: int | None = None
        self._instance = instance
        self._path = path
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

    def event(self, event: str, **fields: Any) -> None:
        if self._fd is None:
            return
        line = {"instance": self._instance, "pid": os.getpid(), "event": event,
                "at": time.monotonic(), **fields}
        try:
            os.write(self._fd, json.dumps(line, separators=(",", ":")).encode() + b"\n")
        except OSError as exc:  # an audit aid must not stop the mirroring: report, stop it
            structlog.get_logger().error("journal_failed", path=self._path, error=str(exc))
            self.close()

    @contextlib.contextmanager
    def write(self, op: str, key: str, gen: int) -> Iterator[None]:
        """Brackets one publication. Logged as `op` when it may have taken effect (done, or
        failed or cancelled midway: the store may have applied it), as `op_fenced` when the
        fence refused it before anything could land."""
        start = time.monotonic()
        try:
            yield
        except LeaseLost:
            self.event(f"{op}_fenced", key=key, gen=gen, start=start, end=time.monotonic())
            raise
        except BaseException:
            self.event(op, key=key, gen=gen, start=start, end=time.monotonic(),
                       outcome="unknown")
            raise
        self.event(op, key=key, gen=gen, start=start, end=time.monotonic(), outcome="ok")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


NULL = Journal(None, "")
