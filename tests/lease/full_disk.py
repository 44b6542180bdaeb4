"""A real full filesystem for tests: a small tmpfs (mounting needs root, as CI runs), filled
up to the last page."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "512k", inodes: int | None = None) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (f",nr_inodes={inodes}" if inodes is not None else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> Path:
    """Write a file under `path` until its filesystem has no space left; that file."""
    filler = path / "filler.bin"
    fd = os.open(filler, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
    try:
        while True:
            try:
                os.write(fd, b"\0" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
    finally:
        os.close(fd)
    return filler


def fill_inodes(path: Path) -> int:
    """Create empty files under `path` until its filesystem has no inode left (its blocks
    stay free, so a free-space check still passes); how many."""
    made = 0
    while True:
        try:
            os.close(os.open(path / f"inode-{made}", os.O_CREAT | os.O_WRONLY, 0o644))
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
            return made
        made += 1
