"""How files unchanged between artifact versions get into a new build: hard links where the
volume keeps them, verified copies everywhere else.

A hard link costs nothing, but on a network filesystem every host caches names and inodes
on its own. On two `weed mount`s of one SeaweedFS directory (tests/conftest.py), a link made
through either mount whose original name is then removed through the other stays listed and
stat-able through the mount that did not remove it, but open() fails with ENOENT, for good
(still after 70 s; a fresh mount reads it). So an unchanged file shared between artifact
versions broke the current version once another host pruned the old one (issue 17). Within
one mount the same steps are fine, so no probe run from one host can see the breakage: the
filesystem's kind decides first (`fskind.local_exclusive`) and the probe only confirms links
on the local kinds trusted there. Elsewhere a file is copied: a reflink (FICLONE) where the
filesystem shares extents, else copy_file_range (server-side on NFS 4.2 and SMB, a reflink
on btrfs and xfs), else read and write; the copy is hashed and compared with the checksum
syncd recorded for the original before it is used.

The choice is made once per volume root and process, and logged once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from syncd.fskind import FsType, fs_type, local_exclusive
from syncd.listing import Algo
from syncd.stores.base import Fence
from syncd.stores.staging import hash_range
from syncd.verify import Digest

FICLONE = 0x40049409  # _IOW(0x94, 9, int): share the source's extents (linux/fs.h)
COPY_BYTES = 4 << 20  # read/write granularity of a plain copy
RANGE_BYTES = 64 << 20  # bytes per copy_file_range call, so progress is reported
PROBE_PREFIX = ".linkprobe-"  # in the volume's tmp dir, whose leftovers are cleaned
SEED_SUFFIX = ".seed"  # a copy being made, in the volume's tmp dir until it is complete
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class Seeding:
    """How a volume seeds builds: `links` or copies, on filesystem `fs`, and why."""

    links: bool
    fs: FsType
    reason: str


_decided: dict[tuple[str, int], Seeding] = {}
_lock = threading.Lock()


def decide(root: Path, scratch: Path, fence: Fence) -> Seeding:
    """Whether builds on the volume at `root` may hard-link unchanged files; the probe (on
    local filesystems only) writes in `scratch`, syncd's tmp dir on that volume, under
    `fence`. Cached per root and device, so a volume mounted anew is judged anew."""
    key = (str(root), os.stat(root).st_dev)
    with _lock:
        known = _decided.get(key)
    if known is not None:
        return known
    fs = fs_type(root)
    if not local_exclusive(fs):
        got = Seeding(False, fs, f"a {fs.name} filesystem: a host may lose a hard link once "
                                 "another host removes its other name, so files are copied")
    else:
        failed = probe(scratch, fence)
        got = Seeding(failed is None, fs, failed or "hard links outlive their other name")
    with _lock:
        if key not in _decided:
            _decided[key] = got
            structlog.get_logger().info("seeding_decided", root=str(root), fs=str(fs),
                                        links=got.links, reason=got.reason)
        return _decided[key]


def probe(directory: Path, fence: Fence) -> str | None:
    """Create a file, hard-link it, remove the original through a second path to the same
    directory, read the link back: None when it still holds the bytes, else what failed.
    (On the SeaweedFS mounts this passes within one mount: only the kind tells there.)"""
    token = uuid.uuid4().hex
    name, link = f"{PROBE_PREFIX}{token}", f"{PROBE_PREFIX}{token}.link"
    payload = token.encode() * 64
    first = os.open(directory, _DIR_FLAGS)
    try:
        second = os.open(directory, _DIR_FLAGS)  # the other path: /proc/self/fd/<second>
        try:
            fence.check()
            fd = os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600,
                         dir_fd=first)
            try:
                os.write(fd, payload)
                os.fsync(fd)
            finally:
                os.close(fd)
            fence.check()
            try:
                os.link(name, link, src_dir_fd=first, dst_dir_fd=first)
            except OSError as exc:
                return f"link() fails here ({exc.strerror})"
            fence.check()
            via_proc = f"/proc/self/fd/{second}"
            if os.path.isdir(via_proc):
                os.unlink(f"{via_proc}/{name}")
            else:
                os.unlink(name, dir_fd=second)
            try:
                fd = os.open(link, os.O_RDONLY | os.O_CLOEXEC, dir_fd=first)
                try:
                    got = os.pread(fd, len(payload) + 1, 0)
                finally:
                    os.close(fd)
            except OSError as exc:
                return f"a hard link is unreadable once its other name is gone ({exc.strerror})"
            if got != payload:
                return "a hard link reads other bytes once its other name is gone"
            return None
        finally:
            for leftover in (link, name):  # our own unique names: nobody else's to fence
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover, dir_fd=first)
            os.close(second)
    finally:
        os.close(first)


def copy_verified(old: Path, st: os.stat_result, target: Path, scratch: Path,
                  checksum: str | None, fence: Fence,
                  progress: Callable[[int], None] | None = None) -> os.stat_result | None:
    """Copy `old` (as `st` saw it) to `target` through a temp file in `scratch` (the volume's
    tmp dir, whose leftovers are cleaned); the copy's stat, or None (nothing left behind)
    when `old` cannot be read or its bytes are not the ones `checksum` ("algo:value", what
    syncd recorded) names. Without a checksum, `old` must not change while it is copied:
    the same trust a hard link gets. The temp file and the rename follow fence checks."""
    name, _, want = (checksum or "").partition(":")
    algo = next((a for a in Algo if a.value == name), None)
    try:
        src_fd = os.open(old, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None  # e.g. a hard link this host lost (issue 17): downloaded instead
    temp = scratch / f"{uuid.uuid4().hex}{SEED_SUFFIX}"
    placed = False
    try:
        if _signature(os.fstat(src_fd)) != _signature(st):
            return None
        fence.check()
        dst_fd = os.open(temp, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o644)
        try:
            digest = Digest((algo,)) if algo is not None else None
            try:
                copy_file(src_fd, dst_fd, st.st_size, digest, progress)
            except Unreadable:
                return None
            if digest is not None and algo is not None:
                if digest.results()[algo] != want:
                    return None
            elif _signature(os.fstat(src_fd)) != _signature(st):
                return None
            os.fsync(dst_fd)
        finally:
            os.close(dst_fd)
        fence.check()
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(temp, target)
        placed = True
        return os.stat(target, follow_symlinks=False)
    finally:
        os.close(src_fd)
        if not placed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)


def _signature(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ino)


class Unreadable(Exception):
    """The file being copied could not be read: it is downloaded instead."""


def copy_file(src_fd: int, dst_fd: int, size: int, digest: Digest | None,
              progress: Callable[[int], None] | None = None) -> str:
    """Copy `size` bytes from `src_fd` into the empty `dst_fd`; returns how ("reflink",
    "copy_file_range", "copy"). `digest` is fed what the destination holds: the bytes written,
    or, after a reflink or a copy_file_range, the destination read back."""
    how = _copy_fast(src_fd, dst_fd, size, progress)
    if how is None:
        os.ftruncate(dst_fd, 0)
        _copy_plain(src_fd, dst_fd, size, digest, progress)
        return "copy"
    if digest is not None:  # the kernel copied: what landed is hashed, not what was read
        hash_range(dst_fd, 0, size, digest)
    return how


def _copy_fast(src_fd: int, dst_fd: int, size: int,
               progress: Callable[[int], None] | None) -> str | None:
    """A reflink, else copy_file_range; None when neither works here (any error: the plain
    copy that follows tells a source that cannot be read from a destination that is full)."""
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
    except OSError:
        pass
    else:
        if os.fstat(dst_fd).st_size != size:
            return None  # it changed since it was listed: the plain copy reports it
        if progress is not None:
            progress(size)
        return "reflink"
    offset = 0
    try:
        while offset < size:
            n = os.copy_file_range(src_fd, dst_fd, min(RANGE_BYTES, size - offset),
                                   offset, offset)
            if n == 0:
                return None  # shorter than listed: the plain copy reports it
            offset += n
            if progress is not None:
                progress(n)
    except OSError:
        return None
    return "copy_file_range"


def _copy_plain(src_fd: int, dst_fd: int, size: int, digest: Digest | None,
                progress: Callable[[int], None] | None) -> None:
    offset = 0
    while offset < size:
        try:
            chunk = os.pread(src_fd, min(COPY_BYTES, size - offset), offset)
        except OSError as exc:
            raise Unreadable(exc.strerror or str(exc)) from exc
        if not chunk:
            raise Unreadable("shorter than when it was listed")
        if digest is not None:
            digest.update(chunk)
        view = memoryview(chunk)
        at = offset
        while view:
            written = os.pwrite(dst_fd, view, at)
            view, at = view[written:], at + written
        offset += len(chunk)
        if progress is not None:
            progress(len(chunk))
