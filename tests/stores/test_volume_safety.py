"""Volume store defences: syncd's own directories, many tiny chunks, small files staged in
memory."""

from __future__ import annotations

import os

import pytest

from syncd.errors import LeaseLost, StoreError
from syncd.listing import Algo
from syncd.stores.base import OpenFence
from syncd.stores.staging import hash_and_write
from syncd.stores.volume import VolumeStore
from syncd.stores.volume_download import INLINE_MAX
from syncd.verify import OWN_ALGO, Digest, hash_bytes
from tests.sources import BytesSource, RevokedFence


@pytest.mark.parametrize("planted", [".syncd", ".syncd/tmp", ".syncd/state"])
async def test_volume_refuses_symlinked_own_directory_and_touches_nothing_outside(
    tmp_path, planted
):
    root, outside = tmp_path / "vol", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "precious.bin").write_bytes(b"keep me")
    link = root / planted
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside)
    store = VolumeStore(root, part_size=5 << 20, multipart_threshold=5 << 20)
    with pytest.raises(StoreError, match="not a directory"):
        await store.check(writable=True)
    assert sorted(p.name for p in outside.iterdir()) == ["precious.bin"]


async def test_a_holder_that_lost_its_lease_writes_nothing_when_proving_the_volume_writable(
    tmp_path,
):
    """The writability probe creates syncd's directories and a probe file: writes to the
    target like any other, so they wait for the fence."""
    store = VolumeStore(tmp_path, part_size=5 << 20, multipart_threshold=5 << 20)
    with pytest.raises(LeaseLost):
        await store.check(writable=True, fence=RevokedFence())
    assert list(tmp_path.iterdir()) == []
    await store.check(writable=True, fence=OpenFence())
    assert sorted(p.name for p in (tmp_path / ".syncd").iterdir()) == ["state", "tmp"]


def test_staging_writes_more_chunks_than_iov_max(tmp_path):
    chunks = [os.urandom(7) for _ in range(3000)]  # e.g. tiny HTTP chunks from a proxy
    path = tmp_path / "f"
    fd = os.open(path, os.O_CREAT | os.O_RDWR)
    try:
        digest = Digest((Algo.CRC64NVME,))
        hash_and_write(fd, chunks, 0, digest)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    assert path.read_bytes() == data
    assert digest.results() == hash_bytes(data, (Algo.CRC64NVME,))


async def test_small_files_are_written_only_at_publication(tmp_path):
    """A file up to INLINE_MAX is staged in memory and written, fsynced and renamed by
    publish: one that is discarded (failed verification) never touches the disk, and one the
    fence refuses leaves no staging file behind."""
    root = tmp_path / "vol"
    root.mkdir()
    store = VolumeStore(root, part_size=5 << 20, multipart_threshold=5 << 20)
    await store.check(writable=True)
    tmp = root / ".syncd" / "tmp"
    data = os.urandom(INLINE_MAX)
    staged = await store.stage(BytesSource("a/small.bin", data), frozenset())
    assert staged.checksums[OWN_ALGO] == hash_bytes(data, (OWN_ALGO,))[OWN_ALGO]
    assert list(tmp.iterdir()) == []  # nothing written yet
    await store.discard(staged)
    assert list(tmp.iterdir()) == []

    staged = await store.stage(BytesSource("a/small.bin", data), frozenset())
    with pytest.raises(LeaseLost):
        await store.publish(staged, RevokedFence())
    await store.discard(staged)
    assert list(tmp.iterdir()) == []
    assert not (root / "a" / "small.bin").exists()

    staged = await store.stage(BytesSource("a/small.bin", data), frozenset())
    entry = await store.publish(staged, OpenFence())
    assert (root / "a" / "small.bin").read_bytes() == data
    assert entry.size == len(data)
    assert list(tmp.iterdir()) == []
