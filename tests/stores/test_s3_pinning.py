"""A ranged read of an object whose ETag does not depend on its content is pinned by its
Last-Modified (If-Unmodified-Since) and its identity is checked again after the last part: a
file assembled from two versions is never handed on (issue 19, item 2).

SeaweedFS only: `weed filer.copy` writes the ETag `"d41d8cd98f00b204e9800998ecf8427e-N"`
(the md5 of nothing) on a chunked file, so If-Match on it pins nothing."""

from __future__ import annotations

import contextlib
import random
import subprocess
import uuid
from pathlib import Path

import pytest

from syncd.config import S3Config, TransferConfig
from syncd.errors import SourceChanged
from syncd.listing import weak_etag
from syncd.stores.s3 import S3Store
from tests.mirrors import MiB, wait_for
from tests.servers import S3Server, venv_binary

TRANSFER = TransferConfig(part_size=5 * MiB, multipart_threshold=5 * MiB, concurrency=4)
SIZE = 12 * MiB


def _filer_copy(server: S3Server, bucket: str, body: bytes, scratch: Path) -> None:
    local = scratch / "shard.bin"
    local.write_bytes(body)
    subprocess.run(
        [str(venv_binary("weed")), "filer.copy", "-maxMB=1", str(local),
         f"http://127.0.0.1:{server.ports['filer']}/buckets/{bucket}/models/"],
        check=True, capture_output=True, timeout=60)


@pytest.mark.parametrize("s3", ["seaweedfs"], indirect=True)
async def test_s3_source_weak_etag_overwritten_mid_read_is_source_changed(
        s3: S3Server, tmp_path: Path) -> None:
    bucket = f"t-pin-{uuid.uuid4().hex[:12]}"
    client = s3.client()
    client.create_bucket(Bucket=bucket)
    _filer_copy(s3, bucket, random.Random(1).randbytes(SIZE), tmp_path)
    first = client.head_object(Bucket=bucket, Key="models/shard.bin")
    assert weak_etag(first["ETag"])
    cfg = S3Config(endpoint_url=s3.endpoint_url, addressing_style="path", max_attempts=1)
    async with S3Store(cfg, TRANSFER, bucket, "models/") as store:
        entry = (await store.list()).entries["shard.bin"]
        source = await store.open(entry)
        async with contextlib.aclosing(source.read(0, 5 * MiB)) as part:
            assert sum([len(c) async for c in part]) == 5 * MiB

        def overwritten() -> bool:  # Last-Modified has whole seconds: write until it moves
            _filer_copy(s3, bucket, random.Random(2).randbytes(SIZE), tmp_path)
            now = client.head_object(Bucket=bucket, Key="models/shard.bin")
            return bool(now["LastModified"] != first["LastModified"])

        wait_for(overwritten, timeout=30, what="an overwrite with a later Last-Modified")
        assert client.head_object(Bucket=bucket, Key="models/shard.bin")["ETag"] == first["ETag"]
        with pytest.raises(SourceChanged):
            async with contextlib.aclosing(source.read(5 * MiB, SIZE)) as rest:
                async for _ in rest:
                    pass
            await source.identity()
