"""Small files written so that a crash leaves either nothing or all of them: syncd's records
(state, leases) are created exclusively, written whole and fsynced before anyone renames or
links them into place."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterable
from pathlib import Path


def write_new(path: Path, data: bytes | Iterable[bytes]) -> None:
    """Create `path` (it must not exist, and is never a symlink followed) with `data`, fsynced.
    `data` may come in chunks, so a large record is never whole in memory. On any failure
    after the create (ENOSPC, EIO, a failing `data` iterator) the file is removed again."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW,
                 0o644)
    try:
        try:
            for chunk in (data,) if isinstance(data, bytes | bytearray | memoryview) else data:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        # what we created is ours to remove: a full disk must not fill up with empty files,
        # one per failed attempt (a lease renewal every few seconds)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise


def replace(path: Path, data: bytes | Iterable[bytes]) -> None:
    """Replace `path` with `data` by temp file + rename: readers see the old or the new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write_new(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
