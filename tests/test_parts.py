"""syncd.parts: ranged parts cover an object exactly once, within S3's part-count limit."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.parts import MAX_PARTS, effective_part_size, part_ranges

PROPERTY = settings(max_examples=200, deadline=None)
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40
PART = 5 * MiB


def assert_exact_cover(size: int, part_size: int) -> list[tuple[int, int]]:
    ranges = part_ranges(size, part_size)
    step = effective_part_size(size, part_size)
    assert step >= part_size
    assert len(ranges) <= MAX_PARTS
    if size == 0:
        assert ranges == []
        return ranges
    assert ranges[0][0] == 0
    assert ranges[-1][1] == size
    for (_, end), (start, _) in itertools.pairwise(ranges):
        assert end == start  # contiguous and ordered: no gap, no overlap
    for start, end in ranges:
        assert 0 < end - start <= step
    for start, end in ranges[:-1]:
        assert end - start == step  # all but the last are exactly the part size
    assert sum(end - start for start, end in ranges) == size
    assert len(ranges) == -(-size // step)
    return ranges


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (0, []),
        (1, [(0, 1)]),
        (PART - 1, [(0, PART - 1)]),
        (PART, [(0, PART)]),
        (PART + 1, [(0, PART), (PART, PART + 1)]),
        (2 * PART, [(0, PART), (PART, 2 * PART)]),
    ],
)
def test_part_ranges_splits_at_part_size_boundaries(
    size: int, expected: list[tuple[int, int]]
) -> None:
    assert part_ranges(size, PART) == expected
    assert_exact_cover(size, PART)


def test_part_ranges_uses_part_size_while_it_fits_max_parts() -> None:
    size = PART * MAX_PARTS
    assert effective_part_size(size, PART) == PART
    assert len(assert_exact_cover(size, PART)) == MAX_PARTS


def test_part_ranges_grows_part_size_one_byte_past_max_parts() -> None:
    size = PART * MAX_PARTS + 1
    assert effective_part_size(size, PART) == 2 * PART
    assert len(assert_exact_cover(size, PART)) == MAX_PARTS // 2 + 1


@pytest.mark.parametrize("size", [50 * TiB, 5 * TiB, 5 * TiB + 1, 48_828 * GiB + 17])
def test_part_ranges_of_huge_object_stays_within_max_parts(size: int) -> None:
    ranges = assert_exact_cover(size, PART)
    assert 0 < len(ranges) <= MAX_PARTS
    # The part size only doubles as far as needed: half of it would exceed MAX_PARTS.
    step = effective_part_size(size, PART)
    assert size > (step // 2) * MAX_PARTS


def test_part_ranges_of_50_tib_in_5_mib_parts() -> None:
    ranges = part_ranges(50 * TiB, PART)
    assert len(ranges) <= MAX_PARTS
    assert ranges[-1][1] == 50 * TiB


@PROPERTY
@given(st.integers(0, 1 << 24), st.integers(1, 1 << 16))
def test_part_ranges_covers_small_objects_exactly_once(size: int, part_size: int) -> None:
    ranges = assert_exact_cover(size, part_size)
    covered = [0] * min(size, 1 << 12)
    for start, end in ranges:  # the first 4 KiB byte by byte, as a literal cross-check
        for i in range(start, min(end, len(covered))):
            covered[i] += 1
    assert all(c == 1 for c in covered)


@PROPERTY
@given(st.integers(0, 60 * TiB), st.integers(5 * MiB, 5 * GiB))
def test_part_ranges_covers_any_object_within_max_parts(size: int, part_size: int) -> None:
    assert_exact_cover(size, part_size)


@PROPERTY
@given(st.integers(0, 60 * TiB), st.integers(1, 5 * GiB))
def test_effective_part_size_is_part_size_times_power_of_two(size: int, part_size: int) -> None:
    step = effective_part_size(size, part_size)
    ratio, rem = divmod(step, part_size)
    assert rem == 0
    assert ratio & (ratio - 1) == 0  # a power of two
    assert size <= step * MAX_PARTS
    assert ratio == 1 or size > (step // 2) * MAX_PARTS


@pytest.mark.parametrize("part_size", [0, -1, -PART])
def test_effective_part_size_rejects_non_positive_part_size(part_size: int) -> None:
    with pytest.raises(ValueError, match="part_size must be positive"):
        effective_part_size(100, part_size)
    with pytest.raises(ValueError, match="part_size must be positive"):
        part_ranges(100, part_size)
