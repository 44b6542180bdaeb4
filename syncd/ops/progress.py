"""Progress for one-shot runs on a terminal (bytes/s and ETA); silent otherwise."""

from __future__ import annotations

import sys
from typing import Protocol

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


class _Planned(Protocol):
    @property
    def copy_bytes(self) -> int: ...


class Bar:
    """Started once the plan says how many bytes will move; a no-op off a terminal."""

    def __init__(self, label: str, *, enabled: bool | None = None) -> None:
        self._enabled = sys.stderr.isatty() if enabled is None else enabled
        self._label = label
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def start(self, total_bytes: int) -> None:
        if self._enabled and total_bytes and self._progress is None:
            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                TransferSpeedColumn(), TimeRemainingColumn(), transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task(self._label, total=total_bytes)

    def start_for(self, plan: _Planned) -> None:
        self.start(plan.copy_bytes)

    def advance(self, n: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, n)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
