"""Free space on a real, small filesystem (a tmpfs; mounting needs root, as the tests run):
an object that cannot fit fails alone before a byte of it is downloaded (TooLarge), a volume
with nothing left above its floor is full (NoSpace), and partial downloads are kept for the
next run only while the volume can spare their space (issue 18)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from syncd.errors import NoSpace, TooLarge
from syncd.stores.base import OpenFence, Source, Staged
from syncd.stores.resume import read_record
from syncd.stores.volume import VolumeStore
from tests.lease.full_disk import fill, small_tmpfs
from tests.sources import BytesSource
from tests.stores.taps import Tap, until

MiB = 1 << 20
PART = 5 * MiB


@contextlib.contextmanager
def _volume(tmp_path: Path, size: str, **kw: Any) -> Iterator[VolumeStore]:
    with small_tmpfs(tmp_path / "vol", size) as root:
        yield VolumeStore(root, part_size=PART, multipart_threshold=PART, **kw)


async def _origin(tmp_path: Path, key: str, data: bytes) -> Source:
    """A volume file as the source: it names its version, so its download may resume."""
    origin = VolumeStore(tmp_path, part_size=PART, multipart_threshold=PART)
    (tmp_path / key).write_bytes(data)
    return await origin.open((await origin.list()).entries[key])


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@pytest.mark.parametrize("size", [12 * MiB, 6 * MiB, 3 * MiB])  # parts, one stream, small
async def test_volume_refuses_an_object_too_large_for_the_free_space_before_reading_it(
        tmp_path, size):
    with _volume(tmp_path, "8m", min_free_bytes=6 * MiB) as store:  # ~2 MiB to spare
        await store.check(writable=True)
        source = Tap(await _origin(tmp_path, "big.bin", os.urandom(size)))
        with pytest.raises(TooLarge, match=r"big\.bin") as caught:
            await store.stage(source, frozenset())
        assert caught.value.key == "big.bin"
        assert "min_free_bytes" in str(caught.value)
        assert source.read_bytes == 0, "refused before downloading"
        assert list(store.tmp_dir.iterdir()) == []

        small = os.urandom(100_000)  # what fits still moves
        staged = await store.stage(BytesSource("small.bin", small), frozenset())
        await store.publish(staged, OpenFence())
        assert (store.root / "small.bin").read_bytes() == small


async def test_volume_with_nothing_left_above_its_floor_is_full(tmp_path):
    with _volume(tmp_path, "1m") as store:
        await store.check(writable=True)
        fill(store.root)
        with pytest.raises(NoSpace):
            await store.stage(BytesSource("a.bin", b"x" * 1000), frozenset())
        empty = await store.stage(BytesSource("empty.bin", b""), frozenset())
        await store.publish(empty, OpenFence())  # needs no space: still written
        assert (store.root / "empty.bin").read_bytes() == b""


async def _interrupted(store: VolumeStore, tmp_path: Path) -> tuple[asyncio.Task[Staged], Tap]:
    """A 12 MiB download running with its first part saved in its sidecar, the rest held."""
    source = Tap(await _origin(tmp_path, "shard.bin", os.urandom(12 * MiB)), hold_from=PART)
    task = asyncio.create_task(store.stage(source, frozenset()))
    await until(lambda: _saved_parts(store))
    return task, source


def _saved_parts(store: VolumeStore) -> int:
    sidecars = list(store.tmp_dir.glob("resume-*.json"))
    record = read_record(sidecars[0]) if sidecars else None
    return len((record or {}).get("parts", {}))


async def _cancelled(task: asyncio.Task[Staged]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_volume_keeps_a_cancelled_partial_download_while_space_allows(tmp_path):
    with _volume(tmp_path, "32m") as store:
        await store.check(writable=True)
        task, _ = await _interrupted(store, tmp_path)
        await _cancelled(task)
        assert len(list(store.tmp_dir.glob("resume-*"))) == 2, "file and sidecar kept"


async def test_volume_drops_cancelled_partial_downloads_once_the_volume_ran_out(tmp_path):
    """Another writer fills the volume; the next download fails with NoSpace, which stops
    the pass and cancels the rest: their partial files must not keep holding the space."""
    with _volume(tmp_path, "32m") as store:
        await store.check(writable=True)
        task, _ = await _interrupted(store, tmp_path)
        filler = fill(store.root)
        with pytest.raises(NoSpace):
            await store.stage(BytesSource("next.bin", os.urandom(3 * MiB)), frozenset())
        await _cancelled(task)
        assert list(store.tmp_dir.iterdir()) == []
        filler.unlink()


async def test_volume_drops_a_staged_partial_whose_publication_failed_below_the_floor(
        tmp_path):
    """A complete partial download that only missed its publication stays for the next run,
    unless keeping it would leave the volume below min_free_bytes."""
    with _volume(tmp_path, "32m", min_free_bytes=8 * MiB) as store:
        await store.check(writable=True)
        source = await _origin(tmp_path, "shard.bin", os.urandom(12 * MiB))
        staged = await store.stage(source, frozenset())
        hog = store.root / "worker-output.bin"
        hog.write_bytes(b"\0" * (_free(store.root) - 4 * MiB))  # below the floor now
        with contextlib.suppress(asyncio.CancelledError):
            try:
                raise asyncio.CancelledError
            except asyncio.CancelledError:
                await store.discard(staged)
                raise
        assert list(store.tmp_dir.iterdir()) == []


async def test_volume_resumes_a_kept_partial_that_already_holds_its_space(tmp_path):
    """A kept partial download is preallocated: resuming it needs no more free space, so
    it is not refused as too large although the volume could not take it anew."""
    with _volume(tmp_path, "16m") as store:
        await store.check(writable=True)
        task, source = await _interrupted(store, tmp_path)
        await _cancelled(task)
        assert _free(store.root) < source.size
        again = Tap(source.inner)
        staged = await store.stage(again, frozenset())
        assert staged.resumed >= PART and again.read_bytes <= source.size - PART
        await store.publish(staged, OpenFence())
        assert (store.root / "shard.bin").read_bytes() == (tmp_path / "shard.bin").read_bytes()


async def test_volume_restarts_a_stale_partial_in_the_space_it_held(tmp_path):
    """The source changed since the partial was kept: the download starts over in the same
    file, whose old blocks count as free (the volume could not take the file twice)."""
    with _volume(tmp_path, "16m") as store:
        await store.check(writable=True)
        task, _ = await _interrupted(store, tmp_path)
        await _cancelled(task)
        newer = os.urandom(12 * MiB)
        source = await _origin(tmp_path, "shard.bin", newer)  # a new mtime: a new version
        staged = await store.stage(source, frozenset())
        assert staged.resumed == 0
        await store.publish(staged, OpenFence())
        assert (store.root / "shard.bin").read_bytes() == newer
