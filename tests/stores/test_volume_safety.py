"""Volume store defences found in review: syncd's own directories, and many tiny chunks."""

from __future__ import annotations

import os

import pytest

from syncd.errors import StoreError
from syncd.listing import Algo
from syncd.stores.staging import hash_and_write
from syncd.stores.volume import VolumeStore
from syncd.verify import Digest, hash_bytes


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
