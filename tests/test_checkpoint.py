"""syncd.checkpoint: the record is saved in batches while a pass publishes (issue 18), after
the destination is flushed, under the fence, and never with fewer entries than it had."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from syncd import published
from syncd.checkpoint import Checkpoint
from syncd.errors import LeaseLost
from syncd.listing import Record, Recorded
from syncd.stores.base import OpenFence
from tests.fences import CountdownFence

MIRROR = "m"


class Destination:
    """A destination whose `flush` notes what the saved record held at that moment: a
    checkpoint must flush first, so the record on disk never names an unflushed file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.flushes: list[set[str]] = []

    async def flush(self) -> None:
        self.flushes.append(set(await published.load(self.root, MIRROR)))


def _entry(i: int) -> Recorded:
    return Recorded(f"{i}:etag{i}", f"{i}:1:{i}", None, 1)


async def _until(check: Callable[[], bool], limit_s: float = 5.0) -> None:
    deadline = time.monotonic() + limit_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def _saved(root: Path) -> Record:
    return await published.load(root, MIRROR)


async def test_checkpoint_saves_every_n_published_not_every_file(tmp_path: Path) -> None:
    record: Record = {}
    dst = Destination(tmp_path)
    cp = Checkpoint(tmp_path, MIRROR, record, OpenFence(), every_s=3600, every_n=3)
    for i in range(7):
        record[f"k{i}"] = _entry(i)
        cp.published(dst)
        if i in (2, 5):
            batches = (i + 1) // 3
            await _until(lambda: cp.saves == batches)  # noqa: B023 (awaited right here)
    await asyncio.sleep(0.1)  # the seventh alone is not due
    assert cp.saves == 2
    assert cp.waiting == 1
    assert set(await _saved(tmp_path)) == {f"k{i}" for i in range(6)}
    await cp.close()


async def test_checkpoint_saves_a_small_batch_once_its_interval_passes(tmp_path: Path) -> None:
    record: Record = {}
    cp = Checkpoint(tmp_path, MIRROR, record, OpenFence(), every_s=0.3, every_n=1000)
    began = time.monotonic()
    for i in range(5):
        record[f"k{i}"] = _entry(i)
        cp.published(Destination(tmp_path))
    await _until(lambda: cp.saves == 1)
    assert time.monotonic() - began >= 0.3
    assert await _saved(tmp_path) == record
    await asyncio.sleep(0.4)
    assert cp.saves == 1  # nothing new: nothing written
    await cp.close()


async def test_checkpoint_flushes_every_destination_before_saving(tmp_path: Path) -> None:
    record: Record = {}
    one, two = Destination(tmp_path), Destination(tmp_path)
    cp = Checkpoint(tmp_path, MIRROR, record, OpenFence(), every_s=3600, every_n=2)
    record["a"] = _entry(1)
    cp.published(one)
    record["b"] = _entry(2)
    cp.published(two)
    await _until(lambda: cp.saves == 1)
    assert one.flushes == [set()] and two.flushes == [set()]  # flushed, then saved
    assert set(await _saved(tmp_path)) == {"a", "b"}
    await cp.close()


async def test_checkpoint_keeps_entries_of_keys_the_pass_will_drop(tmp_path: Path) -> None:
    """Only the end of the pass drops what the listing no longer has."""
    record: Record = {"gone": _entry(0)}
    await published.save(tmp_path, MIRROR, record)
    cp = Checkpoint(tmp_path, MIRROR, record, OpenFence(), every_s=3600, every_n=1)
    record["new"] = _entry(1)
    cp.published(Destination(tmp_path))
    await _until(lambda: cp.saves == 1)
    assert set(await _saved(tmp_path)) == {"gone", "new"}
    await cp.close()


async def test_checkpoint_close_leaves_waiting_entries_for_the_next_save(
        tmp_path: Path) -> None:
    record: Record = {}
    cp = Checkpoint(tmp_path, MIRROR, record, OpenFence(), every_s=3600, every_n=10)
    record["a"] = _entry(1)
    cp.published(Destination(tmp_path))
    await cp.close()
    assert cp.saves == 0 and cp.waiting == 1
    assert not published.path_for(tmp_path, MIRROR).exists()
    record["b"] = _entry(2)  # the pass's next transfer
    cp.published(Destination(tmp_path))
    assert await cp.save()
    assert set(await _saved(tmp_path)) == {"a", "b"}


async def test_checkpoint_writes_nothing_once_the_lease_is_lost(tmp_path: Path) -> None:
    record: Record = {}
    cp = Checkpoint(tmp_path, MIRROR, record, CountdownFence(0), every_s=3600, every_n=1)
    record["a"] = _entry(1)
    cp.published(Destination(tmp_path))
    await asyncio.sleep(0.1)
    assert not published.path_for(tmp_path, MIRROR).exists()
    record["b"] = _entry(2)
    with pytest.raises(LeaseLost):  # the next publication learns it
        cp.published(Destination(tmp_path))
    await cp.close()


async def test_checkpoint_spaces_saves_by_what_one_costs(tmp_path: Path) -> None:
    """A save that takes long (a huge record) is not repeated at every batch."""
    ticks = iter(range(1_000_000))
    record: Record = {}
    cp = Checkpoint(tmp_path, MIRROR, record, OpenFence(), every_s=0.0, every_n=1,
                    clock=lambda: float(next(ticks)) * 1000)  # each reading 1000 s later
    record["a"] = _entry(1)
    cp.published(Destination(tmp_path))
    await _until(lambda: cp.saves == 1)
    record["b"] = _entry(2)
    cp.published(Destination(tmp_path))
    await asyncio.sleep(0.1)
    assert cp.saves == 1  # the last save "took" 1000 s: the next waits 10 times that
    await cp.close()
