"""Who arbitrates a volume's lease: the filesystem where link() is exclusive, S3 elsewhere.

The FUSE cases run on two `weed mount`s of one SeaweedFS directory, standing for two hosts
sharing a network volume (tests/conftest.py measures why its link() cannot be trusted)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from syncd.errors import LeaseError, LeaseHeld, LeaseLost, LeaseUnsupported
from syncd.lease.arbiter import Place, VolumeArbiter, keys_of
from syncd.lease.backend import Backend
from syncd.lease.record import LeaseRecord, Timing, me
from syncd.lease.s3 import S3Lease
from syncd.lease.volume import VolumeLease
from syncd.stores.s3 import S3Store
from tests.conftest import new_bucket_name
from tests.fuse_mounts import SharedVolume
from tests.lease.backends import TRANSFER, s3_config
from tests.servers import S3Server

SETTLE_S = 0.3
TIMING = Timing(ttl_s=1.0, renew_interval_s=0.2, renew_deadline_s=0.6, skew_margin_s=0.2)


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
    chosen = VolumeArbiter(root, place or Place(server.endpoint_url, bucket), in_s3, TIMING,
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
    recorded = json.loads((tmp_path / ".syncd/volume.json").read_bytes())
    assert recorded["arbiter"] == {"kind": "link"}  # so a host reaching it over NFS follows
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
    assert "volume.json" in str(caught.value) and "not a volume record" in str(caught.value)
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


def _record_by_hand(root: Path, arbiter: dict[str, str]) -> str:
    volume_id = uuid.uuid4().hex
    (root / ".syncd").mkdir(exist_ok=True)
    (root / ".syncd/volume.json").write_text(json.dumps(
        {"v": 1, "id": volume_id, "created_wall": 0, "arbiter": arbiter}))
    return volume_id


async def test_a_host_where_the_volume_is_local_follows_the_s3_lease_its_other_hosts_recorded(
        tmp_path: Path, moto_s3: S3Server) -> None:
    """An NFS server (or a VM host under virtiofs) sees ext4 where its clients see NFS: it
    must contend for the clients' S3 lease, not hold a link() lease of its own."""
    bucket = new_bucket_name()
    moto_s3.client().create_bucket(Bucket=bucket)
    volume_id = _record_by_hand(tmp_path, {"kind": "s3", "url": moto_s3.endpoint_url,
                                           "bucket": bucket})
    async with arbiter(tmp_path, moto_s3, bucket) as chosen:
        await chosen.prepare()
        assert chosen.arbiter.startswith(f"s3://{bucket}")
        view = await chosen.read()
        assert await chosen.create(view, _record(str(tmp_path), view.next_gen, "server"))
    assert f".syncd/volumes/{volume_id}/lease.json" in _keys(moto_s3, bucket)
    assert not (tmp_path / ".syncd/leases").exists()
    async with arbiter(tmp_path, moto_s3, bucket, forced=True, force_ok=True) as forced:
        with pytest.raises(LeaseError) as caught:  # a second, link() lease: refused
            await forced.prepare()
    assert 'lease = "volume" would hold a second lease' in str(caught.value)


async def test_a_network_mount_of_a_volume_recorded_as_link_arbitrated_is_refused(
        shared_volume: SharedVolume, seaweedfs_s3: S3Server) -> None:
    _record_by_hand(shared_volume.a, {"kind": "link"})
    async with arbiter(shared_volume.b, seaweedfs_s3, new_bucket_name()) as b:
        with pytest.raises(LeaseUnsupported) as caught:
            await b.prepare()
    assert "recorded in" in str(caught.value) and "fuse" in str(caught.value)


async def test_a_volume_record_removed_under_a_holder_ends_its_lease(
        shared_volume: SharedVolume, seaweedfs_s3: S3Server) -> None:
    """`.syncd/` deleted by hand: another host would create a new id, a second lease; the
    holder finds out at its next renewal and contends again under the new record."""
    bucket = new_bucket_name()
    seaweedfs_s3.client().create_bucket(Bucket=bucket)
    async with arbiter(shared_volume.a, seaweedfs_s3, bucket) as a:
        await a.prepare()
        view = await a.read()
        record = _record(a.target, view.next_gen, "a")
        token = await a.create(view, record)
        assert token is not None
        token = await a.renew(record, token)
        shutil.rmtree(shared_volume.b / ".syncd")
        with pytest.raises(LeaseLost) as caught:
            await a.renew(record, token)
        assert "volume.json" in str(caught.value) and "missing" in str(caught.value)
        assert a.superseded(record)  # nothing more is published under it
        view = await a.read()  # decided anew: a new id, a new lease, free
        assert not view.exists
        assert (shared_volume.a / ".syncd/volume.json").exists()


async def test_s3_waits_for_a_lease_held_through_the_filesystem_before_taking_a_volume(
        shared_volume: SharedVolume, seaweedfs_s3: S3Server) -> None:
    """A syncd from before volume records holds the volume by link(): a new one must not
    start an S3 lease beside it until that holder releases or falls silent."""
    bucket = new_bucket_name()
    seaweedfs_s3.client().create_bucket(Bucket=bucket)
    old = VolumeLease(shared_volume.a)
    await old.prepare()
    view = await old.read()
    held = _record(str(shared_volume.a), view.next_gen, "old")
    assert await old.create(view, held) is not None
    async with arbiter(shared_volume.b, seaweedfs_s3, bucket) as b:
        with pytest.raises(LeaseHeld) as caught:
            await b.prepare()
        assert "held through its filesystem by old" in str(caught.value)
        assert not (shared_volume.b / ".syncd/volume.json").exists()
        await old.renew(held.release(time.time()), None)
        await b.prepare()  # released: S3 takes over
        assert b.arbiter.startswith(f"s3://{bucket}")


async def test_s3_takes_a_volume_whose_filesystem_lease_has_fallen_silent(
        shared_volume: SharedVolume, seaweedfs_s3: S3Server) -> None:
    bucket = new_bucket_name()
    seaweedfs_s3.client().create_bucket(Bucket=bucket)
    old = VolumeLease(shared_volume.a)
    await old.prepare()
    view = await old.read()
    silent = replace(_record(str(shared_volume.a), view.next_gen, "old"), ttl_s=1.0)
    assert await old.create(view, silent)
    async with arbiter(shared_volume.b, seaweedfs_s3, bucket) as b:
        with pytest.raises(LeaseHeld):
            await b.prepare()
        await asyncio.sleep(TIMING.takeover_after(silent.ttl_s) + 0.2)
        await b.prepare()
        assert b.arbiter.startswith(f"s3://{bucket}")


async def test_a_volume_record_nested_past_any_sense_is_an_error_not_a_crash(
        tmp_path: Path, moto_s3: S3Server) -> None:
    (tmp_path / ".syncd").mkdir()
    (tmp_path / ".syncd/volume.json").write_text("[" * 100_000 + "]" * 100_000)
    async with arbiter(tmp_path, moto_s3, new_bucket_name()) as chosen:
        with pytest.raises(LeaseError) as caught:
            await chosen.prepare()
    assert "not a volume record" in str(caught.value) and "RecursionError" in str(caught.value)
