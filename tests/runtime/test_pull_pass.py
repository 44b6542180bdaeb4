"""One pull pass (`runtime.mirror.cycle`) for real: a bucket on a test S3 server, a volume on
the local disk or on two FUSE mounts of one SeaweedFS directory (two hosts), and `syncd
check`'s view of the result (`runtime.drift`).

What a holder writes it writes under its fence (a holder fenced out midway must not report
stale readiness after the takeover), what a killed holder left is removed by the next one,
and `check` names a file that is missing, different or unreadable as drift (issue 17).
"""

from __future__ import annotations

import errno
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from syncd import config as config_mod
from syncd import published, status
from syncd.errors import LeaseLost
from syncd.runtime import drift
from syncd.runtime.mirror import cycle, opened
from syncd.runtime.passes import Memory
from syncd.stores.base import Fence, OpenFence
from syncd.stores.versions import Versions
from syncd.stores.volume import VolumeStore
from tests.conftest import new_bucket_name
from tests.daemons import ART
from tests.fences import CountdownFence
from tests.fuse_mounts import SharedVolume
from tests.mirrors import syncd, write_config
from tests.servers import S3Server

V1 = {"llama/w.bin": b"W" * 50_000, "llama/config.json": b'{"v": 1}', "readme.md": b"hi"}
SEE_S = 10.0


class Bucket:
    def __init__(self, server: S3Server) -> None:
        self.server = server
        self.name = new_bucket_name()
        self.client = server.client()
        self.client.create_bucket(Bucket=self.name)

    def put(self, files: dict[str, bytes]) -> None:
        for key, data in files.items():
            self.client.put_object(Bucket=self.name, Key=f"models/{key}", Body=data)

    def config(self, tmp_path: Path, root: Path, name: str = "c.toml") -> Path:
        return write_config(tmp_path / name, self.server.endpoint_url, self.name,
                            direction="pull", root=root, extra=ART)


@pytest.fixture
def moto_bucket(moto_s3: S3Server) -> Iterator[Bucket]:
    yield Bucket(moto_s3)


async def run_pass(cfg: Path, fence: Fence | None = None,
                   memory: Memory | None = None) -> Any:
    loaded = config_mod.load(cfg)
    return await cycle(loaded, loaded.mirror("m"), log=structlog.get_logger(), fence=fence,
                       memory=memory)


async def check(cfg: Path) -> list[drift.Difference]:
    loaded = config_mod.load(cfg)
    mirror = loaded.mirror("m")
    async with opened(loaded, mirror, write=False) as sides:
        return await drift.differences(sides, mirror, loaded)


def present(paths: list[Path]) -> list[Path]:
    """Those of `paths` that exist, dangling links included."""
    return [p for p in paths if os.path.lexists(p)]


def v1_mirror(bucket: Bucket, tmp_path: Path) -> tuple[Path, Path]:
    """An empty volume and a pull mirror of a bucket holding version 1: (root, config)."""
    root = tmp_path / "vol"
    root.mkdir()
    bucket.put(V1)
    return root, bucket.config(tmp_path, root)


def versions_at(root: Path) -> Versions:
    return Versions(VolumeStore(root, part_size=8 << 20, multipart_threshold=8 << 20), "llama")


# --- fencing ------------------------------------------------------------------------------------


async def test_pass_fenced_midway_leaves_the_successors_status_alone(
    moto_bucket: Bucket, tmp_path: Path,
) -> None:
    """(b) of issue 17: the status a successor wrote is what readiness reads afterwards."""
    root, cfg = v1_mirror(moto_bucket, tmp_path)
    successor = status.MirrorStatus("m", updated_wall=123.0, error="the successor's word")
    await status.save(root, successor, OpenFence())
    written = status.path_for(root, "m").read_bytes()
    fence = CountdownFence(allowed=2)  # the volume probe and the pass start; then refused
    with pytest.raises(LeaseLost):
        await run_pass(cfg, fence)
    assert fence.refused >= 2  # the publication, then the status write after it
    assert status.path_for(root, "m").read_bytes() == written
    assert not published.path_for(root, "m").exists()
    assert sorted(p.name for p in root.iterdir()) == [".syncd"]


async def test_status_save_with_a_lost_lease_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(LeaseLost):
        await status.save(tmp_path, status.MirrorStatus("m", updated_wall=1.0),
                          CountdownFence(allowed=0))
    assert not status.path_for(tmp_path, "m").exists()


# --- leftovers of a killed holder ---------------------------------------------------------------


async def test_first_pass_of_a_new_lease_removes_a_killed_holders_temporaries_only(
    moto_bucket: Bucket, tmp_path: Path,
) -> None:
    root, cfg = v1_mirror(moto_bucket, tmp_path)
    memory = Memory()
    await run_pass(cfg, CountdownFence(1000, generation=1), memory)
    versions = versions_at(root)
    current = await versions.current()
    assert current is not None
    meta = root / ".syncd"
    hexes = iter(uuid.uuid4().hex for _ in range(20))
    # what a holder killed midway leaves: a switch's link, durable.replace's temp files
    leftovers = [root / f".llama.syncd-{next(hexes)[:12]}",
                 meta / "state" / f".m.json.{next(hexes)}.tmp",
                 meta / "status" / f".m.json.{next(hexes)}.tmp"]
    leftovers[0].symlink_to(versions.link_target(current))
    for path in leftovers[1:]:
        path.write_bytes(b"half a record")
    lookalikes = [root / ".llama.syncd-notours", root / f".llama.syncd-{next(hexes)[:12]}x",
                  root / f"llama.syncd-{next(hexes)[:12]}",
                  meta / "state" / ".m.json.tmp", meta / "state" / f".m.json.{next(hexes)}.tmp~",
                  meta / "status" / f".other.json.{next(hexes)}.tmp",  # another mirror's
                  root / f".m.json.{next(hexes)}.tmp"]  # not where syncd writes records
    for path in lookalikes:
        path.write_bytes(b"not syncd's")

    await run_pass(cfg, CountdownFence(1000, generation=1), memory)  # same lease: no sweep
    assert present(leftovers) == leftovers
    await run_pass(cfg, CountdownFence(1000, generation=2), memory)  # a new holder
    assert present(leftovers) == []
    assert all(p.read_bytes() == b"not syncd's" for p in lookalikes)
    assert await versions.current() == current
    assert {d.key for d in await check(cfg)} == {p.name for p in lookalikes
                                                 if p.parent == root}  # extra files


