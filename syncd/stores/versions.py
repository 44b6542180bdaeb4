"""Artifact versions on a volume: complete directories, made current by one atomic rename.

    <root>/<artifact>   symlink -> .syncd/artifacts/<name>/<version>/<artifact>
    <root>/.syncd/artifacts/<name>/<version>/<artifact>/...   one complete, verified version

(the artifact's own path is repeated inside its version, so a version directory is a store
that takes the same keys as the mirror root).

A new version is built (downloaded, verified, fsynced) in its own directory, which no reader
knows about, then the artifact's symlink is replaced by `rename()`: a reader resolves the link
to the old version or to the new one, never to a mix. A reader that resolves the link once
(`realpath`) and loads from there keeps its version for `keep_versions_s` after a switch.
Files unchanged between versions are hard links where the volume keeps them, verified
copies elsewhere (`seeding.py`). A directory that was there before syncd managed the artifact
is swapped out atomically with RENAME_EXCHANGE.

Every change here is made right after a fence check, so a holder that lost its lease stops
at the next file. A switch stages its new link as `.<name>.syncd-<12 hex>` beside the
artifact; one a killed holder left there is removed by the next holder (`sweep`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import re
import stat
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from syncd.artifacts import LEGACY
from syncd.durable import own_dir
from syncd.errors import StoreError
from syncd.keys import RESERVED_DIR
from syncd.listing import Entry, Recorded, fingerprint
from syncd.stores import seeding
from syncd.stores.base import Fence
from syncd.stores.volume import VolumeStore

_RENAME_EXCHANGE = 2
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NO_LINK = (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP, errno.ENOENT)


def temp_name(name: str) -> str:
    """The name a switch stages the artifact `name`'s new link under, beside it."""
    return f".{name}.syncd-{uuid.uuid4().hex[:12]}"


def is_temp_of(name: str, entry: str) -> bool:
    """Whether `entry` is exactly a name `temp_name(name)` makes."""
    return re.fullmatch(rf"\.{re.escape(name)}\.syncd-[0-9a-f]{{12}}", entry) is not None


@dataclass(frozen=True, slots=True)
class Seeded:
    """What `seed` put into a build: `linked` files, and copies (key -> the copy's entry,
    its bytes matching the checksum recorded for the original)."""

    how: seeding.Seeding
    linked: int = 0
    copied: dict[str, Entry] = field(default_factory=dict)


