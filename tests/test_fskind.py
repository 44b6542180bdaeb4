"""syncd.fskind: the filesystem kind behind a path, from statfs(2)'s f_type.

It decides whether syncd trusts hard links (artifact seeding) and exclusive creates (lease
arbitration), so a kind must be read from the filesystem serving the path and anything not
known to be a local, single-kernel filesystem must be refused. The FUSE case is tested on the
real SeaweedFS mounts in tests/stores/test_linkprobe.py.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from syncd.fskind import LOCAL_EXCLUSIVE, MAGIC, FsType, fs_type, local_exclusive
from tests.lease.full_disk import small_tmpfs


def stat_magic(path: Path) -> int:
    """What coreutils' `stat -f` reads for the same path: an independent statfs."""
    out = subprocess.run(["stat", "-f", "-c", "%t", str(path)], capture_output=True,
                         text=True, check=True).stdout
    return int(out.strip(), 16)


def test_fs_type_reads_the_magic_statfs_reports(tmp_path: Path) -> None:
    got = fs_type(tmp_path)
    assert got.magic == stat_magic(tmp_path)
    assert got.name == MAGIC.get(got.magic, "unknown")


def test_fs_type_of_tmpfs_is_local_exclusive(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "tmpfs") as shm:
        got = fs_type(shm)
    assert got == FsType("tmpfs", 0x01021994)
    assert local_exclusive(got)


def test_fs_type_of_an_unlisted_filesystem_is_unknown_and_not_trusted() -> None:
    got = fs_type("/proc")
    assert got == FsType("unknown", 0x9FA0)
    assert str(got) == "unknown (0x9fa0)"
    assert not local_exclusive(got)


def test_fs_type_follows_a_symlink_to_the_filesystem_it_points_at(tmp_path: Path) -> None:
    (tmp_path / "to-proc").symlink_to("/proc")
    assert fs_type(str(tmp_path / "to-proc")).magic == 0x9FA0


def test_fs_type_of_a_missing_path_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        fs_type(tmp_path / "nope")
    assert err.value.filename == os.fspath(tmp_path / "nope")


@pytest.mark.parametrize("name", ["fuse", "nfs", "cifs", "smb2", "9p", "ceph", "gfs2",
                                  "lustre"])
def test_local_exclusive_refuses_network_cluster_and_fuse_kinds(name: str) -> None:
    magic = next(m for m, n in MAGIC.items() if n == name)
    assert not local_exclusive(FsType(name, magic))


@pytest.mark.parametrize("name", ["ext4", "xfs", "btrfs", "tmpfs", "zfs", "f2fs", "overlay"])
def test_local_exclusive_trusts_local_single_kernel_kinds(name: str) -> None:
    assert name in MAGIC.values()
    assert local_exclusive(FsType(name, 0))


def test_every_trusted_kind_has_a_magic() -> None:
    assert set(LOCAL_EXCLUSIVE) <= set(MAGIC.values())
