"""Ranged-part planning for large objects. Pure.

Parts cover [0, size) exactly once, in order, each `part_size` long but the last. S3 allows at
most 10,000 parts per upload, so the part size grows for huge objects instead of failing.
"""

from __future__ import annotations

MAX_PARTS = 10_000


def effective_part_size(size: int, part_size: int) -> int:
    """`part_size`, doubled until `size` fits in MAX_PARTS parts."""
    if part_size <= 0:
        raise ValueError("part_size must be positive")
    while size > part_size * MAX_PARTS:
        part_size *= 2
    return part_size


def part_ranges(size: int, part_size: int) -> list[tuple[int, int]]:
    """Half-open (start, end) ranges; a zero-size object has no parts."""
    step = effective_part_size(size, part_size)
    return [(start, min(start + step, size)) for start in range(0, size, step)]
