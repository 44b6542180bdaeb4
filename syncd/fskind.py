"""Which kind of filesystem a path lives on, and whether syncd may rely on it locally.

Some guarantees syncd builds on hold only where one kernel owns the filesystem: an
O_EXCL create or a link() that fails when the name exists (lease arbitration), a hard link
that stays readable after its other name is removed (artifact seeding). On a network or
FUSE filesystem each host has its own caches and the server decides: the shared SeaweedFS
volume in tests/conftest.py lets two mounts both win one O_EXCL create or link(), and a
hard link whose original name is removed through the other mount becomes unreadable
(issue 17). So callers ask `local_exclusive(fs_type(path))` and take the careful road
otherwise.

The kind comes from statfs(2)'s `f_type` (the superblock magic of linux/magic.h), not from
the mount table: it names the filesystem actually serving `path`, whatever bind mounts or
namespaces sit in between. Linux only; elsewhere every path is of an unknown kind.
"""

from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass

_STATFS_BYTES = 256  # struct statfs is 120 bytes on 64-bit Linux; room to spare

# f_type values (linux/magic.h and the filesystems' own headers) by name.
MAGIC: dict[int, str] = {
    0xEF53: "ext4",  # ext2, ext3 and ext4 share one magic
    0x58465342: "xfs",
    0x9123683E: "btrfs",
    0x01021994: "tmpfs",
    0x858458F6: "ramfs",
    0x2FC12FC1: "zfs",
    0xF2F52010: "f2fs",
    0x794C7630: "overlay",
    0xCA451A4E: "bcachefs",
    0x52654973: "reiserfs",
    0x3153464A: "jfs",
    0x65735546: "fuse",  # every FUSE filesystem: weed mount, s3fs, sshfs, virtiofs...
    0x6969: "nfs",
    0xFF534D42: "cifs",
    0xFE534D42: "smb2",
    0x517B: "smb",
    0x01021997: "9p",
    0x00C36400: "ceph",
    0x5346414F: "afs",
    0x01161970: "gfs2",
    0x7461636F: "ocfs2",
    0x0BD00BD0: "lustre",
    0x47504653: "gpfs",
    0x19830326: "beegfs",
}

# Filesystems one kernel owns whose link() and O_EXCL create are exclusive and whose hard
# links keep working: everything else (network, cluster, FUSE, unknown) is not trusted.
LOCAL_EXCLUSIVE = frozenset({"ext4", "xfs", "btrfs", "tmpfs", "ramfs", "zfs", "f2fs",
                             "overlay", "bcachefs", "reiserfs", "jfs"})


@dataclass(frozen=True, slots=True)
class FsType:
    """A filesystem kind: `name` from MAGIC ("unknown" for a magic not listed there) and
    the raw statfs `magic` (0 where it cannot be known)."""

    name: str
    magic: int

    def __str__(self) -> str:
        return f"{self.name} (0x{self.magic:x})"


def fs_type(path: str | os.PathLike[str]) -> FsType:
    """The kind of filesystem `path` is on (statfs follows symlinks, as a reader would).
    Raises OSError (FileNotFoundError, ...) when `path` cannot be looked up."""
    if not sys.platform.startswith("linux"):
        return FsType("unknown", 0)
    buf = ctypes.create_string_buffer(_STATFS_BYTES)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.statfs(os.fsencode(path), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), os.fspath(path))
    # f_type is struct statfs's first field, a C long (__fsword_t); magics are 32-bit values
    magic = ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF
    return FsType(MAGIC.get(magic, "unknown"), magic)


def local_exclusive(fs: FsType) -> bool:
    """True for a local filesystem known to make link() and O_EXCL creates exclusive and to
    keep hard links readable: ext2/3/4, xfs, btrfs, tmpfs, zfs, f2fs, overlay and the like.
    False for FUSE, NFS, CIFS/SMB, 9p, cluster filesystems and any kind not known here."""
    return fs.name in LOCAL_EXCLUSIVE
