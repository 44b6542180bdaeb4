"""Large downloads through the native engine (awscrt's S3 client), on moto, rclone and
SeaweedFS: the bytes and checksums are the source's, a composite claim is checked per part,
an interrupted download resumes on syncd's own path (at once when the engine itself gives
up), a version that moves is never staged, and `native = false` keeps syncd's own path."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig as Boto3Transfer

from syncd.config import S3Config, TransferConfig
from syncd.errors import Interrupted, NativeError, SourceChanged
from syncd.listing import Algo, Entry
from syncd.stores.base import OpenFence, Sink, Source, Stream, native_stream
from syncd.stores.s3 import S3Store
from syncd.stores.volume import VolumeStore
from syncd.verify import OWN_ALGO, hash_bytes, mismatch
from tests.mirrors import MiB
from tests.stores.taps import until

PART = 8 * MiB
SIZE = 3 * PART + 4321  # four parts, the last one short
TRANSFER = TransferConfig(part_size=PART, multipart_threshold=PART, concurrency=4, native=True)


class Watched:
    """A real source whose native stream is watched: the bytes its sink saw, and an error
    raised from the sink once `fail_after` bytes went through (an engine that broke)."""

    def __init__(self, inner: Source, fail_after: int | None = None,
                 error: type[Interrupted] = Interrupted) -> None:
        self.inner = inner
        self.key, self.size = inner.key, inner.size
        self.native_bytes = 0
        self.own_bytes = 0
        self.fail_after = fail_after
        self.error = error

    async def read(self, start: int = 0, end: int | None = None) -> Any:
        async for chunk in self.inner.read(start, end):
            self.own_bytes += len(chunk)
            yield chunk

    async def vouched(self) -> Any:
        return await self.inner.vouched()

    async def digest(self, algo: Algo) -> Any:
        return await self.inner.digest(algo)

    async def identity(self) -> Entry:
        return await self.inner.identity()

    def boundaries(self) -> Any:
        return self.inner.boundaries()  # type: ignore[attr-defined]

    def native(self) -> Stream | None:
        stream = native_stream(self.inner)
        if stream is None:
            return None

        async def watched(sink: Sink) -> None:
            def counting(chunk: memoryview, offset: int) -> None:
                if self.fail_after is not None and self.native_bytes >= self.fail_after:
                    raise self.error("the engine broke (test)")
                sink(chunk, offset)
                self.native_bytes += len(chunk)
            await stream(counting)

        return watched


def _store(server: Any, bucket: str, **transfer: Any) -> S3Store:
    config = TransferConfig(**{**TRANSFER.model_dump(), **transfer})
    return S3Store(S3Config(endpoint_url=server.endpoint_url, addressing_style="path"), config,
                   bucket, "m/")


async def _volume(tmp_path: Path) -> VolumeStore:
    root = tmp_path / "vol"
    root.mkdir(exist_ok=True)
    volume = VolumeStore(root, part_size=PART, multipart_threshold=PART)
    await volume.check(writable=True)
    return volume


async def _shard(server: Any, bucket: str, tmp_path: Path) -> tuple[bytes, VolumeStore]:
    """One object uploaded as boto3's upload_file does by default (8 MiB parts with a
    composite CRC32), and an empty, checked volume."""
    data = os.urandom(SIZE)
    src = tmp_path / "shard.bin"
    src.write_bytes(data)
    client = server.client(request_checksum_calculation="when_supported")
    client.upload_file(str(src), bucket, "m/shard.bin", Config=Boto3Transfer())
    return data, await _volume(tmp_path)


async def _opened(src: S3Store, fail_after: int | None = None,
                  error: type[Interrupted] = Interrupted) -> Watched:
    entry = (await src.list()).entries["shard.bin"]
    return Watched(await src.open(entry), fail_after, error)


async def test_native_download_stages_the_sources_bytes_verified(s3, bucket, tmp_path):
    data, volume = await _shard(s3, bucket, tmp_path)
    async with _store(s3, bucket) as src:
        source = await _opened(src)
        staged = await volume.stage(source, frozenset())
        claim = await source.vouched()
        await volume.publish(staged, OpenFence())
    assert source.native_bytes == SIZE  # the engine carried every byte
    assert claim is not None and mismatch(claim, staged.checksums, staged.parts) is None
    assert staged.checksums[OWN_ALGO] == hash_bytes(data, (OWN_ALGO,))[OWN_ALGO]
    assert (volume.root / "shard.bin").read_bytes() == data
    assert list(volume.tmp_dir.iterdir()) == []


async def test_native_download_checks_an_md5_of_part_md5s_etag_per_part(s3, bucket, tmp_path):
    """A multipart upload sent without checksums (older SDKs, rclone, s5cmd): its ETag is
    the MD5 of the parts' MD5s, each part hashed on its lane (rclone serve s3 recomputes a
    whole-file MD5 instead: hashed in order)."""
    data = os.urandom(SIZE)
    src = tmp_path / "shard.bin"
    src.write_bytes(data)
    client = s3.client(request_checksum_calculation="when_required")
    client.upload_file(str(src), bucket, "m/shard.bin", Config=Boto3Transfer())
    volume = await _volume(tmp_path)
    async with _store(s3, bucket) as store:
        source = await _opened(store)
        staged = await volume.stage(source, frozenset())
        claim = await source.vouched()
        await volume.publish(staged, OpenFence())
    assert source.native_bytes == SIZE
    assert claim is not None and claim.algo == Algo.MD5
    assert mismatch(claim, staged.checksums, staged.parts) is None
    assert len(staged.parts) == (0 if s3.name == "rclone" else 4)  # rclone: whole-file MD5
    assert (volume.root / "shard.bin").read_bytes() == data


async def test_native_download_interrupted_resumes_on_syncds_own_path(s3, bucket, tmp_path):
    data, volume = await _shard(s3, bucket, tmp_path)
    async with _store(s3, bucket) as src:
        broken = await _opened(src, fail_after=2 * PART)
        with pytest.raises(Interrupted):
            await volume.stage(broken, frozenset())
        sidecars = list(volume.tmp_dir.glob("*.part.json"))
        assert len(sidecars) == 1, "the interrupted download keeps its sidecar"

        again = await _opened(src)
        staged = await volume.stage(again, frozenset())
        await volume.publish(staged, OpenFence())
    assert staged.resumed >= 2 * PART  # the parts the engine finished were kept
    assert again.native_bytes == 0  # resumed on syncd's own path
    assert (volume.root / "shard.bin").read_bytes() == data


async def test_an_engine_that_gives_up_hands_the_download_to_syncds_own_path(
        s3, bucket, tmp_path):
    """No S3 answer, only the engine failing (NativeError): the same download goes on along
    syncd's own path, keeping the parts the engine finished."""
    data, volume = await _shard(s3, bucket, tmp_path)
    async with _store(s3, bucket) as src:
        source = await _opened(src, fail_after=2 * PART, error=NativeError)
        staged = await volume.stage(source, frozenset())
        claim = await source.vouched()
        await volume.publish(staged, OpenFence())
    assert source.native_bytes >= 2 * PART
    assert staged.resumed >= 2 * PART  # the engine's finished parts were kept
    assert 0 < source.own_bytes <= SIZE - staged.resumed  # only the rest came the other way
    assert claim is not None and mismatch(claim, staged.checksums, staged.parts) is None
    assert (volume.root / "shard.bin").read_bytes() == data
    assert list(volume.tmp_dir.iterdir()) == []


