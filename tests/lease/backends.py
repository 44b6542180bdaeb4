"""Lease backends on real stores for tests: a volume directory, or a bucket on moto/rclone."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from syncd.config import S3Config, TransferConfig
from syncd.lease.backend import Backend
from syncd.lease.s3 import S3Lease
from syncd.lease.volume import VolumeLease
from syncd.stores.s3 import S3Store
from tests.servers import S3Server

TRANSFER = TransferConfig()


def s3_config(server: S3Server) -> S3Config:
    return S3Config(endpoint_url=server.endpoint_url, addressing_style="path", max_attempts=2,
                    connect_timeout_s=2)


@contextlib.asynccontextmanager
async def s3_lease(
    server: S3Server, bucket: str, prefix: str = "models/"
) -> AsyncIterator[S3Lease]:
    async with S3Store(s3_config(server), TRANSFER, bucket, prefix) as store:
        yield S3Lease(store, server.endpoint_url)


@contextlib.asynccontextmanager
async def backend(kind: str, root: Path, server: S3Server | None = None,
                  bucket: str = "") -> AsyncIterator[Backend]:
    if kind == "volume":
        root.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - test setup
        yield VolumeLease(root)
        return
    assert server is not None
    async with s3_lease(server, bucket) as lease:
        yield lease
