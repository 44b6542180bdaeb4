"""One contract for every store (volume, moto, rclone, SeaweedFS): stage hides, publish shows,
fenced."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from syncd.config import S3Config, TransferConfig
from syncd.errors import LeaseLost, SourceChanged, StoreError, UnsafeKey
from syncd.listing import Entry
from syncd.stores.base import OpenFence, Store
from syncd.stores.s3 import S3Store
from syncd.stores.volume import VolumeStore
from syncd.verify import OWN_ALGO, hash_bytes
from tests.mirrors import MiB
from tests.sources import BytesSource, RevokedFence

KEYS = ["a.txt", "nested/deeper/b.bin", "sp ace/\u00fcnicode \u6a21\u578b.json", "empty"]


TRANSFER = TransferConfig(part_size=5 * MiB, multipart_threshold=5 * MiB, concurrency=4)


@contextlib.asynccontextmanager
async def _store(kind: str, request, tmp_path: Path) -> AsyncIterator[Store]:
    if kind == "volume":
        root = tmp_path / "vol"
        root.mkdir()
        store = VolumeStore(root, part_size=5 * MiB, multipart_threshold=5 * MiB)
        await store.check(writable=True)
        yield store
        return
    server = request.getfixturevalue(f"{kind}_server")
    server.ensure_running()
    bucket = f"c-{os.urandom(6).hex()}"
    server.client().create_bucket(Bucket=bucket)
    s3cfg = S3Config(endpoint_url=server.endpoint_url, addressing_style="path")
    async with S3Store(s3cfg, TRANSFER, bucket, "pre/fix/") as s3:
        yield s3


@pytest.fixture(params=["volume", "moto", "rclone", "seaweedfs"])
async def store(request, tmp_path):
    async with _store(request.param, request, tmp_path) as s:
        yield s


async def _put(store: Store, key: str, data: bytes) -> Entry:
    staged = await store.stage(BytesSource(key, data), frozenset())
    return await store.publish(staged, OpenFence())


async def _read(store: Store, entry: Entry) -> bytes:
    source = await store.open(entry)
    return b"".join([c async for c in source.read()])


async def test_store_publish_makes_staged_bytes_visible_with_their_checksum(store):
    payloads = {k: os.urandom(1000 + i) for i, k in enumerate(KEYS)}
    payloads["empty"] = b""
    for key, data in payloads.items():
        entry = await _put(store, key, data)
        assert entry.size == len(data)
    listing = await store.list()
    assert sorted(listing.entries) == sorted(KEYS)
    for key, data in payloads.items():
        assert await _read(store, listing.entries[key]) == data
        claim = await store.checksum(listing.entries[key], OWN_ALGO)
        assert claim is not None
        assert claim.value == hash_bytes(data, (claim.algo,))[claim.algo]


async def test_store_staged_but_unpublished_is_invisible_and_discard_leaves_nothing(store):
    for data in (b"small", os.urandom(11 * MiB)):
        staged = await store.stage(BytesSource("hidden.bin", data), frozenset())
        assert "hidden.bin" not in (await store.list()).entries
        await store.discard(staged)
        assert "hidden.bin" not in (await store.list()).entries


async def test_store_publish_refuses_under_a_revoked_fence(store):
    for data in (b"small", os.urandom(6 * MiB)):
        staged = await store.stage(BytesSource("fenced.bin", data), frozenset())
        with pytest.raises(LeaseLost):
            await store.publish(staged, RevokedFence())
        await store.discard(staged)
    assert "fenced.bin" not in (await store.list()).entries


async def test_store_large_object_moves_in_parts_and_round_trips(store):
    data = os.urandom(16 * MiB + 3)
    entry = await _put(store, "big/shard.bin", data)
    assert entry.size == len(data)
    listed = (await store.list()).entries["big/shard.bin"]
    assert await _read(store, listed) == data
    source = await store.open(listed)
    assert b"".join([c async for c in source.read(5 * MiB - 1, 5 * MiB + 2)]) == data[
        5 * MiB - 1:5 * MiB + 2]


async def test_store_delete_removes_only_named_keys(store):
    for key in ("d/1", "d/2", "keep"):
        await _put(store, key, key.encode())
    await store.delete(["d/1", "d/2"], OpenFence())
    assert sorted((await store.list()).entries) == ["keep"]
    with pytest.raises(LeaseLost):
        await store.delete(["keep"], RevokedFence())
    assert sorted((await store.list()).entries) == ["keep"]


async def test_volume_refuses_unsafe_keys_and_symlinks_out_of_root(tmp_path):
    root = tmp_path / "vol"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside)
    (outside / "secret").write_bytes(b"s")
    (root / "file-link").symlink_to(outside / "secret")
    store = VolumeStore(root, part_size=5 * MiB, multipart_threshold=5 * MiB)
    await store.check(writable=True)

    listing = await store.list()
    assert set(listing.entries) == set()
    assert set(listing.refused) == {"link", "file-link"}
    for key in ("../x", "/abs", "a\\b", ".syncd/state/x"):
        staged = await store.stage(BytesSource("tmp", b"x"), frozenset())
        staged.key = key
        with pytest.raises(UnsafeKey):
            await store.publish(staged, OpenFence())
        await store.discard(staged)
    staged = await store.stage(BytesSource("link/evil", b"x"), frozenset())
    with pytest.raises(StoreError, match=r"a symlink \(not followed\) stands where"):
        await store.publish(staged, OpenFence())
    await store.discard(staged)
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert not list((root / ".syncd" / "tmp").iterdir())


@pytest.mark.parametrize("size", [1000, 11 * MiB])
async def test_push_source_changed_during_upload_is_not_published(s3, bucket, tmp_path, size):
    root = tmp_path / "vol"
    root.mkdir()
    path = root / "ckpt.bin"
    path.write_bytes(os.urandom(size))
    volume = VolumeStore(root, part_size=5 * MiB, multipart_threshold=5 * MiB)
    entry = (await volume.list()).entries["ckpt.bin"]
    s3cfg = S3Config(endpoint_url=s3.endpoint_url, addressing_style="path")
    async with S3Store(s3cfg, TRANSFER, bucket, "") as store:
        source = await volume.open(entry)

        class Mutating:
            """Rewrites the file once the first bytes have been read."""

            key, size = source.key, source.size

            async def read(self, start=0, end=None):
                first = True
                async for chunk in source.read(start, end):
                    if first and start == 0:
                        with path.open("r+b") as fh:
                            fh.write(b"\x00" * 64)
                        os.utime(path, ns=(1, 1))
                        first = False
                    yield chunk

            vouched, digest, identity = source.vouched, source.digest, source.identity

        with pytest.raises(SourceChanged):
            staged = await store.stage(Mutating(), frozenset())
            try:
                await source.identity()
            finally:
                await store.discard(staged)
        assert "ckpt.bin" not in (await store.list()).entries
        if s3.name == "moto":  # rclone does not implement ListMultipartUploads
            uploads = s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
            assert uploads == []
