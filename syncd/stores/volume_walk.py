"""Listing a volume: one walk of the directory tree, every regular file an entry.

Kept apart from `volume.py` (which confines paths, renames into place and deletes) because
the walk has its own rules: it never follows a symlink (one is refused, named, counted), a
special file is refused the same way, and a directory that cannot be read or searched is
named in `unreadable` while the walk goes on (issue 18), so one locked directory neither
stops a pass nor holds every delete of the mirror. Runs on a worker thread.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from syncd.keys import RESERVED_DIR
from syncd.listing import Entry, Listing

ACCESS_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}


def walk(root: Path) -> Listing:
    """Every regular file under `root`, outside syncd's own directory. A path that cannot be
    read is named in `unreadable` and the walk goes on (issue 18); only `root` itself
    failing raises."""
    listing = Listing()
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            it = os.scandir(root / rel if rel else root)
        except (FileNotFoundError, NotADirectoryError):
            if not rel:
                raise
            continue  # removed (or replaced by a file) since its parent was listed
        except OSError as exc:
            if not rel:
                raise
            listing.unreadable[rel] = f"cannot list directory: {_reason(exc)}"
            continue
        with it:
            _scan(listing, rel, it, stack)
    return listing

def _scan(listing: Listing, rel: str, it: Iterator[os.DirEntry[str]], stack: list[str]) -> None:
    """One directory's entries into `listing`; subdirectories onto `stack`."""
    try:
        for e in it:
            key = f"{rel}/{e.name}" if rel else e.name
            if not rel and e.name == RESERVED_DIR:
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            except OSError as exc:
                if exc.errno in ACCESS_ERRNOS and rel:
                    # a directory that can be read but not searched (mode 0o600): its
                    # names are known, none of them can be looked at
                    listing.unreadable[rel] = f"cannot search directory: {_reason(exc)}"
                    return
                if exc.errno in ACCESS_ERRNOS:
                    raise
                listing.unreadable[key] = f"cannot stat: {_reason(exc)}"
                continue
            if stat.S_ISDIR(st.st_mode):
                stack.append(key)
            elif stat.S_ISREG(st.st_mode):
                listing.entries[key] = entry_of(key, st)
            elif stat.S_ISLNK(st.st_mode):
                listing.refused[key] = "symlink (not followed)"
            else:
                listing.refused[key] = _special(st.st_mode)
    except OSError as exc:  # the directory failed part-way through (EIO, ESTALE)
        if not rel:
            raise
        listing.unreadable[rel] = f"listing stopped part-way: {_reason(exc)}"


_SPECIAL = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
            (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _special(mode: int) -> str:
    """Why a listed name that is neither a file, a directory nor a symlink is not synced: it
    has no bytes to copy (a FIFO or a device would block or never end a read), so it is
    refused like an unsafe key, logged and counted, never silently left out."""
    kind = next((name for test, name in _SPECIAL if test(mode)),
                f"a file of type 0o{stat.S_IFMT(mode):o}")
    return f"{kind}, not a regular file (special files are not synced)"


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def entry_of(key: str, st: os.stat_result) -> Entry:
    """The listing entry of the file `key`, from its stat."""
    return Entry(key, st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino)
