"""syncd.stores.seeding: hard links only where they survive, verified copies elsewhere.

The FUSE tests run on two `weed mount`s of one SeaweedFS directory, two hosts sharing a
network volume. There a hard link whose original name is removed through the other mount
becomes unreadable through the first (issue 17), while the same steps within one mount are
fine: so the filesystem's kind decides, and the audit's scenario must hold on copies.
"""

from __future__ import annotations

import asyncio
import errno
import os
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from syncd.fskind import fs_type, local_exclusive
from syncd.listing import Entry, Recorded, fingerprint
from syncd.stores import seeding
from syncd.stores.base import OpenFence
from syncd.stores.versions import Versions
from syncd.stores.volume import VolumeStore
from syncd.verify import OWN_ALGO, Digest, hash_bytes
from tests.fences import CountdownFence
from tests.fuse_mounts import SharedVolume
from tests.lease.full_disk import small_tmpfs

V1 = {"same.bin": b"S" * 70_000, "sub/config.json": b'{"v": 1}'}
V2 = {"same.bin": V1["same.bin"], "sub/config.json": b'{"v": 2, "longer": true}'}
SEE_S = 10.0


def volume_at(root: Path) -> VolumeStore:
    return VolumeStore(root, part_size=8 << 20, multipart_threshold=8 << 20)


def recorded(path: Path, data: bytes | None = None) -> Recorded:
    """What syncd records after publishing `path` and verifying it held `data`."""
    st = os.stat(path)
    data = path.read_bytes() if data is None else data
    return Recorded(f"{len(data)}:etag",
                    fingerprint(Entry(path.name, st.st_size, mtime_ns=st.st_mtime_ns,
                                      inode=st.st_ino)),
                    f"{OWN_ALGO}:{hash_bytes(data, [OWN_ALGO])[OWN_ALGO]}")


async def publish(versions: Versions, version: str, files: dict[str, bytes],
                  seed_from: str | None = None) -> tuple[int, dict[str, Entry]]:
    """Build `version` the way artifact_pull does (seed, then write the rest) and switch."""
    await versions.prepare(version, OpenFence())
    linked, copied = 0, {}
    if seed_from is not None:
        old = versions.content(seed_from)
        unchanged = {k: recorded(old / k) for k, data in files.items()
                     if (old / k).exists() and (old / k).read_bytes() == data}
        seeded = await versions.seed(old, version, unchanged, OpenFence())
        linked, copied = seeded.linked, seeded.copied
    content = versions.content(version)
    for rel, data in files.items():
        if not (content / rel).exists():
            (content / rel).parent.mkdir(parents=True, exist_ok=True)
            (content / rel).write_bytes(data)
    await versions.switch(version, OpenFence())
    return linked, copied


def read_all(top: Path) -> dict[str, bytes]:
    return {p.relative_to(top).as_posix(): p.read_bytes()
            for p in sorted(top.rglob("*")) if p.is_file()}


def until_readable(path: Path) -> bytes:
    deadline = time.monotonic() + SEE_S
    while True:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# --- local disk ---------------------------------------------------------------------------------


