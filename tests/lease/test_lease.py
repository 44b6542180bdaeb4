"""The lease rules on both real backends (a volume directory; a bucket on moto), with an
injected monotonic clock so expiry is exact and the tests are fast."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from syncd.errors import LeaseLost, LeaseUnsupported
from syncd.lease.backend import Backend
from syncd.lease.lease import Lease
from syncd.lease.record import Timing, View, encode, me, start_ticks
from syncd.lease.s3 import COMMIT_KEY, LEASE_KEY
from tests.lease.backends import backend, s3_lease
from tests.servers import S3Server

TIMING = Timing(ttl_s=60, renew_interval_s=10, renew_deadline_s=40, skew_margin_s=15)
KINDS = ("volume", "s3")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _bucket_name(tmp_path: Path) -> str:
    return f"lease-{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def store(kind: str, tmp_path: Path, request: pytest.FixtureRequest
                ) -> AsyncIterator[Backend]:
    server: S3Server | None = None
    bucket = ""
    if kind == "s3":
        server = request.getfixturevalue("moto_s3")
        bucket = _bucket_name(tmp_path)
        server.client().create_bucket(Bucket=bucket)
    async with backend(kind, tmp_path / "vol", server, bucket) as b:
        await b.prepare()
        yield b


def _lease(store: Backend, clock: Clock, name: str, **kw: object) -> Lease:
    holder = replace(me(name), id=name, nonce=f"nonce-{name}", boot="")  # liveness unprovable
    return Lease(store, TIMING, holder, clock=clock, **kw)  # type: ignore[arg-type]


async def test_free_lease_is_taken_at_generation_1_and_fences(store: Backend) -> None:
    clock = Clock()
    a = _lease(store, clock, "a")
    assert await a.try_acquire() == "free"
    assert a.gen == 1
    fence = a.fence()
    fence.check()
    assert (await store.read()).record.holder.id == "a"  # type: ignore[union-attr]


async def test_held_lease_is_not_taken_until_silent_for_ttl_plus_margin(store: Backend) -> None:
    clock = Clock()
    a, b = _lease(store, clock, "a"), _lease(store, clock, "b")
    await a.try_acquire()
    assert await b.try_acquire() is None
    clock.now += 74.9
    assert await b.try_acquire() is None  # 74.9 s of silence < 75
    clock.now += 0.2
    assert await b.try_acquire() == "expired"
    assert b.gen == 2


async def test_renewals_keep_a_lease_from_expiring(store: Backend) -> None:
    clock = Clock()
    a, b = _lease(store, clock, "a"), _lease(store, clock, "b")
    await a.try_acquire()
    for _ in range(20):  # 200 s of a renewing holder
        assert await b.try_acquire() is None
        clock.now += 10
        assert await a.renew()
    assert await b.try_acquire() is None
    a.fence().check()


async def test_holder_self_fences_at_the_deadline_by_its_own_clock(store: Backend) -> None:
    clock = Clock()
    a = _lease(store, clock, "a")
    await a.try_acquire()
    fence = a.fence()
    clock.now += 39.9
    fence.check()
    clock.now += 0.2
    with pytest.raises(LeaseLost, match="not renewed"):
        fence.check()
    with pytest.raises(LeaseLost):
        await a.renew()  # lost is final for this generation


async def test_wall_clocks_do_not_matter(store: Backend) -> None:
    """A contender whose wall clock is hours ahead does not take over early: only its own
    observation of silence counts."""
    clock = Clock()
    a = _lease(store, clock, "a")
    b = _lease(store, clock, "b")
    b._wall = lambda: 10**10  # far in the future
    await a.try_acquire()
    assert await b.try_acquire() is None
    clock.now += 30
    assert await b.try_acquire() is None


async def test_release_lets_a_standby_take_over_at_once_with_the_next_generation(
    store: Backend,
) -> None:
    clock = Clock()
    a, b = _lease(store, clock, "a"), _lease(store, clock, "b")
    await a.try_acquire()
    assert await b.try_acquire() is None
    await a.release()
    assert await b.try_acquire() == "released"
    assert b.gen == 2
    assert await a.try_acquire() is None  # a is just a contender now


async def test_the_old_holder_learns_it_lost_when_superseded(store: Backend) -> None:
    clock = Clock()
    a, b = _lease(store, clock, "a"), _lease(store, clock, "b")
    await a.try_acquire()
    await b.try_acquire()
    clock.now += 75.1  # a was paused (SIGSTOP) longer than the TTL
    assert await b.try_acquire() == "expired"
    clock.now -= 75.1 - 5  # a's clock, had it kept renewing in time: still inside its deadline
    with pytest.raises(LeaseLost):
        await a.renew()
    with pytest.raises(LeaseLost):
        a.fence().check()


async def test_a_corrupt_record_is_held_never_free(store: Backend, kind: str,
                                                  tmp_path: Path) -> None:
    clock = Clock()
    a = _lease(store, clock, "a")
    await a.try_acquire()
    await a.release()
    a.drop()
    if kind == "volume":
        (tmp_path / "vol/.syncd/leases/gen-0000000002.json").write_bytes(b'{"gen": 2, trunc')
    else:
        await store.store.put_small(LEASE_KEY, b"\x00garbage")  # type: ignore[attr-defined]
    b = _lease(store, clock, "b")
    view = await b.observe()
    assert view.corrupt and view.record is None
    assert await b.try_acquire() is None
    clock.now += 74
    assert await b.try_acquire() is None
    clock.now += 2
    assert await b.try_acquire() == "expired"
    assert b.gen == (3 if kind == "volume" else 2)  # S3: after the committed generation 1


async def test_operator_deleting_the_s3_lease_never_moves_the_generation_back(
    moto_s3: S3Server, tmp_path: Path
) -> None:
    bucket = _bucket_name(tmp_path)
    moto_s3.client().create_bucket(Bucket=bucket)
    clock = Clock()
    async with s3_lease(moto_s3, bucket) as store:
        await store.prepare()
        a = _lease(store, clock, "a")
        await a.try_acquire()
        await a.release()
        b = _lease(store, clock, "b")
        await b.try_acquire()
        assert b.gen == 2
        moto_s3.client().delete_object(Bucket=bucket, Key=f"models/{LEASE_KEY}")
        c = _lease(store, clock, "c")
        assert await c.try_acquire() is None  # b committed and may still be writing
        assert "is missing" in str((await c.observe()).corrupt)
        clock.now += 75.1
        assert await c.try_acquire() == "expired"
        assert c.gen == 3  # from the commit object, not back to 1
        with pytest.raises(LeaseLost):
            await b.renew()
        with pytest.raises(LeaseLost):
            await b.commit(2)


async def test_a_stale_holders_commit_is_rejected_by_the_server(
    moto_s3: S3Server, tmp_path: Path
) -> None:
    bucket = _bucket_name(tmp_path)
    moto_s3.client().create_bucket(Bucket=bucket)
    clock = Clock()
    async with s3_lease(moto_s3, bucket) as one, s3_lease(moto_s3, bucket) as two:
        await one.prepare()
        a, b = _lease(one, clock, "a"), _lease(two, clock, "b")
        await a.try_acquire()
        await a.commit(a.gen)
        await b.try_acquire()
        clock.now += 75.1
        assert await b.try_acquire() == "expired"
        a._renewed_at = clock.now  # a believes it is still valid (a frozen VM, say)
        with pytest.raises(LeaseLost, match="rejected"):
            await a.commit(a.gen)
        await b.commit(2)
        body = moto_s3.client().get_object(Bucket=bucket, Key=f"models/{COMMIT_KEY}")
        assert b'"gen": 2' in body["Body"].read()


async def test_s3_lease_refused_on_a_server_that_ignores_conditional_writes(
    rclone_s3: S3Server, tmp_path: Path
) -> None:
    bucket = _bucket_name(tmp_path)
    rclone_s3.client().create_bucket(Bucket=bucket)
    async with s3_lease(rclone_s3, bucket) as store:
        with pytest.raises(LeaseUnsupported, match="ignores S3 conditional writes"):
            await store.prepare()
    left = rclone_s3.client().list_objects_v2(Bucket=bucket).get("Contents", [])
    assert left == []  # the probe cleaned up after itself


async def test_same_host_dead_holder_is_taken_over_at_once(store: Backend) -> None:
    clock = Clock()
    child = subprocess.Popen(  # noqa: ASYNC220 - a process to watch die
        [sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        ghost = replace(me("x"), id="x", nonce="child", pid=child.pid,
                        started=start_ticks(child.pid) or 0)
        assert await Lease(store, TIMING, ghost, clock=clock).try_acquire() == "free"
        b = Lease(store, TIMING, me("b"), clock=clock)
        cautious = Lease(store, TIMING, me("c"), clock=clock, detect_dead=False)
        assert await b.try_acquire() is None  # its holder is alive
    finally:
        child.kill()
        child.wait()
    assert await cautious.try_acquire() is None  # not allowed to judge liveness: waits
    assert await b.try_acquire() == "holder process is gone"
    assert b.gen == 2


async def test_a_volume_holder_whose_record_vanished_is_fenced(tmp_path: Path) -> None:
    """`rm -rf .syncd` by hand, then another instance starts over at generation 1: the old
    holder must not go on as if nothing happened."""
    import shutil

    from syncd.lease.volume import VolumeLease

    (tmp_path / "vol").mkdir()
    store = VolumeLease(tmp_path / "vol")
    await store.prepare()
    clock = Clock()
    a = _lease(store, clock, "a")
    for _ in range(2):
        await a.try_acquire()
        await a.release()
    await a.try_acquire()
    assert a.gen == 3
    fence = a.fence()
    shutil.rmtree(tmp_path / "vol/.syncd")
    with pytest.raises(LeaseLost):
        fence.check()
    b = _lease(store, clock, "b")
    assert await b.try_acquire() == "free"
    with pytest.raises(LeaseLost):
        await a.renew()


class _PausedAfterRead:
    """The backend as a standby sees it when it is frozen right after a read returns: the
    record it holds is already old when it decides. `pause` runs once, inside that read."""

    def __init__(self, inner: Backend, pause: Callable[[], Awaitable[None]] | None) -> None:
        self._inner = inner
        self._pause = pause
        self.kind, self.target = inner.kind, inner.target

    async def read(self) -> View:
        view = await self._inner.read()
        pause, self._pause = self._pause, None
        if pause is not None:
            await pause()
        return view

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


async def test_a_standby_paused_after_a_read_never_takes_over_a_renewing_holder(
        store: Backend) -> None:
    """The pause (100 s, past ttl + margin) is the standby's, not the holder's: the holder
    renewed every 10 s through it, so nothing was ever silent."""
    clock = Clock()
    a = _lease(store, clock, "a")
    await a.try_acquire()

    async def frozen_while_holder_renews() -> None:
        for _ in range(10):
            clock.now += 10
            assert await a.renew()

    paused = _PausedAfterRead(store, None)
    b = _lease(paused, clock, "b")  # type: ignore[arg-type]
    assert await b.try_acquire() is None
    clock.now += 10
    assert await a.renew()
    clock.now += 5
    assert await b.try_acquire() is None  # sees the renewal: silent since now
    clock.now += 5
    paused._pause = frozen_while_holder_renews  # the same record again, then frozen
    assert await b.try_acquire() is None  # decided on a record read before the pause
    a.fence().check()
    assert b.takeover_in(b.view) > 60  # type: ignore[arg-type]
    assert await b.try_acquire() is None  # a fresh read shows the renewals
    a.fence().check()
    assert (await store.read()).record.gen == 1  # type: ignore[union-attr]


async def test_the_fence_checks_the_holder_not_only_the_generation(tmp_path: Path) -> None:
    """Where link() is not exclusive across hosts (two FUSE mounts of one filer), two
    contenders can both believe they won generation 1. The one whose record is not the one
    on the volume must stop at its next publish, not at its next renewal."""
    async with backend("volume", tmp_path / "vol", None, "") as store:
        await store.prepare()
        clock = Clock()
        a = _lease(store, clock, "a")
        await a.try_acquire()
        a.fence().check()
        other = replace(me("b"), id="b", nonce="nonce-b", boot="")
        assert a.record is not None
        theirs = replace(a.record, holder=other)
        (tmp_path / "vol" / ".syncd" / "leases" / "gen-0000000001.json").write_bytes(
            encode(theirs))
        with pytest.raises(LeaseLost, match="another holder"):
            a.fence().check()
        with pytest.raises(LeaseLost):
            await a.renew()


async def test_renewals_on_a_full_volume_leave_no_temp_files(tmp_path: Path) -> None:
    """Every renewal writes a heartbeat through a temp file. On a full disk the write fails
    (the renewal with it, transiently) and the empty file it had created must go too: it
    used to stay, one per attempt, under .syncd/leases/tmp."""
    from syncd.durable import write_new
    from syncd.lease.volume import VolumeLease
    from tests.lease.full_disk import fill, small_tmpfs

    with small_tmpfs(tmp_path / "vol") as root:
        store = VolumeLease(root)
        await store.prepare()
        clock = Clock()
        a = _lease(store, clock, "a")
        await a.try_acquire()
        fill(root)
        for _ in range(5):
            clock.now += 1
            assert await a.renew() is False  # NoSpace: transient, inside the deadline
        a.fence().check()
        assert os.listdir(root / ".syncd/leases/tmp") == []
        with pytest.raises(OSError, match="No space left"):
            write_new(root / "record", b"x" * 10000)
        assert not (root / "record").exists()