async def test_native_download_of_an_overwritten_object_is_never_staged(s3, bucket, tmp_path):
    """The object changes while the engine reads it: If-Match pins every part to the ETag
    the download started with (rclone ignores it: its rewritten bytes show as a mismatch
    with the claim instead, and are not published either)."""
    _, volume = await _shard(s3, bucket, tmp_path)
    client = s3.client()
    async with _store(s3, bucket, concurrency=1) as src:
        source = await _opened(src)
        await source.vouched()
        inner = source.native()
        assert inner is not None
        overwritten = asyncio.Event()

        async def overwrite_first(sink: Sink) -> None:
            await asyncio.to_thread(client.put_object, Bucket=bucket, Key="m/shard.bin",
                                    Body=os.urandom(SIZE))
            overwritten.set()
            await inner(sink)

        source.native = lambda: overwrite_first  # type: ignore[method-assign]
        try:
            staged = await volume.stage(source, frozenset())
        except SourceChanged:
            staged = None
        await until(overwritten.is_set)
        if staged is not None:  # a server that ignores If-Match: the claim still refuses it
            claim = await source.vouched()
            assert claim is not None and mismatch(claim, staged.checksums, staged.parts)
            await volume.discard(staged)
    assert not (volume.root / "shard.bin").exists()


async def test_native_false_keeps_syncds_own_path(s3, bucket, tmp_path):
    data, volume = await _shard(s3, bucket, tmp_path)
    async with _store(s3, bucket, native=False) as src:
        source = await _opened(src)
        staged = await volume.stage(source, frozenset())
        await volume.publish(staged, OpenFence())
    assert source.native_bytes == 0
    assert (volume.root / "shard.bin").read_bytes() == data