def test_seeding_decides_links_on_a_local_disk_once_per_root(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    assert local_exclusive(fs_type(tmp_path)), "tmp_path is expected on a local disk"
    with capture_logs() as logs:
        first = seeding.decide(tmp_path, scratch, OpenFence())
        again = seeding.decide(tmp_path, scratch, CountdownFence(allowed=0))  # no probe now
    assert first == again
    assert first.links and first.reason == "hard links outlive their other name"
    assert [e["event"] for e in logs].count("seeding_decided") == 1
    assert list(scratch.iterdir()) == []  # the probe cleans up after itself


def test_seeding_probe_writes_nothing_with_a_lost_lease(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="lease taken over"):
        seeding.probe(tmp_path, CountdownFence(allowed=1))  # created, then fenced
    assert list(tmp_path.iterdir()) == []


def test_seeding_copy_file_falls_back_to_a_plain_copy_across_filesystems(
    tmp_path: Path,
) -> None:
    """tmpfs -> disk: no reflink, no copy_file_range (EXDEV): bytes read and written."""
    with small_tmpfs(tmp_path / "tmpfs", size="16m") as shm:
        _copy_across(shm, tmp_path)


def _copy_across(shm: Path, tmp_path: Path) -> None:
    data = os.urandom(5 << 20)
    src = shm / f"syncd-test-{os.getpid()}-{time.monotonic_ns()}"
    src.write_bytes(data)
    try:
        digest = Digest([OWN_ALGO])
        with src.open("rb") as s, (tmp_path / "copy").open("wb") as d:
            how = seeding.copy_file(s.fileno(), d.fileno(), len(data), digest)
    finally:
        src.unlink()
    assert how == "copy"
    assert (tmp_path / "copy").read_bytes() == data
    assert digest.results()[OWN_ALGO] == hash_bytes(data, [OWN_ALGO])[OWN_ALGO]


def test_seeding_copy_file_hashes_what_a_fast_copy_wrote(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    (tmp_path / "src").write_bytes(data)
    digest = Digest([OWN_ALGO])
    with (tmp_path / "src").open("rb") as s, (tmp_path / "copy").open("wb+") as d:
        how = seeding.copy_file(s.fileno(), d.fileno(), len(data), digest)
    assert how in ("reflink", "copy_file_range")
    assert (tmp_path / "copy").read_bytes() == data
    assert digest.results()[OWN_ALGO] == hash_bytes(data, [OWN_ALGO])[OWN_ALGO]


# --- two hosts sharing a FUSE volume ------------------------------------------------------------


def test_weed_mounts_lose_a_hard_link_removed_through_the_other_mount(
    shared_volume: SharedVolume,
) -> None:
    """The experiment behind the rule: what breaks, and why one host's probe cannot see it."""
    a, b = shared_volume.a, shared_volume.b
    fs = fs_type(a)
    assert fs.name == "fuse" and not local_exclusive(fs)
    assert seeding.probe(a, OpenFence()) is None  # within one mount, links survive
    (a / "orig").write_bytes(b"shared bytes")
    os.link(a / "orig", a / "link")
    assert until_readable(b / "link") == b"shared bytes"
    os.unlink(b / "orig")  # the other host prunes the old version
    assert (b / "link").read_bytes() == b"shared bytes"
    assert os.stat(a / "link").st_size == len(b"shared bytes")  # still listed and stat-able
    with pytest.raises(OSError) as lost:
        (a / "link").read_bytes()
    assert lost.value.errno == errno.ENOENT


async def test_versions_on_weed_mounts_keep_the_current_version_readable_on_every_host(
    shared_volume: SharedVolume,
) -> None:
    """The audit's scenario: version 1 published through host a, version 2 (sharing an
    unchanged file) through host b, version 1 pruned by b; host a reads version 2 whole."""
    a, b = volume_at(shared_volume.a), volume_at(shared_volume.b)
    await a.check(writable=True)
    await b.check(writable=True)
    assert not seeding.decide(b.root, b.tmp_dir, OpenFence()).links
    await publish(Versions(a, "llama"), "v1", V1)
    on_b = Versions(b, "llama")
    until_readable(on_b.content("v1") / "same.bin")
    linked, copied = await publish(on_b, "v2", V2, seed_from="v1")
    assert (linked, sorted(copied)) == (0, ["same.bin"])
    copy = on_b.content("v2") / "same.bin"
    assert fingerprint(copied["same.bin"]) == recorded(copy).dst  # what the pass records
    await on_b.remove("v1", OpenFence())
    assert await on_b.on_disk() == ["v2"]
    deadline = time.monotonic() + SEE_S
    while read_all(shared_volume.a / "llama") != V2:  # b's switch reaches a within ms
        assert time.monotonic() < deadline, read_all(shared_volume.a / "llama")
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.5)  # past the kernel's 1 s entry cache: still whole
    assert read_all(shared_volume.a / "llama") == V2
    assert read_all(shared_volume.b / "llama") == V2
    assert list(b.tmp_dir.iterdir()) == []


async def test_versions_on_weed_mounts_never_seed_a_copy_that_differs_from_the_record(
    shared_volume: SharedVolume,
) -> None:
    """Same size and stat as recorded, other bytes (changed behind syncd's back): the copy's
    checksum tells, nothing is seeded and no temporary stays; the file is downloaded."""
    b = volume_at(shared_volume.b)
    await b.check(writable=True)
    versions = Versions(b, "llama")
    await publish(versions, "v1", V1)
    old = versions.content("v1")
    await versions.prepare("v2", OpenFence())
    expected = {"same.bin": recorded(old / "same.bin", data=b"T" * len(V1["same.bin"]))}
    seeded = await versions.seed(old, "v2", expected, OpenFence())
    assert (seeded.linked, seeded.copied) == (0, {})
    assert read_all(versions.content("v2")) == {}
    assert list(b.tmp_dir.iterdir()) == []
