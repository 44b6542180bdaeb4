"""syncd.stores.s3 on every test server: which endpoint and credentials a store uses, and how a
missing bucket differs from a missing key."""

from __future__ import annotations

import uuid

import pytest

from syncd.config import S3Config, TransferConfig
from syncd.errors import AccessDenied, BucketMissing, Unreachable
from syncd.stores.base import OpenFence
from syncd.stores.s3 import S3Store
from tests.mirrors import MiB
from tests.servers import ACCESS_KEY, SECRET_KEY, S3Server
from tests.web_server import S3_LIKE, Answer, web_server

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


# A throttling answer whose Code is in no list: only its status says "try again later".
THROTTLED = Answer(429, "application/xml", b'<?xml version="1.0" encoding="UTF-8"?>\n'
                   b"<Error><Code>TooManyRequests</Code><Message>slow down</Message></Error>")


async def test_a_429_is_transient_on_the_data_path_and_the_control_plane_alike() -> None:
    """One list of transient answers: the data path retries a 429 and the store reports it
    as an endpoint that is not answering (exit 5, retried), on botocore's path too."""
    with web_server(THROTTLED, {"HeadBucket": S3_LIKE["HeadBucket"]}) as web:
        cfg = S3Config(endpoint_url=web.endpoint_url, addressing_style="path", max_attempts=2)
        async with S3Store(cfg, TRANSFER, "bkt-1", "p/") as store:
            with pytest.raises(Unreachable) as read:
                await store.get_small("lease.json")
            assert web.seen.count("GetObject") == 2  # retried once, as max_attempts says
            with pytest.raises(Unreachable) as deleted:
                await store.delete(["a.bin"], OpenFence())
    for exc in (read.value, deleted.value):
        assert exc.retryable and exc.exit_code == 5 and "TooManyRequests" in str(exc)
