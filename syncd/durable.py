"""Small files written so that a crash leaves either nothing or all of them: syncd's records
(state, leases) are created exclusively, written whole and fsynced before anyone renames or
links them into place. And the directories they go in: syncd's own, made so that a symlink
planted in their place is refused, never followed."""

from __future__ import annotations

import contextlib
import os
import stat
import uuid
from collections.abc import Iterable
from pathlib import Path

from syncd.errors import StoreError


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


def own_dir(path: Path, *, store: str) -> None:
    """Create one of syncd's own directories, which must be a real directory: a symlink
    planted there would send temp files, state, leases and cleanup outside the volume."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o755)
    if not stat.S_ISDIR(os.lstat(path).st_mode):
        raise StoreError(f"{path} is not a directory (a symlink?); refusing to use it",
                         store=store, hint="remove it; syncd recreates its own directories")
