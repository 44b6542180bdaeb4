"""Artifact versions on a volume: complete directories, made current by one atomic rename.

    <root>/<artifact>   symlink -> .syncd/artifacts/<name>/<version>/<artifact>
    <root>/.syncd/artifacts/<name>/<version>/<artifact>/...   one complete, verified version

(the artifact's own path is repeated inside its version, so a version directory is a store
that takes the same keys as the mirror root).

A new version is built (downloaded, verified, fsynced) in its own directory, which no reader
knows about, then the artifact's symlink is replaced by `rename()`: a reader resolves the link
to the old version or to the new one, never to a mix. A reader that resolves the link once
(`realpath`) and loads from there keeps its version for `keep_versions_s` after a switch.
Files unchanged between versions are hard links, not copies. A directory that was there
before syncd managed the artifact is swapped out atomically with RENAME_EXCHANGE.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import shutil
import stat
import uuid
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

from syncd.errors import StoreError
from syncd.keys import RESERVED_DIR
from syncd.listing import Entry, fingerprint
from syncd.stores.base import Fence
from syncd.stores.volume import VolumeStore, own_dir

LEGACY = "legacy"  # what `current()` reports for a plain directory syncd has not taken over
_RENAME_EXCHANGE = 2


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

    # --- reading ---------------------------------------------------------------------------

    def _current(self) -> str | None:
        dfd, name = self.store._open_parent(self.artifact, create=False)
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                return LEGACY
            if not stat.S_ISLNK(st.st_mode):
                return None
            target = os.readlink(name, dir_fd=dfd)
        except FileNotFoundError:
            return None
        finally:
            os.close(dfd)
        inner = target.removesuffix(f"/{self.artifact}")
        head, _, version = inner.rpartition("/")
        return version if target == self.link_target(version) and head else None

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

    async def prepare(self, version: str) -> None:
        def make() -> None:
            for p in (self.store.meta_dir / "artifacts", self.base, self.path(version)):
                own_dir(p, store=self.store.name)
        with self.store._translated(self.artifact):
            await asyncio.to_thread(make)

    async def seed(self, src: Path, new: str, expected: Mapping[str, str]) -> int:
        """Hard-link files of the current content `src` into version `new`, each only while
        its fingerprint is still the one `expected` names (the bytes syncd verified); how
        many were linked. Anything else is downloaded."""
        dst = self.content(new)

        def link_all() -> int:
            n = 0
            for key, want in expected.items():
                old, target = src / key, dst / key
                try:
                    st = os.stat(old, follow_symlinks=False)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                have = Entry(key, st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino)
                if not stat.S_ISREG(st.st_mode) or fingerprint(have) != want or target.exists():
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(old, target, follow_symlinks=False)
                except OSError as exc:
                    if exc.errno not in (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP):
                        raise
                    continue  # no hard links here: downloaded instead
                n += 1
            return n
        with self.store._translated(self.artifact):
            return await asyncio.to_thread(link_all)

    # --- publishing ------------------------------------------------------------------------

    async def switch(self, version: str, fence: Fence) -> str | None:
        """Make `version` current in one rename; returns the name the previous version was
        kept under (a LEGACY directory is moved into the versions area), or None."""
        def swap() -> str | None:
            dfd, name = self.store._open_parent(self.artifact, create=True)
            tmp = f".{name}.syncd-{uuid.uuid4().hex[:12]}"
            try:
                os.symlink(self.link_target(version), tmp, dir_fd=dfd)
                try:
                    fence.check()
                    try:
                        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                    except FileNotFoundError:
                        st = None
                    if st is not None and not (stat.S_ISDIR(st.st_mode)
                                               or stat.S_ISLNK(st.st_mode)):
                        raise StoreError(f"{self.store.root / self.artifact} is a file, not "
                                         "an artifact directory; not replaced",
                                         store=self.store.name, key=self.artifact)
                    if st is None or not stat.S_ISDIR(st.st_mode):
                        os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
                        old = None
                    else:
                        old = self._take_over(dfd, name, tmp)
                    os.fsync(dfd)
                    return old
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp, dir_fd=dfd)
            finally:
                os.close(dfd)
        with self.store._translated(self.artifact):
            return await asyncio.to_thread(swap)

    def _take_over(self, dfd: int, name: str, tmp: str) -> str:
        """Replace a plain directory by the link; the directory becomes a retired version."""
        kept = f"{LEGACY}-{uuid.uuid4().hex[:8]}"
        own_dir(self.store.meta_dir / "artifacts", store=self.store.name)
        own_dir(self.base, store=self.store.name)
        base_fd = os.open(self.base, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            if _exchange(dfd, tmp, name):
                os.rename(tmp, kept, src_dir_fd=dfd, dst_dir_fd=base_fd)
            else:  # no atomic exchange here: a moment without the path, never a mix
                os.rename(name, kept, src_dir_fd=dfd, dst_dir_fd=base_fd)
                os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            os.fsync(base_fd)
        finally:
            os.close(base_fd)
        return kept

    async def unlink(self, fence: Fence) -> None:
        """Remove the artifact's link (the artifact left the source); versions stay until
        pruned, so readers that resolved it keep their files."""
        def remove() -> None:
            dfd, name = self.store._open_parent(self.artifact, create=False)
            try:
                fence.check()
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    os.unlink(name, dir_fd=dfd)
                    os.fsync(dfd)
            finally:
                os.close(dfd)
        with self.store._translated(self.artifact), contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(remove)

    async def remove(self, version: str) -> None:
        def rm() -> None:
            path = self.path(version)
            if path.is_symlink():
                path.unlink()
            else:
                shutil.rmtree(path, ignore_errors=True)
        with self.store._translated(self.artifact):
            await asyncio.to_thread(rm)