def _exchange(dfd: int, a: str, b: str) -> bool:
    """Atomically swap two names in one directory; False when the system cannot."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if fn(dfd, a.encode(), dfd, b.encode(), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err))


class Versions:
    """One artifact's versions on the volume of `store` (the mirror root)."""

    def __init__(self, store: VolumeStore, artifact: str) -> None:
        self.store = store
        self.artifact = artifact
        self.base = store.meta_dir / "artifacts" / quote(artifact, safe="")

    def path(self, version: str) -> Path:
        return self.base / version

    def content(self, version: str) -> Path:
        """Where the artifact's files are inside `version`."""
        return self.path(version) / self.artifact

    def link_target(self, version: str) -> str:
        """Relative, so the volume can be mounted anywhere."""
        up = "../" * self.artifact.count("/")
        return f"{up}{RESERVED_DIR}/artifacts/{self.base.name}/{version}/{self.artifact}"

    def builder(self, version: str) -> VolumeStore:
        """A store rooted at `version`'s directory that stages in the volume's tmp."""
        return self.store.at(self.path(version))

    def version_of(self, target: str) -> str | None:
        """The version a link target names, if syncd made it for this artifact."""
        inner = target.removesuffix(f"/{self.artifact}")
        head, _, version = inner.rpartition("/")
        return version if head and version and target == self.link_target(version) else None

    # --- reading ---------------------------------------------------------------------------

    def _current(self) -> str | None:
        with self.store.open_parent(self.artifact, create=False) as (dfd, name):
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    return LEGACY
                if not stat.S_ISLNK(st.st_mode):
                    return None
                target = os.readlink(name, dir_fd=dfd)
            except FileNotFoundError:
                return None
        return self.version_of(target)

    async def current(self) -> str | None:
        """The version the artifact's link points at, LEGACY, or None (absent or foreign)."""
        try:
            return await asyncio.to_thread(self._current)
        except (FileNotFoundError, NotADirectoryError):
            return None

    async def on_disk(self) -> list[str]:
        def names() -> list[str]:
            with contextlib.suppress(FileNotFoundError):
                return sorted(e.name for e in os.scandir(self.base)
                              if e.is_dir(follow_symlinks=False))
            return []
        return await asyncio.to_thread(names)

    # --- building --------------------------------------------------------------------------

    async def prepare(self, version: str, fence: Fence) -> None:
        def make() -> None:
            fence.check()
            for p in (self.store.meta_dir / "artifacts", self.base, self.path(version)):
                own_dir(p, store=self.store.name)
        with self.store.translated(self.artifact):
            await asyncio.to_thread(make)

    async def seed(self, src: Path, new: str, expected: Mapping[str, Recorded], fence: Fence,
                   on_bytes: Callable[[int], None] | None = None) -> Seeded:
        """Put the files of the current content `src` into version `new`, each only while its
        fingerprint is still the one syncd recorded in `expected` (the bytes it verified):
        hard-linked where the volume keeps links, else copied and checked against the
        recorded checksum. Anything not seeded (changed, unreadable) is downloaded."""
        dst = self.content(new)
        halt = threading.Event()
        loop = asyncio.get_running_loop()
        progress: Callable[[int], None] | None = None
        if on_bytes is not None:
            moved = on_bytes

            def report(n: int) -> None:  # called on the worker thread; runs on the loop
                loop.call_soon_threadsafe(moved, n)
            progress = report

        def seed_all() -> Seeded:
            how = seeding.decide(self.store.root, self.store.tmp_dir, fence)
            linked, copied = 0, {}
            for key, rec in expected.items():
                if halt.is_set():
                    break
                old, target = src / key, dst / key
                try:
                    st = os.stat(old, follow_symlinks=False)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                have = Entry(key, st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino)
                if (not stat.S_ISREG(st.st_mode) or fingerprint(have) != rec.dst
                        or os.path.lexists(target)):
                    continue
                if how.links and self._link(old, target, fence):
                    linked += 1
                    continue
                copy = seeding.copy_verified(old, st, target, self.store.tmp_dir,
                                             rec.checksum, fence, progress)
                if copy is not None:
                    copied[key] = Entry(key, copy.st_size, mtime_ns=copy.st_mtime_ns,
                                        inode=copy.st_ino)
            return Seeded(how, linked, copied)
        with self.store.translated(self.artifact):
            try:
                return await asyncio.to_thread(seed_all)
            except asyncio.CancelledError:
                halt.set()  # the file being seeded is finished (or fenced), no other starts
                raise

    @staticmethod
    def _link(old: Path, target: Path, fence: Fence) -> bool:
        fence.check()
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(old, target, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
            return False  # no link here (or the original just went): copied instead
        return True

    # --- publishing ------------------------------------------------------------------------

    async def switch(self, version: str, fence: Fence) -> str | None:
        """Make `version` current in one rename; returns the name the previous version was
        kept under (a LEGACY directory is moved into the versions area), or None."""
        def swap() -> str | None:
            fence.check()
            with self.store.open_parent(self.artifact, create=True) as (dfd, name):
                tmp = temp_name(name)
                try:
                    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                except FileNotFoundError:
                    st = None
                if st is not None and not (stat.S_ISDIR(st.st_mode)
                                           or stat.S_ISLNK(st.st_mode)):
                    raise StoreError(f"{self.store.root / self.artifact} is a file, not "
                                     "an artifact directory; not replaced",
                                     store=self.store.name, key=self.artifact)
                fence.check()
                os.symlink(self.link_target(version), tmp, dir_fd=dfd)
                try:
                    if st is None or not stat.S_ISDIR(st.st_mode):
                        fence.check()
                        os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
                        old = None
                    else:
                        old = self._take_over(dfd, name, tmp, fence)
                    os.fsync(dfd)
                    return old
                finally:  # our own temporary: removed even when the fence refused
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp, dir_fd=dfd)
        with self.store.translated(self.artifact):
            return await asyncio.to_thread(swap)

    def _take_over(self, dfd: int, name: str, tmp: str, fence: Fence) -> str:
        """Replace a plain directory by the link; the directory becomes a retired version."""
        own_dir(self.store.meta_dir / "artifacts", store=self.store.name)
        own_dir(self.base, store=self.store.name)
        fence.check()
        if _exchange(dfd, tmp, name):
            return self._retire(dfd, tmp, fence)
        kept = self._retire(dfd, name, fence)  # no atomic exchange: a moment without the
        os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)  # path, never a mix
        return kept

    def _retire(self, dfd: int, name: str, fence: Fence) -> str:
        """Move the directory `name` (in `dfd`) into the versions area as a LEGACY version."""
        kept = f"{LEGACY}-{uuid.uuid4().hex[:8]}"
        base_fd = os.open(self.base, _DIR_FLAGS)
        try:
            fence.check()
            os.rename(name, kept, src_dir_fd=dfd, dst_dir_fd=base_fd)
            os.fsync(base_fd)
        finally:
            os.close(base_fd)
        return kept

    async def unlink(self, fence: Fence) -> None:
        """Remove the artifact's link (the artifact left the source); versions stay until
        pruned, so readers that resolved it keep their files."""
        def remove() -> None:
            with self.store.open_parent(self.artifact, create=False) as (dfd, name):
                fence.check()
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    os.unlink(name, dir_fd=dfd)
                    os.fsync(dfd)
        with self.store.translated(self.artifact), contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(remove)

    async def remove(self, version: str, fence: Fence) -> None:
        """Delete `version`'s directory, entry by entry, each right after a fence check,
        never through a symlink. Best effort: what cannot go now is retried by a later prune."""
        def rm() -> None:
            try:
                base_fd = os.open(self.base, _DIR_FLAGS)
            except (FileNotFoundError, NotADirectoryError):
                return
            try:
                _remove_tree(base_fd, version, fence)
            finally:
                os.close(base_fd)
        with self.store.translated(self.artifact):
            await asyncio.to_thread(rm)

    async def sweep(self, fence: Fence) -> int:
        """Remove what a switch killed midway left beside the artifact (the next holder's
        first pass calls this); returns how many. A temporary link syncd made for this
        artifact is deleted; a directory under such a name is the plain directory a takeover
        had swapped out and not yet moved, so it is retired like one. Anything else, however
        alike its name, is left alone."""
        def clean() -> int:
            with contextlib.ExitStack() as stack:
                try:
                    dfd, name = stack.enter_context(
                        self.store.open_parent(self.artifact, create=False))
                except (FileNotFoundError, NotADirectoryError):
                    return 0
                return self._sweep_in(dfd, name, fence)
        with self.store.translated(self.artifact), contextlib.suppress(FileNotFoundError):
            return await asyncio.to_thread(clean)
        return 0

    def _sweep_in(self, dfd: int, name: str, fence: Fence) -> int:
        """`sweep` in the artifact's parent directory `dfd`, where the artifact is `name`."""
        with os.scandir(dfd) as it:
            found = [e.name for e in it if is_temp_of(name, e.name)]
        removed = 0
        for entry in found:
            st = os.stat(entry, dir_fd=dfd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                if self.version_of(os.readlink(entry, dir_fd=dfd)) is None:
                    continue  # not a link syncd made
                fence.check()
                os.unlink(entry, dir_fd=dfd)
            elif stat.S_ISDIR(st.st_mode):
                own_dir(self.store.meta_dir / "artifacts", store=self.store.name)
                own_dir(self.base, store=self.store.name)
                self._retire(dfd, entry, fence)
            else:
                continue
            removed += 1
        if removed:
            os.fsync(dfd)
        return removed


def _remove_tree(dfd: int, name: str, fence: Fence) -> None:
    """Remove `name` in the directory `dfd`: its contents first, each entry right after a
    fence check, none reached through a symlink. An entry that cannot be removed (busy,
    vanished, refused) is skipped, as rmtree(ignore_errors=True) would; LeaseLost is not."""
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            fd = os.open(name, _DIR_FLAGS, dir_fd=dfd)
            try:
                with os.scandir(fd) as it:
                    children = [e.name for e in it]
                for child in children:
                    _remove_tree(fd, child, fence)
            finally:
                os.close(fd)
            fence.check()
            os.rmdir(name, dir_fd=dfd)
        else:
            fence.check()
            os.unlink(name, dir_fd=dfd)
    except OSError:
        return
