"""syncd.stores.s3 on every test server: which endpoint and credentials a store uses, and how a
missing bucket differs from a missing key."""

from __future__ import annotations

import uuid

import pytest

from syncd.config import S3Config, TransferConfig
from syncd.errors import AccessDenied, BucketMissing
from syncd.stores.base import OpenFence
from syncd.stores.s3 import S3Store
from tests.mirrors import MiB
from tests.servers import ACCESS_KEY, SECRET_KEY, S3Server

TRANSFER = TransferConfig(part_size=5 * MiB, multipart_threshold=5 * MiB, concurrency=4)


def _cfg(server: S3Server, **extra: str) -> S3Config:
    return S3Config(endpoint_url=server.endpoint_url, addressing_style="path", max_attempts=1,
                    **extra)


async def test_a_missing_key_in_a_bucket_named_bucket_is_absent_not_a_missing_bucket(
        s3: S3Server) -> None:
    """The lease and manifest reads ask for keys that are not there yet."""
    name = f"my-bucket-{uuid.uuid4().hex[:8]}"
    s3.client().create_bucket(Bucket=name)
    try:
        async with S3Store(_cfg(s3), TRANSFER, name, "p/") as store:
            assert await store.get_small("nothing/here.json") is None
    finally:
        s3.client().delete_bucket(Bucket=name)


async def test_a_missing_bucket_is_its_own_error_naming_the_endpoint(s3: S3Server) -> None:
    async with S3Store(_cfg(s3), TRANSFER, f"gone-{uuid.uuid4().hex[:8]}", "",
                       endpoint="east") as store:
        with pytest.raises(BucketMissing) as info:
            await store.check()
        assert f"endpoint east ({s3.endpoint_url})" in str(info.value)
        with pytest.raises(BucketMissing):
            await store.get_small("x.json")


async def test_named_credential_variables_are_used_and_the_default_chain_is_not(
        s3: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG0")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    monkeypatch.setenv("MY_KEY", ACCESS_KEY)
    monkeypatch.setenv("MY_SECRET", SECRET_KEY)
    cfg = _cfg(s3, access_key_id_env="MY_KEY", secret_access_key_env="MY_SECRET")
    async with S3Store(cfg, TRANSFER, bucket, "p/") as store:
        await store.check()
        await store.put_small("a.json", b"{}")
        # The control plane (botocore: multipart, batch delete) signs with them too.
        await store.delete(["a.json"], OpenFence())
        assert await store.get_small("a.json") is None


async def test_a_named_session_token_variable_that_is_not_set_is_named(
        s3: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEY", ACCESS_KEY)
    monkeypatch.setenv("MY_SECRET", SECRET_KEY)
    monkeypatch.delenv("MY_TOKEN", raising=False)
    cfg = _cfg(s3, access_key_id_env="MY_KEY", secret_access_key_env="MY_SECRET",
               session_token_env="MY_TOKEN")
    async with S3Store(cfg, TRANSFER, bucket, "p/", endpoint="sts") as store:
        with pytest.raises(AccessDenied) as info:
            await store.check()
    assert "MY_TOKEN is not set" in str(info.value)
    assert f"endpoint sts ({s3.endpoint_url})" in str(info.value)
