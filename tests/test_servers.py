"""Behavioural tests for the shared fixtures in conftest.py / servers.py."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import BotoCoreError, ClientError, ReadTimeoutError

from tests.fuse_mounts import SharedVolume, mounted, shared_volume_on
from tests.seaweedfs import WEED_GRPC_OFFSET
from tests.servers import (
    ACCESS_KEY,
    HOST,
    REGION,
    SECRET_KEY,
    S3Server,
    ThrottleProxy,
    empty_and_delete_bucket,
    make_s3_client,
    s3_client_config,
)

KiB = 1024
ProxyFactory = Callable[..., ThrottleProxy]

# Names of buckets handed out by the ``bucket`` fixture in this module, per server.
_seen_buckets: dict[str, set[str]] = {}


def _payload(size: int) -> bytes:
    return os.urandom(size)


def _get(client: Any, bucket: str, key: str) -> bytes:
    body: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return body


# ---- servers and buckets ----------------------------------------------------------------


def test_bucket_put_get_roundtrip_returns_same_bytes(s3: S3Server, bucket: str) -> None:
    client = s3.client()
    data = _payload(100 * KiB + 7)
    client.put_object(Bucket=bucket, Key="dir/obj.bin", Body=data, Metadata={"sha": "abc"})

    head = client.head_object(Bucket=bucket, Key="dir/obj.bin")
    assert head["ContentLength"] == len(data)
    # rclone capitalises metadata keys; compare case-insensitively.
    assert {k.lower(): v for k, v in head["Metadata"].items()} == {"sha": "abc"}
    assert _get(client, bucket, "dir/obj.bin") == data
    names = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert names == ["dir/obj.bin"]


@pytest.mark.parametrize("run", ["first", "second"])
def test_bucket_fixture_is_empty_and_new_when_earlier_test_wrote(
    s3: S3Server, bucket: str, run: str
) -> None:
    # Both runs write the same key; whichever runs second must still start from nothing.
    client = s3.client()
    seen = _seen_buckets.setdefault(s3.name, set())
    assert bucket not in seen
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    assert bucket in {b["Name"] for b in client.list_buckets()["Buckets"]}
    client.put_object(Bucket=bucket, Key="marker", Body=run.encode())
    seen.add(bucket)


def test_server_stop_then_start_answers_on_same_port(s3: S3Server) -> None:
    port, endpoint = s3.port, s3.endpoint_url
    assert s3.answers()

    s3.stop()
    assert not s3.running
    assert not s3.answers()
    with pytest.raises(ConnectionRefusedError), socket.create_connection((HOST, port), 2):
        pass

    s3.start()
    assert s3.running
    assert (s3.port, s3.endpoint_url) == (port, endpoint)
    assert s3.answers()
    s3.client().list_buckets()


def test_rclone_restart_keeps_objects_on_disk(rclone_s3: S3Server) -> None:
    client = rclone_s3.client()
    name = f"t-keep-{os.getpid()}-{time.monotonic_ns() % 10**8}"
    client.create_bucket(Bucket=name)
    data = _payload(10 * KiB)
    client.put_object(Bucket=name, Key="a/b.bin", Body=data)
    assert rclone_s3.root is not None
    assert (rclone_s3.root / name / "a" / "b.bin").read_bytes() == data

    rclone_s3.restart()

    assert _get(rclone_s3.client(), name, "a/b.bin") == data


def test_server_stopped_by_test_is_left_stopped_for_next_test(s3: S3Server) -> None:
    # Companion of the next test: leave the server down on purpose.
    pid = s3.pid
    assert pid is not None
    assert all(path.exists() for path in s3.leftovers)  # SeaweedFS's fixed gRPC sockets

    s3.stop()

    assert not s3.answers()
    assert not Path(f"/proc/{pid}").exists()  # reaped: not even a zombie
    assert not any(path.exists() for path in s3.leftovers)
    for port in (s3.port, *s3.ports.values()):
        with pytest.raises(ConnectionRefusedError), socket.create_connection((HOST, port), 2):
            pass
    # start() checks every port the server would listen on, not only the S3 one
    with socket.create_server((HOST, max(s3.ports.values(), default=s3.port))):
        with pytest.raises(RuntimeError, match="in use"):
            s3.start()
    assert not s3.running


def test_s3_fixture_restarts_server_stopped_by_previous_test(s3: S3Server) -> None:
    assert s3.running
    assert s3.answers()


def test_bucket_survives_server_restart_unless_moto(s3: S3Server, bucket: str) -> None:
    client = s3.client()
    small, big = _payload(10 * KiB), _payload(6 * 1024 * KiB + 5)
    client.put_object(Bucket=bucket, Key="a/small.bin", Body=small)
    upload = client.create_multipart_upload(Bucket=bucket, Key="a/big.bin")["UploadId"]
    parts = [
        {"PartNumber": n, "ETag": client.upload_part(
            Bucket=bucket, Key="a/big.bin", UploadId=upload, PartNumber=n, Body=chunk)["ETag"]}
        for n, chunk in ((1, big[: 5 * 1024 * KiB]), (2, big[5 * 1024 * KiB :]))
    ]
    client.complete_multipart_upload(
        Bucket=bucket, Key="a/big.bin", UploadId=upload, MultipartUpload={"Parts": parts}
    )
    ports, pid = dict(s3.ports), s3.pid

    s3.restart()  # the ``bucket`` teardown must then cope with a bucket that may be gone

    assert s3.pid != pid
    assert s3.ports == ports
    after = s3.client()
    if s3.name == "moto":  # moto keeps everything in memory
        with pytest.raises(ClientError):
            after.head_bucket(Bucket=bucket)
        return
    assert _get(after, bucket, "a/small.bin") == small  # stored on disk
    assert _get(after, bucket, "a/big.bin") == big
    after.put_object(Bucket=bucket, Key="a/new.bin", Body=b"new")  # writable again too
    keys = [o["Key"] for o in after.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["a/big.bin", "a/new.bin", "a/small.bin"]


def test_server_start_refuses_port_taken_by_another_listener(rclone_s3: S3Server) -> None:
    rclone_s3.stop()
    with socket.create_server((HOST, rclone_s3.port)):
        with pytest.raises(RuntimeError, match="in use"):
            rclone_s3.start()
        assert not rclone_s3.running
    rclone_s3.start()
    assert rclone_s3.answers()


# ---- SeaweedFS ----------------------------------------------------------------------------


def _listening_ports(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket ``pid`` listens on, from /proc (no ss needed)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    found = set()
    for table, width in (("tcp", 8), ("tcp6", 32)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            cols = line.split()
            local, state, inode = cols[1], cols[3], cols[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            addr_hex, port_hex = local.split(":")
            assert len(addr_hex) == width
            if width == 8:
                addr = socket.inet_ntop(socket.AF_INET, bytes.fromhex(addr_hex)[::-1])
            else:
                words = [bytes.fromhex(addr_hex[i : i + 8])[::-1] for i in range(0, 32, 8)]
                addr = socket.inet_ntop(socket.AF_INET6, b"".join(words))
            found.add((addr, int(port_hex, 16)))
    return found


def test_seaweedfs_listens_only_on_loopback_ports_below_45000(seaweedfs_s3: S3Server) -> None:
    assert seaweedfs_s3.pid is not None
    listening = _listening_ports(seaweedfs_s3.pid)

    expected = {seaweedfs_s3.port, *seaweedfs_s3.ports.values()}
    assert listening == {(HOST, port) for port in expected}
    assert len(expected) == 8  # master, volume, filer, S3 and the gRPC port of each
    for role in ("master", "volume", "filer"):
        assert seaweedfs_s3.ports[f"{role}.grpc"] == seaweedfs_s3.ports[role] + WEED_GRPC_OFFSET
    assert max(expected) < 45000


def test_seaweedfs_answers_test_credentials_and_refuses_others(seaweedfs_s3: S3Server) -> None:
    client = seaweedfs_s3.client()
    name = f"t-auth-{time.monotonic_ns() % 10**10}"
    client.create_bucket(Bucket=name)
    client.put_object(Bucket=name, Key="k", Body=b"v")
    assert _get(client, name, "k") == b"v"
    assert name in {b["Name"] for b in client.list_buckets()["Buckets"]}

    once = s3_client_config(retries={"total_max_attempts": 1})
    for access, secret, code in (
        (ACCESS_KEY, "not-the-secret", "SignatureDoesNotMatch"),
        ("AKIANOSUCHKEY0000000", SECRET_KEY, "InvalidAccessKeyId"),
    ):
        stranger = make_s3_client(
            seaweedfs_s3.endpoint_url, access_key=access, secret_key=secret, config=once
        )
        for call in (
            stranger.list_buckets,
            lambda s=stranger: s.get_object(Bucket=name, Key="k"),
            lambda s=stranger: s.put_object(Bucket=name, Key="k", Body=b"x"),
        ):
            with pytest.raises(ClientError) as refused:
                call()
            assert refused.value.response["Error"]["Code"] == code
    assert _get(client, name, "k") == b"v"
    empty_and_delete_bucket(client, name)


# ---- two mounts of one SeaweedFS directory ----------------------------------------------


def _until(ok: Callable[[], bool], what: str, timeout: float = 10.0) -> float:
    """Poll ``ok`` until it holds; return how long that took."""
    started = time.monotonic()
    while not ok():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.01)
    return time.monotonic() - started


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def test_shared_volume_mounts_one_empty_directory_twice(shared_volume: SharedVolume) -> None:
    a, b = shared_volume.a, shared_volume.b
    assert a != b and mounted(a) and mounted(b)
    assert os.listdir(a) == os.listdir(b) == []
    assert all(m.pid is not None for m in shared_volume.mounts)


def test_shared_volume_writes_through_one_mount_are_read_through_the_other(
    shared_volume: SharedVolume,
) -> None:
    a, b = shared_volume.a, shared_volume.b
    data = _payload(3 * 1024 * KiB + 1)  # more than one 2 MiB chunk of weed mount
    (a / "dir" / "sub").mkdir(parents=True)
    (a / "dir" / "sub" / "big.bin").write_bytes(data)
    _until(lambda: _read(b / "dir" / "sub" / "big.bin") == data, "A's new file through B")

    (b / "dir" / "sub" / "big.bin").write_bytes(b"rewritten by b")
    _until(lambda: _read(a / "dir" / "sub" / "big.bin") == b"rewritten by b", "B's rewrite")
    assert sorted(os.listdir(a / "dir" / "sub")) == ["big.bin"]


def test_shared_volume_renames_and_deletes_through_one_mount_show_through_the_other(
    shared_volume: SharedVolume,
) -> None:
    a, b = shared_volume.a, shared_volume.b
    (a / "old").write_bytes(b"payload")
    (a / "target").write_bytes(b"previous")
    _until(lambda: _read(b / "old") == b"payload" and _read(b / "target") == b"previous",
           "A's files through B")

    os.rename(a / "old", a / "new")
    _until(lambda: _read(b / "new") == b"payload", "the renamed file under its new name")
    _until(lambda: sorted(os.listdir(b)) == ["new", "target"], "B's listing after the rename")
    # B had looked "old" up: the kernel may answer from its 1 s entry cache for that long.
    assert _until(lambda: not (b / "old").exists(), "the old name gone through B") < 3

    (b / "tmp").write_bytes(b"replacement")
    os.rename(b / "tmp", b / "target")  # atomic replace, as syncd publishes
    _until(lambda: _read(a / "target") == b"replacement", "B's replace through A")

    (b / "new").unlink()
    _until(lambda: sorted(os.listdir(a)) == ["target"], "B's delete in A's listing")
    assert _until(lambda: not (a / "new").exists(), "B's delete through A") < 3


def test_shared_volume_unmounts_and_ends_both_mounts_even_when_the_test_fails(
    seaweedfs_s3: S3Server, tmp_path: Path
) -> None:
    with pytest.raises(RuntimeError, match="test failed"):
        with shared_volume_on(seaweedfs_s3, tmp_path) as volume:
            pids = [m.pid for m in volume.mounts]
            busy = (volume.a / "open.bin").open("wb")  # a file still open: a busy mount
            raise RuntimeError("test failed")
    with contextlib.suppress(OSError):  # lazily unmounted, its mount process gone
        busy.close()
    assert not mounted(volume.a) and not mounted(volume.b)
    assert all(pid is not None and not Path(f"/proc/{pid}").exists() for pid in pids)

    with shared_volume_on(seaweedfs_s3, tmp_path / "again") as again:  # nothing left over
        assert os.listdir(again.a) == []
    assert not mounted(again.a) and not mounted(again.b)


# ---- environment and event loop ---------------------------------------------------------


def test_clean_aws_env_exposes_only_test_credentials() -> None:
    assert os.environ["AWS_ACCESS_KEY_ID"] == ACCESS_KEY
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == SECRET_KEY
    assert os.environ["AWS_DEFAULT_REGION"] == REGION
    assert os.environ["AWS_EC2_METADATA_DISABLED"] == "true"
    for var in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        assert not Path(os.environ[var]).exists()
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "SYNCD_CONFIG", "SYNCD_DATACENTER"):
        assert var not in os.environ
    # one SYNCD_ variable on purpose: daemons take ephemeral HTTP ports, so several can run
    assert [name for name in os.environ if name.startswith("SYNCD_")] == ["SYNCD_HTTP__LISTEN"]
    assert os.environ["SYNCD_HTTP__LISTEN"] == "127.0.0.1:0"

    creds = boto3.session.Session().get_credentials()
    assert creds is not None
    assert (creds.access_key, creds.secret_key, creds.token) == (ACCESS_KEY, SECRET_KEY, None)


@pytest.fixture(scope="class")
def _syncd_and_aws_vars_from_outer_scope() -> Iterator[None]:
    # Class scope: set up before the function-scoped autouse ``clean_aws_env`` runs.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SYNCD_DATACENTER", "outer")
        mp.setenv("SYNCD_SOMETHING_ELSE", "outer")
        mp.setenv("AWS_PROFILE", "outer")
        mp.setenv("AWS_SESSION_TOKEN", "outer")
        yield


@pytest.mark.usefixtures("_syncd_and_aws_vars_from_outer_scope")
class TestCleanAwsEnvWithPollutedOuterEnvironment:
    def test_clean_aws_env_removes_vars_set_before_the_test(self) -> None:
        for var in ("SYNCD_DATACENTER", "SYNCD_SOMETHING_ELSE", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
            assert var not in os.environ
        assert os.environ["AWS_ACCESS_KEY_ID"] == ACCESS_KEY


async def test_event_loop_runs_in_debug_mode_for_async_tests() -> None:
    assert asyncio.get_running_loop().get_debug()


def test_sync_tests_have_no_running_event_loop() -> None:
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()


async def test_async_test_can_use_server_through_thread(s3: S3Server, bucket: str) -> None:
    client = s3.client()
    await asyncio.to_thread(client.put_object, Bucket=bucket, Key="k", Body=b"v")
    assert await asyncio.to_thread(_get, client, bucket, "k") == b"v"


# ---- throttle proxy ---------------------------------------------------------------------


def test_throttle_proxy_forwards_s3_requests_unthrottled_by_default(
    s3: S3Server, bucket: str, throttle_proxy: ProxyFactory
) -> None:
    proxy = throttle_proxy(s3.port)
    assert proxy.endpoint_url == f"http://127.0.0.1:{proxy.port}"
    assert proxy.rate is None
    via_proxy = s3.client(endpoint_url=proxy.endpoint_url)
    data = _payload(300 * KiB)

    via_proxy.put_object(Bucket=bucket, Key="big", Body=data)

    assert _get(via_proxy, bucket, "big") == data
    assert _get(s3.client(), bucket, "big") == data
    assert proxy.bytes_to_server >= len(data)
    assert proxy.bytes_to_client >= len(data)
    assert proxy.connections_accepted >= 1


def test_throttle_proxy_limits_download_rate_when_rate_set(
    moto_s3: S3Server, throttle_proxy: ProxyFactory
) -> None:
    direct = moto_s3.client()
    name = f"t-rate-{time.monotonic_ns() % 10**10}"
    direct.create_bucket(Bucket=name)
    data = _payload(256 * KiB)
    direct.put_object(Bucket=name, Key="blob", Body=data)
    proxy = throttle_proxy(moto_s3.port, rate_bytes_per_s=512 * KiB)
    via_proxy = moto_s3.client(endpoint_url=proxy.endpoint_url)

    started = time.monotonic()
    assert _get(via_proxy, name, "blob") == data
    throttled = time.monotonic() - started

    proxy.set_rate(None)
    started = time.monotonic()
    assert _get(via_proxy, name, "blob") == data
    unthrottled = time.monotonic() - started

    assert 0.4 <= throttled < 10
    assert unthrottled < throttled


def test_throttle_proxy_pause_holds_request_until_resume(
    s3: S3Server, bucket: str, throttle_proxy: ProxyFactory
) -> None:
    s3.client().put_object(Bucket=bucket, Key="k", Body=b"payload")
    proxy = throttle_proxy(s3.port)
    via_proxy = s3.client(
        endpoint_url=proxy.endpoint_url, read_timeout=10, retries={"total_max_attempts": 1}
    )
    via_proxy.list_buckets()  # warm: a pooled connection exists before the pause
    before = (proxy.bytes_to_server, proxy.bytes_to_client)

    proxy.pause()
    assert proxy.paused
    with ThreadPoolExecutor(max_workers=1) as pool:
        try:
            pending = pool.submit(_get, via_proxy, bucket, "k")
            done, _ = wait_futures([pending], timeout=0.5)
            assert not done
            assert (proxy.bytes_to_server, proxy.bytes_to_client) == before
        finally:
            proxy.resume()
        assert pending.result(timeout=10) == b"payload"
    assert not proxy.paused


def test_throttle_proxy_pause_makes_new_connections_time_out(
    moto_s3: S3Server, throttle_proxy: ProxyFactory
) -> None:
    proxy = throttle_proxy(moto_s3.port)
    proxy.pause()
    impatient = moto_s3.client(
        endpoint_url=proxy.endpoint_url,
        connect_timeout=1,
        read_timeout=0.3,
        retries={"total_max_attempts": 1},
    )

    with pytest.raises(ReadTimeoutError):  # TCP connect succeeds, no bytes ever come back
        impatient.list_buckets()
    assert proxy.connections_accepted == 0

    proxy.resume()
    impatient.list_buckets()
    assert proxy.connections_accepted >= 1


def test_throttle_proxy_drop_connections_breaks_inflight_download(
    moto_s3: S3Server, throttle_proxy: ProxyFactory
) -> None:
    direct = moto_s3.client()
    name = f"t-drop-{time.monotonic_ns() % 10**10}"
    direct.create_bucket(Bucket=name)
    direct.put_object(Bucket=name, Key="blob", Body=_payload(256 * KiB))
    proxy = throttle_proxy(moto_s3.port, rate_bytes_per_s=64 * KiB)
    via_proxy = moto_s3.client(endpoint_url=proxy.endpoint_url, retries={"total_max_attempts": 1})

    response = via_proxy.get_object(Bucket=name, Key="blob")  # headers arrive, body trickles
    proxy.drop_connections()

    with pytest.raises(BotoCoreError):
        response["Body"].read()


def test_throttle_proxy_close_refuses_new_connections(
    moto_s3: S3Server, throttle_proxy: ProxyFactory
) -> None:
    proxy = throttle_proxy(moto_s3.port)
    moto_s3.client(endpoint_url=proxy.endpoint_url).list_buckets()

    proxy.close()
    proxy.close()  # idempotent

    with pytest.raises(ConnectionRefusedError), socket.create_connection((HOST, proxy.port), 2):
        pass
    with pytest.raises(RuntimeError):
        proxy.pause()


def test_throttle_proxy_rejects_non_positive_rate(
    moto_s3: S3Server, throttle_proxy: ProxyFactory
) -> None:
    with pytest.raises(ValueError):
        throttle_proxy(moto_s3.port, rate_bytes_per_s=0)
    proxy = throttle_proxy(moto_s3.port, rate_bytes_per_s=1000)
    with pytest.raises(ValueError):
        proxy.set_rate(-1)
    assert proxy.rate == 1000


def test_moto_lets_exactly_one_of_many_racing_conditional_creates_win(
        moto_s3: S3Server) -> None:
    """The lease tests need S3's guarantee; moto alone checks, then stores, unlocked
    (tests/moto_atomic.py). 3 rounds of 16 threads creating one key with If-None-Match: *."""
    client = moto_s3.client()
    bucket = f"race-{os.urandom(6).hex()}"
    client.create_bucket(Bucket=bucket)
    barrier = threading.Barrier(16)

    def create(key: str, i: int) -> bool:
        barrier.wait()
        try:
            client.put_object(Bucket=bucket, Key=key, Body=str(i).encode(), IfNoneMatch="*")
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "PreconditionFailed"
            return False
        return True

    for round_ in range(3):
        with ThreadPoolExecutor(16) as pool:
            won = list(pool.map(lambda i, r=round_: create(f"k{r}", i), range(16)))
        assert won.count(True) == 1
