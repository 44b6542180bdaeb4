"""Fences for tests: real objects implementing syncd.stores.base.Fence, not mocks."""

from __future__ import annotations

import threading

from syncd.errors import LeaseLost


class CountdownFence:
    """The fence of a holder whose lease is taken over mid-operation: `check()` passes
    `allowed` times, then raises LeaseLost for good. Counts both, so a test can tell how
    many writes were allowed (stores call it from worker threads)."""

    def __init__(self, allowed: int, generation: int = 7) -> None:
        self.allowed = allowed
        self.generation = generation
        self.passed = 0
        self.refused = 0
        self._lock = threading.Lock()

    def check(self) -> None:
        with self._lock:
            if self.passed >= self.allowed:
                self.refused += 1
                raise LeaseLost(f"lease taken over after {self.allowed} check(s) "
                                f"(generation {self.generation} is no longer held)")
            self.passed += 1

    def lose(self) -> None:
        """Lost from now on, however many checks were left."""
        with self._lock:
            self.allowed = self.passed
