"""Downloads written with O_DIRECT: every size lands byte-exact, hashes match, and a
filesystem that refuses O_DIRECT (tmpfs) gets the same bytes through the page cache.

All on real filesystems: pytest's tmp directory (ext4 here and in CI, which takes
O_DIRECT) and a ramfs mounted for the test (which refuses it; tmpfs takes O_DIRECT since
Linux 6.6). Mounting needs root, as CI runs.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from syncd.listing import Algo
from syncd.stores.base import OpenFence
from syncd.stores.direct import (
    ALIGN,
    DIRECT_MIN,
    Buffers,
    aligned,
    can_write_direct,
    open_direct,
    read_direct,
    set_direct,
    write_direct,
)
from syncd.stores.volume import VolumeStore
from syncd.verify import OWN_ALGO, hash_bytes
from tests.mirrors import MiB
from tests.sources import BytesSource

PART = 5 * MiB


def _store(root: Path, *, part_size: int = PART, multipart_threshold: int = PART,
           direct_io: bool = True) -> VolumeStore:
    root.mkdir(exist_ok=True)
    return VolumeStore(root, part_size=part_size, multipart_threshold=multipart_threshold,
                       direct_io=direct_io)


async def _copy(store: VolumeStore, key: str, data: bytes, *, chunk: int = 256 * 1024,
                vouch: Algo | None = None) -> dict[Algo, str]:
    await store.check(writable=True)
    staged = await store.stage(BytesSource(key, data, chunk=chunk, vouch=vouch), frozenset())
    sums = dict(staged.checksums)
    await store.publish(staged, OpenFence())
    return sums


@pytest.fixture
def ramfs_dir(tmp_path):
    """A ramfs directory, which refuses O_DIRECT: the fallback path."""
    path = tmp_path / "ramfs"
    path.mkdir()
    subprocess.run(["mount", "-t", "ramfs", "ramfs", str(path)], check=True)
    try:
        probe = path / "probe"
        probe.write_bytes(b"x")
        assert open_direct(str(probe)) is None, "ramfs took O_DIRECT"
        probe.unlink()
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_alignment_rules():
    assert [aligned(n) for n in (0, 1, ALIGN - 1, ALIGN, ALIGN + 1)] == [0, ALIGN, ALIGN,
                                                                        ALIGN, 2 * ALIGN]
    assert can_write_direct(0, 8 * ALIGN, 100 * ALIGN)
    assert can_write_direct(8 * ALIGN, 8 * ALIGN + 7, 8 * ALIGN + 7)  # the file's tail
    assert not can_write_direct(8 * ALIGN, 9 * ALIGN + 7, 20 * ALIGN)  # mid-file, unaligned
    assert not can_write_direct(3, 8 * ALIGN, 20 * ALIGN)


def test_direct_round_trip_and_padding(tmp_path):
    path = tmp_path / "f"
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    dfd = open_direct(str(path))
    assert dfd is not None, "the test filesystem must take O_DIRECT"
    buffers = Buffers(3 * ALIGN, keep=1)
    buf = buffers.take()
    data = os.urandom(2 * ALIGN + 100)
    buf[:len(data)] = data
    assert write_direct(dfd, buf, len(data), 0)
    assert os.fstat(fd).st_size == 3 * ALIGN  # padded to a block, zeros after the data
    back = buffers.take()
    assert read_direct(dfd, back, 0, len(data)) == len(data)
    assert back[:len(data)] == data
    assert back[len(data):3 * ALIGN] == bytes(3 * ALIGN - len(data))
    os.ftruncate(fd, len(data))
    assert read_direct(dfd, back, 0, 3 * ALIGN) == len(data)  # short read at the end
    buffers.give(buf)
    buffers.give(back)  # beyond `keep`: unmapped, not kept
    assert buffers.take() is buf
    assert not write_direct(dfd, buf, ALIGN, 1)  # unaligned offset: refused, not raised
    os.close(dfd)
    os.close(fd)
    assert path.read_bytes() == data


def test_a_buffer_still_in_use_is_not_unmapped():
    """A failed write's error can keep the buffer exported; handing it back to a full pool
    must not raise over the original error."""
    buffers = Buffers(ALIGN, keep=0)
    buf = buffers.take()
    view = memoryview(buf)
    buffers.give(buf)  # exported: left to the garbage collector, no BufferError
    assert bytes(view[:1]) == b"\x00"
    view.release()


def test_set_direct_is_refused_on_ramfs(ramfs_dir, tmp_path):
    for directory, expected in ((ramfs_dir, False), (tmp_path, True)):
        fd = os.open(directory / "f", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            assert set_direct(fd, True) is expected
        finally:
            os.close(fd)


SIZES = [DIRECT_MIN - 1, DIRECT_MIN, DIRECT_MIN + 1, 2 * MiB, 2 * MiB + 1,
         PART - 1, PART, PART + 1, 3 * PART + ALIGN - 1, 3 * PART + 2 * MiB]


@pytest.mark.parametrize("size", SIZES)
async def test_every_size_lands_exact(tmp_path, size):
    store = _store(tmp_path / "vol")
    data = os.urandom(size)
    sums = await _copy(store, "d/blob", data, chunk=100_003)  # chunks straddle buffers
    assert (tmp_path / "vol" / "d" / "blob").read_bytes() == data
    assert sums[OWN_ALGO] == hash_bytes(data, (OWN_ALGO,))[OWN_ALGO]
    assert store.writes_direct, "the direct path was not used"
    assert not list((tmp_path / "vol" / ".syncd" / "tmp").iterdir())


@pytest.mark.parametrize("algo", [Algo.MD5, Algo.SHA256])
async def test_in_order_hash_reads_back_direct(tmp_path, algo):
    """MD5 and SHA cannot be combined from parts: the file is hashed in order, read back
    with O_DIRECT (the bytes are not in the page cache)."""
    store = _store(tmp_path / "vol")
    data = os.urandom(4 * PART + 12345)
    sums = await _copy(store, "model.bin", data, vouch=algo)
    expected = hashlib.new(algo.value, data)
    assert sums[algo] == (expected.hexdigest() if algo is Algo.MD5
                          else hash_bytes(data, (algo,))[algo])
    assert (tmp_path / "vol" / "model.bin").read_bytes() == data


@pytest.mark.parametrize("size", [DIRECT_MIN + 1, 3 * PART + 17])
async def test_ramfs_falls_back_to_the_page_cache(ramfs_dir, size):
    store = _store(ramfs_dir / "vol")
    data = os.urandom(size)
    sums = await _copy(store, "x/y.bin", data, vouch=Algo.MD5)
    assert (ramfs_dir / "vol" / "x" / "y.bin").read_bytes() == data
    assert sums[Algo.MD5] == hashlib.md5(data).hexdigest()
    assert not store.writes_direct  # noticed once, not tried again


async def test_unaligned_part_size_writes_buffered_and_exact(tmp_path):
    """A part size that is not a multiple of the block size cannot be written direct
    (parts would pad over each other); the bytes still land exact."""
    store = _store(tmp_path / "vol", part_size=PART + 1, multipart_threshold=PART)
    data = os.urandom(3 * PART + 999)
    sums = await _copy(store, "odd.bin", data, vouch=Algo.MD5)
    assert (tmp_path / "vol" / "odd.bin").read_bytes() == data
    assert sums[Algo.MD5] == hashlib.md5(data).hexdigest()


async def test_direct_io_off(tmp_path):
    store = _store(tmp_path / "vol", direct_io=False)
    data = os.urandom(PART + 3)
    await _copy(store, "f", data)
    assert (tmp_path / "vol" / "f").read_bytes() == data
    assert not store.writes_direct
