"""Direct I/O for staging files: bytes go from an aligned buffer to the disk, not the page cache.

Why: a buffered write copies every byte into newly allocated page-cache pages, and the fsync
before publishing then writes them out in one go, charged to syncd. Measured on the bench VM,
that kernel work cost more CPU than receiving the bytes (2 GiB: 3.5-8.5 s of system time
buffered, 0.2 s direct; 1 MiB files: 1.5-2.3 ms each against 0.3 ms), and a model written
once should not evict what the page cache holds for the workers anyway. Direct writes reach
the disk as the download proceeds, so the fsync has only metadata left.

Where the filesystem refuses O_DIRECT (tmpfs, some FUSE and network mounts) or our alignment
(EINVAL, at fcntl time or at the first write), the bytes go through the ordinary descriptor
instead and the caller stops trying for that volume. Writes are page-aligned in offset,
length and memory; a file's unaligned tail is written padded with zeros and the file is
truncated back to its size before the fsync.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import mmap
import os

ALIGN = 4096  # covers 512-byte and 4 KiB logical blocks
DIRECT_MIN = 128 << 10  # smaller files: one page-cache write costs less than the set-up
_O_DIRECT = getattr(os, "O_DIRECT", 0)


def aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def can_write_direct(start: int, end: int, size: int) -> bool:
    """A range may be written direct when it starts on a block and ends on one (or at the
    end of the file, whose padding the final truncate removes)."""
    return start % ALIGN == 0 and (end % ALIGN == 0 or end == size)


def set_direct(fd: int, on: bool) -> bool:
    """Switch O_DIRECT on a descriptor; False when the filesystem does not support it."""
    if not _O_DIRECT:
        return False
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | _O_DIRECT if on else flags & ~_O_DIRECT)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        return False
    return True


def open_direct(path: str) -> int | None:
    """A second, direct descriptor on an existing staging file, or None."""
    if not _O_DIRECT:
        return None
    try:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | _O_DIRECT)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        return None


class Buffers:
    """Page-aligned buffers (anonymous mmaps) reused across writes: a fresh mapping per
    write would fault in its pages every time. At most `keep` idle ones are held; the deque
    makes take/give safe from worker threads."""

    def __init__(self, size: int, keep: int) -> None:
        self.size = aligned(size)
        self._keep = keep
        self._free: collections.deque[mmap.mmap] = collections.deque()

    def take(self) -> mmap.mmap:
        try:
            return self._free.pop()
        except IndexError:
            return mmap.mmap(-1, self.size)

    def give(self, buf: mmap.mmap) -> None:
        """Back to the pool, after a clean finish only: a buffer whose write failed may
        still be referenced (by the error's frames, or by a worker thread that outlived a
        cancelled caller), so callers drop it on error paths instead."""
        if len(self._free) < self._keep:
            self._free.append(buf)
        else:
            with contextlib.suppress(BufferError):  # still exported: the GC unmaps it later
                buf.close()


def pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        n = os.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(errno.EIO, "write made no progress")
        view, offset = view[n:], offset + n


def write_direct(dfd: int, buf: mmap.mmap, n: int, offset: int) -> bool:
    """Write buf[:n] at `offset` through the direct descriptor, padded to a block. False
    when the filesystem refuses it (EINVAL): the caller writes the bytes buffered instead."""
    with memoryview(buf) as view:
        padded = aligned(n)
        if padded != n:
            view[n:padded] = bytes(padded - n)
        try:
            pwrite_all(dfd, view[:padded], offset)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            return False
    return True


def read_direct(dfd: int, buf: mmap.mmap, offset: int, n: int) -> int:
    """Read up to `n` bytes at block-aligned `offset` into buf; returns how many came
    (fewer at the end of the file). EINVAL means the filesystem refused."""
    with memoryview(buf) as view:
        got, want = 0, aligned(n)
        while got < n:
            r = os.preadv(dfd, [view[got:want]], offset + got)
            got += max(r, 0)
            if r <= 0 or r % ALIGN:  # a short, unaligned read is the end of the file
                break
        return min(got, n)
