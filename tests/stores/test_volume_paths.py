"""Volume store primitives for paths that change between file and directory (issue 18): a
delete removes the directories it emptied, a publish replaces an empty directory, and what
cannot be replaced safely is a per-key "path conflict"."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from syncd.errors import LeaseLost, StoreError
from syncd.stores.base import Fence, OpenFence
from syncd.stores.volume import VolumeStore
from tests.sources import BytesSource, RevokedFence

MiB = 1 << 20


class CountdownFence:
    """A lease that is lost after `checks` fence checks."""

    generation = 3

    def __init__(self, checks: int) -> None:
        self.left = checks

    def check(self) -> None:
        if self.left <= 0:
            raise LeaseLost("lease lost")
        self.left -= 1


async def _store(tmp_path: Path) -> VolumeStore:
    root = tmp_path / "vol"
    root.mkdir()
    store = VolumeStore(root, part_size=5 * MiB, multipart_threshold=5 * MiB)
    await store.check(writable=True)
    return store


async def _put(store: VolumeStore, key: str, data: bytes, fence: Fence | None = None) -> None:
    staged = await store.stage(BytesSource(key, data), frozenset())
    try:
        await store.publish(staged, fence or OpenFence())
    except BaseException:
        await store.discard(staged)
        raise


async def test_volume_delete_removes_the_directories_it_emptied_up_to_the_root(tmp_path):
    store = await _store(tmp_path)
    await _put(store, "a/b/c/deep.bin", b"deep")
    await _put(store, "a/keep.bin", b"keep")
    await store.delete(["a/b/c/deep.bin"], OpenFence())
    assert not (store.root / "a" / "b").exists()
    assert (store.root / "a" / "keep.bin").read_bytes() == b"keep"

    await store.delete(["a/keep.bin"], OpenFence())
    assert sorted(p.name for p in store.root.iterdir()) == [".syncd"]
    assert (store.root / ".syncd" / "tmp").is_dir()


async def test_volume_file_replaces_a_directory_once_its_files_are_deleted(tmp_path):
    """The planner's order: the deletes that clear a path, then the copy that needs it."""
    store = await _store(tmp_path)
    await _put(store, "model/weights.bin", b"old layout")
    await store.delete(["model/weights.bin"], OpenFence())
    await _put(store, "model", b"a file now")
    assert (store.root / "model").read_bytes() == b"a file now"

    await store.delete(["model"], OpenFence())
    await _put(store, "model/weights.bin", b"a directory again")
    assert (store.root / "model" / "weights.bin").read_bytes() == b"a directory again"


@pytest.mark.parametrize("size", [100, 3 * MiB, 6 * MiB])  # inline, one stream, parts
async def test_volume_publish_replaces_an_empty_directory_at_the_key(tmp_path, size):
    store = await _store(tmp_path)
    (store.root / "x" / "empty").mkdir(parents=True)
    data = os.urandom(size)
    await _put(store, "x/empty", data)
    assert (store.root / "x" / "empty").read_bytes() == data
    assert list(store.tmp_dir.iterdir()) == []


async def test_volume_publish_over_a_non_empty_directory_is_a_path_conflict(tmp_path):
    store = await _store(tmp_path)
    (store.root / "x").mkdir()
    (store.root / "x" / "worker-output.txt").write_bytes(b"not ours to remove")
    with pytest.raises(StoreError, match="path conflict") as caught:
        await _put(store, "x", b"file")
    assert caught.value.key == "x"
    assert (store.root / "x" / "worker-output.txt").read_bytes() == b"not ours to remove"
    assert list(store.tmp_dir.iterdir()) == []


@pytest.mark.parametrize("blocker", ["file", "symlink"])
async def test_volume_publish_under_a_file_or_symlink_is_a_path_conflict(tmp_path, blocker):
    store = await _store(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    if blocker == "file":
        (store.root / "a").write_bytes(b"a file where a directory must go")
    else:
        (store.root / "a").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StoreError, match="path conflict") as caught:
        await _put(store, "a/b/c.bin", b"data")
    assert caught.value.key == "a/b/c.bin"
    assert list((tmp_path / "elsewhere").iterdir()) == []
    assert list(store.tmp_dir.iterdir()) == []


async def test_volume_publish_leaves_an_empty_directory_when_the_fence_refuses(tmp_path):
    store = await _store(tmp_path)
    (store.root / "x").mkdir()
    with pytest.raises(LeaseLost):
        await _put(store, "x", b"file", RevokedFence())
    assert (store.root / "x").is_dir()
    # lost between the failed rename and the removal of the directory in the way
    with pytest.raises(LeaseLost):
        await _put(store, "x", b"file", CountdownFence(2))
    assert (store.root / "x").is_dir()


async def test_volume_delete_prunes_no_directory_once_the_lease_is_lost(tmp_path):
    store = await _store(tmp_path)
    await _put(store, "a/b/f.bin", b"f")
    with pytest.raises(LeaseLost):
        await store.delete(["a/b/f.bin"], RevokedFence())
    assert (store.root / "a" / "b" / "f.bin").exists()
    with pytest.raises(LeaseLost):  # the file goes, then the lease: both directories stay
        await store.delete(["a/b/f.bin"], CountdownFence(1))
    assert not (store.root / "a" / "b" / "f.bin").exists()
    assert (store.root / "a" / "b").is_dir()


async def test_volume_delete_never_prunes_through_a_symlink(tmp_path):
    """A directory swapped for a symlink is not followed: nothing outside is touched."""
    store = await _store(tmp_path)
    outside = tmp_path / "outside"
    (outside / "empty").mkdir(parents=True)
    (store.root / "a").symlink_to(outside)
    await store.delete(["a/empty/gone.bin"], OpenFence())
    assert (outside / "empty").is_dir()
    assert (store.root / "a").is_symlink()


async def test_volume_delete_of_a_key_under_a_file_is_already_done(tmp_path):
    store = await _store(tmp_path)
    (store.root / "a").write_bytes(b"a file now")
    await store.delete(["a/b.bin"], OpenFence())
    assert (store.root / "a").read_bytes() == b"a file now"


async def test_volume_at_store_prunes_up_to_its_own_root_inside_syncd(tmp_path):
    """An artifact version's store lives under `.syncd/`: its deletes stop at its root."""
    store = await _store(tmp_path)
    version_root = store.root / ".syncd" / "artifacts" / "m" / "v1"
    version_root.mkdir(parents=True)
    version = store.at(version_root)
    await _put(version, "sub/f.bin", b"f")
    await version.delete(["sub/f.bin"], OpenFence())
    assert version_root.is_dir() and list(version_root.iterdir()) == []
