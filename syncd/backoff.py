"""Retry delays as a pure function, apart from making the call (rclone's pacer does the same)."""

from __future__ import annotations


def next_delay(attempt: int, *, base: float, cap: float, rand: float) -> float:
    """Full jitter: many sidecars retrying one bucket must not retry in step.

    `attempt` counts from 0; `rand` is uniform in [0, 1)."""
    return rand * min(cap, base * 2.0**attempt)