async def test_sweep_under_a_lost_lease_removes_nothing(
    moto_bucket: Bucket, tmp_path: Path,
) -> None:
    root = tmp_path / "vol"
    (root / ".syncd" / "status").mkdir(parents=True)
    leftover = root / ".syncd" / "status" / f".m.json.{uuid.uuid4().hex}.tmp"
    leftover.write_bytes(b"x")
    moto_bucket.put(V1)
    with pytest.raises(LeaseLost):
        await run_pass(moto_bucket.config(tmp_path, root), CountdownFence(allowed=1))
    assert leftover.exists()


# --- check: drift named as drift ----------------------------------------------------------------


async def test_check_reports_files_changed_or_deleted_by_hand_as_drift(
    moto_bucket: Bucket, tmp_path: Path,
) -> None:
    """Before: hashing a changed file through the artifact's link failed with "path
    conflicts" instead of reporting the file as different."""
    root, cfg = v1_mirror(moto_bucket, tmp_path)
    await run_pass(cfg)
    assert await check(cfg) == []
    (root / "llama" / "w.bin").write_bytes(b"X" * 50_000)  # same size, other bytes
    (root / "llama" / "config.json").unlink()
    assert [str(d) for d in await check(cfg)] == ["missing  llama/config.json",
                                                  "differs  llama/w.bin"]
    cli = syncd("check", "-c", str(cfg))
    assert cli.code == 4, cli.stderr
    assert cli.stdout.splitlines() == ["[m] missing  llama/config.json",
                                       "[m] differs  llama/w.bin", "2 difference(s)"]


# --- two hosts on one FUSE volume ---------------------------------------------------------------


def wait_readable(path: Path) -> None:
    deadline = time.monotonic() + SEE_S
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} not visible"
        time.sleep(0.05)


def _unreadable(path: Path) -> OSError:
    """The error reading `path` gives, waiting up to SEE_S for another host's change to
    reach this mount (weed mount may serve its cached content for a moment)."""
    deadline = time.monotonic() + SEE_S
    while True:
        try:
            path.read_bytes()
        except OSError as exc:
            return exc
        assert time.monotonic() < deadline, f"{path} is still readable"
        time.sleep(0.05)


async def test_pull_passes_on_two_hosts_keep_every_host_reading_the_current_version(
    seaweedfs_s3: S3Server, shared_volume: SharedVolume, tmp_path: Path,
) -> None:
    """The audit's scenario through real passes, then the lost hard link of an older syncd
    reproduced by hand: `check` on the host that lost it reports the file unreadable (it
    said "in sync"), and the next version is built there anyway (every pass used to fail)."""
    bucket = Bucket(seaweedfs_s3)
    a, b = shared_volume.a, shared_volume.b
    cfg_a, cfg_b = bucket.config(tmp_path, a, "a.toml"), bucket.config(tmp_path, b, "b.toml")
    bucket.put(V1)
    await run_pass(cfg_a)
    v2 = {**V1, "llama/config.json": b'{"v": 2, "longer": true}'}
    bucket.put(v2)
    await run_pass(cfg_b)  # seeds w.bin from version 1, switches, prunes version 1
    assert len(await versions_at(b).on_disk()) == 1
    for host in (a, b):
        wait_readable(host / "llama" / "config.json")
        assert (host / "llama" / "w.bin").read_bytes() == v2["llama/w.bin"]
        assert (host / "llama" / "config.json").read_bytes() == v2["llama/config.json"]
    assert await check(cfg_a) == []

    # an older syncd's seeding: the current file is a hard link whose other name host b
    # removes; host a still lists and stats it, and cannot open it
    real_a, real_b = (a / "llama").resolve(), (b / "llama").resolve()
    os.rename(real_a / "w.bin", real_a / "w.orig")
    os.link(real_a / "w.orig", real_a / "w.bin")
    wait_readable(real_b / "w.orig")
    os.unlink(real_b / "w.orig")
    lost = _unreadable(a / "llama" / "w.bin")  # once host a's mount has seen the unlink
    assert lost.errno == errno.ENOENT
    assert (a / "llama" / "w.bin").stat().st_size == len(v2["llama/w.bin"])
    found = await check(cfg_a)
    assert [str(d) for d in found] == ["unreadable llama/w.bin (No such file or directory)"]
    cli = syncd("check", "-c", str(cfg_a))
    assert cli.code == 4, cli.stderr
    assert "[m] unreadable llama/w.bin" in cli.stdout and "conflict" not in cli.stdout

    v3 = {**v2, "llama/config.json": b'{"v": 3}'}
    bucket.put(v3)
    _, stats = await run_pass(cfg_a)  # w.bin cannot be seeded from there: downloaded
    assert stats.failed == 0
    assert (a / "llama" / "w.bin").read_bytes() == v3["llama/w.bin"]
    assert await check(cfg_a) == []
