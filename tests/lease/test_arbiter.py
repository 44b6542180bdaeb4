"""Who arbitrates a volume's lease: the filesystem where link() is exclusive, S3 elsewhere.

The FUSE cases run on two `weed mount`s of one SeaweedFS directory, standing for two hosts
sharing a network volume (tests/conftest.py measures why its link() cannot be trusted)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from syncd.errors import LeaseError, LeaseLost, LeaseUnsupported
from syncd.lease.arbiter import Place, VolumeArbiter, keys_of
from syncd.lease.backend import Backend
from syncd.lease.record import LeaseRecord, me
from syncd.lease.s3 import S3Lease
from syncd.stores.s3 import S3Store
from tests.conftest import new_bucket_name
from tests.fuse_mounts import SharedVolume
from tests.lease.backends import TRANSFER, s3_config
from tests.servers import S3Server

SETTLE_S = 0.3


@contextlib.asynccontextmanager
async def arbiter(root: Path, server: S3Server, bucket: str, *, forced: bool = False,
                  force_ok: bool = False, place: Place | None = None
                  ) -> AsyncIterator[VolumeArbiter]:
    stores: list[S3Store] = []

    async def in_s3(volume_id: str) -> Backend:
        store = S3Store(s3_config(server), TRANSFER, bucket, "")
        await store.__aenter__()
        stores.append(store)
        return S3Lease(store, server.endpoint_url, str(root), keys=keys_of(volume_id))
    chosen = VolumeArbiter(root, place or Place(server.endpoint_url, bucket), in_s3,
                           forced=forced, force_ok=force_ok, settle_s=SETTLE_S)
    try:
        yield chosen
    finally:
        for store in stores:
            await store.close()


def _record(target: str, gen: int, name: str) -> LeaseRecord:
    return LeaseRecord(target=target, gen=gen, holder=replace(me(name), id=name, nonce=name),
                       ttl_s=60, acquired_wall=time.time(), renewed_wall=time.time())


def _keys(server: S3Server, bucket: str) -> list[str]:
    listed = server.client().list_objects_v2(Bucket=bucket).get("Contents", [])
    return sorted(o["Key"] for o in listed)


async def test_a_local_filesystem_arbitrates_its_own_volume_lease(
        tmp_path: Path, moto_s3: S3Server) -> None:
    bucket = new_bucket_name()
    moto_s3.client().create_bucket(Bucket=bucket)
    async with arbiter(tmp_path, moto_s3, bucket) as chosen:
        await chosen.prepare()
        assert "the filesystem" in chosen.arbiter
        view = await chosen.read()
        assert await chosen.create(view, _record(str(tmp_path), view.next_gen, "a"))
    assert (tmp_path / ".syncd/leases/gen-0000000001.json").exists()
    assert not (tmp_path / ".syncd/volume.json").exists()
    assert _keys(moto_s3, bucket) == []  # nothing in S3


async def test_a_fuse_volume_is_leased_in_s3_and_both_mounts_find_one_lease(
        shared_volume: SharedVolume, seaweedfs_s3: S3Server) -> None:
    bucket = new_bucket_name()
    seaweedfs_s3.client().create_bucket(Bucket=bucket)
    async with arbiter(shared_volume.a, seaweedfs_s3, bucket) as a, \
            arbiter(shared_volume.b, seaweedfs_s3, bucket) as b:
        # the first two instances ever, on two hosts, create the volume's id at once
        await asyncio.gather(a.prepare(), b.prepare())
        assert "s3://" in a.arbiter and "fuse" in a.arbiter
        ids = {json.loads((m / ".syncd/volume.json").read_bytes())["id"]
               for m in (shared_volume.a, shared_volume.b)}
        assert len(ids) == 1
        volume_id = ids.pop()
        for r in range(12):  # each round both decide on the same view, then race
            views = await asyncio.gather(a.read(), b.read())
            assert views[0].gen == views[1].gen == r
            won = await asyncio.gather(
                a.create(views[0], _record(a.target, views[0].next_gen, f"a{r}")),
                b.create(views[1], _record(b.target, views[1].next_gen, f"b{r}")))
            assert sum(token is not None for token in won) == 1, (r, won)
        assert not (shared_volume.a / ".syncd/leases").exists()  # the filesystem played no part
    assert f".syncd/volumes/{volume_id}/.syncd/lease.json" not in _keys(seaweedfs_s3, bucket)
    assert f".syncd/volumes/{volume_id}/lease.json" in _keys(seaweedfs_s3, bucket)


async def test_lease_volume_on_fuse_is_refused_unless_forced_knowingly(
        shared_volume: SharedVolume, seaweedfs_s3: S3Server) -> None:
    bucket = new_bucket_name()
    seaweedfs_s3.client().create_bucket(Bucket=bucket)
    async with arbiter(shared_volume.a, seaweedfs_s3, bucket, forced=True) as refused:
        with pytest.raises(LeaseUnsupported) as caught:
            await refused.prepare()
    message = str(caught.value)
    assert "fuse" in message and "exclusive" in message and "\n" not in message
    assert "force_volume" in (caught.value.hint or "")
    assert not (shared_volume.a / ".syncd").exists()  # refused before writing anything
    async with arbiter(shared_volume.a, seaweedfs_s3, bucket, forced=True,
                       force_ok=True) as forced:
        await forced.prepare()
        assert "the filesystem" in forced.arbiter
    assert (shared_volume.a / ".syncd/leases").is_dir()


async def test_a_volume_arbitrated_in_one_bucket_refuses_a_config_naming_another(
        tmp_path: Path, shared_volume: SharedVolume, seaweedfs_s3: S3Server) -> None:
    first, other = new_bucket_name(), new_bucket_name()
    for name in (first, other):
        seaweedfs_s3.client().create_bucket(Bucket=name)
    async with arbiter(shared_volume.a, seaweedfs_s3, first) as a:
        await a.prepare()
    async with arbiter(shared_volume.b, seaweedfs_s3, other) as b:
        with pytest.raises(LeaseError) as caught:
            await b.prepare()
    assert f"s3://{first}" in str(caught.value) and f"s3://{other}" in str(caught.value)
    assert "[lease] bucket" in (caught.value.hint or "")
    assert _keys(seaweedfs_s3, other) == []  # no second lease was created


async def test_a_damaged_volume_id_is_an_error_never_a_new_id(
        shared_volume: SharedVolume, seaweedfs_s3: S3Server) -> None:
    bucket = new_bucket_name()
    seaweedfs_s3.client().create_bucket(Bucket=bucket)
    (shared_volume.a / ".syncd").mkdir()
    (shared_volume.a / ".syncd/volume.json").write_bytes(b'{"v": 1, "id": "x')
    async with arbiter(shared_volume.a, seaweedfs_s3, bucket) as a:
        with pytest.raises(LeaseError) as caught:
            await a.prepare()
    assert "volume.json" in str(caught.value) and "not a volume id" in str(caught.value)
    assert (shared_volume.a / ".syncd/volume.json").read_bytes() == b'{"v": 1, "id": "x'


async def test_reading_a_volume_that_never_had_a_lease_creates_nothing(
        shared_volume: SharedVolume, seaweedfs_s3: S3Server) -> None:
    """`syncd lease status` reads without preparing: it must not write on the volume."""
    bucket = new_bucket_name()
    seaweedfs_s3.client().create_bucket(Bucket=bucket)
    async with arbiter(shared_volume.a, seaweedfs_s3, bucket) as a:
        view = await a.read()
    assert not view.exists
    assert not (shared_volume.a / ".syncd").exists()


async def test_an_arbiter_that_ignores_conditional_writes_is_refused_before_the_volume_records_it(
        shared_volume: SharedVolume, rclone_s3: S3Server) -> None:
    """rclone serve s3 lets every conditional PUT through: it cannot arbitrate, and the
    volume must not remember it (a corrected config would then be refused)."""
    bucket = new_bucket_name()
    rclone_s3.client().create_bucket(Bucket=bucket)
    async with arbiter(shared_volume.a, rclone_s3, bucket) as a:
        with pytest.raises(LeaseUnsupported) as caught:
            await a.prepare()
    assert "ignores S3 conditional writes" in str(caught.value)
    assert str(shared_volume.a) in str(caught.value)
    assert "[lease] bucket" in (caught.value.hint or "")
    assert not (shared_volume.a / ".syncd/volume.json").exists()


async def test_a_filesystem_mounted_over_the_root_later_ends_the_lease_and_is_decided_anew(
        tmp_path: Path, moto_s3: S3Server) -> None:
    """The root was a plain directory when the arbiter was chosen; a volume mounted over it
    since is another filesystem, whose lease is not the one held."""
    root = tmp_path / "vol"
    root.mkdir()
    async with arbiter(root, moto_s3, new_bucket_name()) as chosen:
        await chosen.prepare()
        view = await chosen.read()
        record = _record(str(root), view.next_gen, "a")
        token = await chosen.create(view, record)
        assert token is not None
        mount = ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(root)]
        await asyncio.to_thread(subprocess.run, mount, check=True)
        try:
            with pytest.raises(LeaseLost) as caught:
                await chosen.renew(record, token)
            assert "changed from" in str(caught.value) and "tmpfs" in str(caught.value)
            view = await chosen.read()  # decided and prepared anew, on the new filesystem
            assert not view.exists and "tmpfs" in chosen.arbiter
            assert await chosen.create(view, _record(str(root), view.next_gen, "b"))
            assert (root / ".syncd/leases/gen-0000000001.json").exists()
        finally:
            await asyncio.to_thread(subprocess.run, ["umount", "-l", str(root)], check=True)
