"""Shared fixtures: real S3-compatible servers (moto, rclone, SeaweedFS), two FUSE mounts of
one SeaweedFS directory, a throttling proxy, clean env.

Fixture API
-----------
``moto_server`` / ``rclone_server`` / ``seaweedfs_server``
                                     session-scoped :class:`S3Server`, started lazily; a test
                                     may have stopped them (use the fixtures below instead).
``moto_s3`` / ``rclone_s3`` / ``seaweedfs_s3``
                                     function-scoped, the same servers guaranteed running.
``s3``                               parametrized over ``SERVER_NAMES`` (``["moto", "rclone",
                                     "seaweedfs"]``); running server.
``bucket``                           fresh, uniquely named, empty bucket on ``s3``.
``shared_volume``                    :class:`SharedVolume`: one new SeaweedFS filer directory
                                     mounted twice (``.a``, ``.b``), two hosts sharing a network
                                     volume; unmounted at teardown.
``throttle_proxy``                   factory ``(target_port, rate_bytes_per_s=None)`` ->
                                     :class:`ThrottleProxy`; all closed at teardown.
``clean_aws_env`` (autouse)          test credentials, no config files, no SYNCD_* vars
                                     (but SYNCD_HTTP__LISTEN=127.0.0.1:0).

Async tests run on an event loop in debug mode (see :func:`pytest_configure`).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from botocore.exceptions import BotoCoreError, ClientError

from tests.fuse_mounts import SharedVolume, shared_volume_on
from tests.seaweedfs import new_seaweedfs_server
from tests.servers import (
    ACCESS_KEY,
    HOST,
    REGION,
    SECRET_KEY,
    S3Server,
    ThrottleProxy,
    empty_and_delete_bucket,
    env_names_with_prefix,
    find_free_port,
    new_moto_server,
    new_rclone_server,
)

__all__ = [
    "ACCESS_KEY",
    "HOST",
    "REGION",
    "SECRET_KEY",
    "S3Server",
    "SharedVolume",
    "ThrottleProxy",
    "find_free_port",
]

SERVER_NAMES = ("moto", "rclone", "seaweedfs")
MAX_PROXIES_PER_TEST = 16


def pytest_configure(config: pytest.Config) -> None:
    # pytest-asyncio (>= 1.1) creates every test/fixture loop with ``debug=asyncio_debug``.
    # Turn it on unless the command line already decided (``--asyncio-debug``).  Sync tests
    # are unaffected: no loop is created for them.
    if getattr(config.option, "asyncio_debug", None) is None:
        config.option.asyncio_debug = True


# ---------------------------------------------------------------------------------------
# Environment
# ---------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def clean_aws_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Every test sees only the test credentials: no profile, no config files, no SYNCD_*
    but one: daemons bind their HTTP endpoint to an ephemeral port, so several can run."""
    for name in env_names_with_prefix(("AWS_", "SYNCD_")):
        monkeypatch.delenv(name)
    monkeypatch.setenv("SYNCD_HTTP__LISTEN", "127.0.0.1:0")
    missing = tmp_path_factory.getbasetemp() / "no-such-aws-config"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(missing / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(missing / "credentials"))
    # Everything under test is loopback; never route it through a developer's HTTP proxy.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


# ---------------------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = new_moto_server(find_free_port(), tmp_path_factory.mktemp("moto"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def rclone_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    workdir: Path = tmp_path_factory.mktemp("rclone")
    server = new_rclone_server(find_free_port(), workdir / "root", workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def seaweedfs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = new_seaweedfs_server(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def moto_s3(moto_server: S3Server) -> S3Server:
    moto_server.ensure_running()
    return moto_server


@pytest.fixture
def rclone_s3(rclone_server: S3Server) -> S3Server:
    rclone_server.ensure_running()
    return rclone_server


@pytest.fixture
def seaweedfs_s3(seaweedfs_server: S3Server) -> S3Server:
    seaweedfs_server.ensure_running()
    return seaweedfs_server


@pytest.fixture(params=SERVER_NAMES, ids=SERVER_NAMES)
def s3(request: pytest.FixtureRequest) -> S3Server:
    """The running server for this parametrization (restarted if an earlier test stopped it)."""
    server: S3Server = request.getfixturevalue(f"{request.param}_server")
    server.ensure_running()
    return server


def new_bucket_name() -> str:
    return f"t-{uuid.uuid4().hex[:16]}"


@pytest.fixture
def bucket(s3: S3Server) -> Iterator[str]:
    """A new, empty bucket on ``s3``; removed (best effort) afterwards if the server is up."""
    name = new_bucket_name()
    s3.client().create_bucket(Bucket=name)
    yield name
    if s3.running:
        cleanup = s3.client(connect_timeout=2, read_timeout=10, retries={"total_max_attempts": 1})
        # Cleanup is not what the test is about; a bucket the test removed, or that a moto
        # restart wiped, is fine.
        with contextlib.suppress(ClientError, BotoCoreError):
            empty_and_delete_bucket(cleanup, name)


# ---------------------------------------------------------------------------------------
# A network volume shared by two hosts
# ---------------------------------------------------------------------------------------


@pytest.fixture
def shared_volume(
    seaweedfs_s3: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SharedVolume]:
    """One new SeaweedFS filer directory mounted twice with ``weed mount`` (default cache
    options): ``.a`` and ``.b`` stand for two hosts sharing a network volume.

    Consistency between the two mounts, as measured with weed 4.48 (every mount subscribes
    to the filer's metadata events and updates its own metadata cache from them, so
    ``-cacheMetaTtlSec`` plays no part here):

    * A new file, a new name from a rename (also over an existing file, and of a directory),
      new contents and a new directory written through one mount are seen through the other
      within milliseconds, once the writer has closed or fsynced the file; bytes written but
      not yet flushed are invisible to the other mount.
    * A name removed through one mount (deleted, or the source of a rename) that the other
      mount has already looked up stays resolvable through the other for up to 1 s: stat
      and open still succeed and return the old file.  That is the kernel's FUSE entry and
      attribute cache, whose 1 s TTL weed mount hard-codes.  Listing the directory through
      the other mount is current at once.
    * Creating a name exclusively is not exclusive across the mounts.  When both race for
      one new name (9 races in 10 here), O_CREAT|O_EXCL succeeds through both (afterwards both
      read the last writer's bytes), and so does link() (afterwards each mount goes on
      reading its own file under that name, still after 2.5 min, while the filer holds one
      of them).  Within one mount both are exclusive.  ``-dlm`` does not change this.  So a
      volume lease won by link() can have two winners on such a volume (issue 17).
    """
    with shared_volume_on(seaweedfs_s3, tmp_path_factory.mktemp("shared")) as volume:
        yield volume


# ---------------------------------------------------------------------------------------
# Throttling proxy
# ---------------------------------------------------------------------------------------


@pytest.fixture
def throttle_proxy() -> Iterator[Callable[..., ThrottleProxy]]:
    """Factory ``throttle_proxy(target_port, rate_bytes_per_s=None) -> ThrottleProxy``."""
    proxies: list[ThrottleProxy] = []

    def factory(target_port: int, rate_bytes_per_s: float | None = None) -> ThrottleProxy:
        if len(proxies) >= MAX_PROXIES_PER_TEST:
            raise RuntimeError(f"more than {MAX_PROXIES_PER_TEST} proxies in one test")
        proxy = ThrottleProxy(target_port, rate_bytes_per_s)
        proxies.append(proxy)
        return proxy

    try:
        yield factory
    finally:
        for proxy in reversed(proxies):
            proxy.close()
