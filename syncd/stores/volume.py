"""The volume store: a directory tree on a (network) filesystem, written atomically.

Bytes land in `<root>/.syncd/tmp/` (same filesystem, so the final rename is atomic), are
fsynced and verified there, and become visible in one `rename()` into place: a crash at any
moment leaves the old file or the new one, never a partial one. Paths are opened one
component at a time with O_NOFOLLOW relative to the parent's descriptor, so neither a hostile
key nor a symlink planted on the volume can make syncd read or write outside the root.
All filesystem calls run off the event loop. Staging (space, parts, resumable partial
downloads) is `volume_download.Downloads`, the listing walk `volume_walk`, reading a file as a
source `volume_source`; this module confines paths, renames into place and deletes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import aiofiles.os

from syncd.durable import own_dir
from syncd.errors import (
    AccessDenied,
    LeaseLost,
    NoSpace,
    NotFound,
    StoreError,
    UnsafeKey,
)
from syncd.keys import RESERVED_DIR, unsafe_reason
from syncd.listing import Algo, Checksum, Entry, Listing
from syncd.stores.base import Capabilities, Fence, Source, Staged, staged_by
from syncd.stores.resume import is_partial, sidecar_of
from syncd.stores.staging import Space
from syncd.stores.volume_download import SPACE_ERRNOS, Downloads, VolumeStaged
from syncd.stores.volume_source import VolumeSource
from syncd.stores.volume_walk import ACCESS_ERRNOS, entry_of, walk
from syncd.verify import OWN_ALGO, Digest

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
RESUME_MAX_AGE_S = 24 * 3600.0  # a partial download untouched this long is a leftover
_Fds = list[int]  # (`list` in the class body is VolumeStore.list)


class VolumeStore:
    caps = Capabilities(atomic_rename=True, local=True)

    def __init__(
        self, root: Path, *, part_size: int, multipart_threshold: int, min_free_bytes: int = 0,
        concurrency: int = 16, tmp_dir: Path | None = None,
        resume_max_age_s: float = RESUME_MAX_AGE_S, direct_io: bool = True,
        space: Space | None = None,
    ) -> None:
        self.root = Path(root)
        self.name = str(self.root)
        self.meta_dir = self.root / RESERVED_DIR
        # a store rooted inside the volume (an artifact version) stages in the volume's tmp
        self.tmp_dir = tmp_dir or self.meta_dir / "tmp"
        self._part_size = part_size
        self._threshold = multipart_threshold
        self._min_free = min_free_bytes
        self._direct_io = direct_io
        self._slots = asyncio.Semaphore(concurrency)
        self._unflushed: set[str] = set()
        self._space = space or Space(self.tmp_dir, min_free_bytes, root=self.root)
        self._downloads = Downloads(
            self.root, self.tmp_dir, name=self.name, translated=self.translated,
            part_size=part_size, multipart_threshold=multipart_threshold, space=self._space,
            resume_max_age_s=resume_max_age_s, direct_io=direct_io)

    def at(self, root: Path) -> VolumeStore:
        """A store rooted at `root` inside this volume (an artifact version) that stages
        in this store's tmp, with its part size, threshold and free space (one `Space`)."""
        return VolumeStore(root, part_size=self._part_size,
                           multipart_threshold=self._threshold, min_free_bytes=self._min_free,
                           tmp_dir=self.tmp_dir, direct_io=self._direct_io, space=self._space)

    @property
    def writes_direct(self) -> bool:
        """Whether staging still writes with O_DIRECT: off for good once the filesystem
        refused it (tmpfs, some FUSE and network mounts), or when configured off."""
        return self._downloads.writes_direct

    async def __aenter__(self) -> VolumeStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        return None

    @contextlib.contextmanager
    def translated(self, key: str | None = None, *, reading: bool = False) -> Iterator[None]:
        """OSErrors raised inside become StoreErrors naming this volume's path (`os_error`);
        `reading` says a failed access was a read, so the message does not say "write"."""
        try:
            yield
        except OSError as exc:
            raise self.os_error(exc, key, reading=reading) from exc

    def os_error(self, exc: OSError, key: str | None = None, *,
                 reading: bool = False) -> StoreError:
        where = str(self.root / key) if key else str(self.root)
        reason = exc.strerror or type(exc).__name__
        if exc.errno in SPACE_ERRNOS:
            self._space.starved = True  # partial downloads abandoned from now on are dropped
            return NoSpace(f"volume {self.root} is full while writing {where}", store=self.name,
                           key=key, hint="free space on the volume or grow it")
        if exc.errno in ACCESS_ERRNOS:
            # a push reads: "cannot write" would send the operator to the wrong permission
            verb = "read" if reading else "write"
            return AccessDenied(f"cannot {verb} {where}: {reason}", store=self.name, key=key)
        # Said as it is: the same errno comes from a write blocked by a file where a
        # directory must go and from a read refused at a symlink (an artifact's link,
        # opened without following it), and only the first is a conflict.
        if exc.errno == errno.ENOTDIR:
            return StoreError(f"{where}: a file or a symlink (not followed) stands where the "
                              f"path needs a directory ({reason})", store=self.name, key=key)
        if exc.errno == errno.ELOOP:
            return StoreError(f"{where}: is a symlink, which syncd does not follow ({reason})",
                              store=self.name, key=key)
        if exc.errno == errno.EISDIR:
            return StoreError(f"{where}: is a directory, not a file ({reason})",
                              store=self.name, key=key)
        return StoreError(f"{where}: {reason}", store=self.name, key=key)

    async def check(self, *, writable: bool, fence: Fence | None = None) -> None:
        """The root must exist (a missing mount must not silently fill the container disk).
        `writable` proves it can be written, under `fence` when a lease holder asks."""
        if not await aiofiles.os.path.isdir(self.root):
            raise NotFound(f"volume root {self.root} does not exist or is not a directory",
                           store=self.name, hint="is the volume mounted?")
        if writable:
            with self.translated():
                await asyncio.to_thread(self._prepare_dirs, fence)

    def _prepare_dirs(self, fence: Fence | None) -> None:
        """syncd's own directories must be real directories: a symlink planted at `.syncd`
        would otherwise send temp files, state writes and leftover cleanup elsewhere."""
        if fence is not None:
            fence.check()
        for path in (self.meta_dir, self.tmp_dir, self.meta_dir / "state"):
            own_dir(path, store=self.name)
        probe = self.tmp_dir / f".probe-{uuid.uuid4().hex}"
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
        os.unlink(probe)

    async def clean_temporaries(self, fence: Fence) -> int:
        """Remove staging leftovers of an earlier crash (under `fence`); returns how many.
        Partial downloads with a readable sidecar stay for `resume_max_age_s`, so the next
        pass resumes them."""
        return await self._downloads.clean_temporaries(fence)

    # --- listing -----------------------------------------------------------------------------

    async def list(self) -> Listing:
        """Every regular file under the root. A path that cannot be read (a directory
        without read or search permission, an I/O error) is named in `unreadable` and the
        walk goes on (issue 18): one locked directory must not stop a pass, nor hold every
        delete of the mirror. Only the root itself failing fails the listing."""
        with self.translated(reading=True):
            return await asyncio.to_thread(walk, self.root)

    # --- confined paths ----------------------------------------------------------------------

    @contextlib.contextmanager
    def open_parent(self, key: str, *, create: bool) -> Iterator[tuple[int, str]]:
        """A descriptor of `key`'s parent directory (closed on leaving) and `key`'s last name
        in it, reached without following any symlink. With `create`, missing directories
        are made; a file or symlink where one must go is a path conflict (`_open_chain`)."""
        fds, name = self._open_chain(key, create=create)
        for fd in fds[:-1]:
            os.close(fd)
        try:
            yield fds[-1], name
        finally:
            os.close(fds[-1])

    def _open_chain(self, key: str, *, create: bool) -> tuple[_Fds, str]:
        """Descriptors of the root and of every directory down to `key`'s parent (the
        caller closes them all), reached without following any symlink. With `create`,
        missing directories are made, and a file or symlink where one must go is a path
        conflict: the planner deletes what stands there first (issue 18), or refuses."""
        why = unsafe_reason(key)
        if why is not None:
            raise UnsafeKey(f"refused key {key!r}: {why}")
        *dirs, name = key.split("/")
        fds = [os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)]  # configured
        try:
            for i, part in enumerate(dirs):
                if create:
                    try:
                        os.mkdir(part, 0o755, dir_fd=fds[-1])
                        self._unflushed.add("/".join(dirs[:i]))  # the new entry's directory
                    except FileExistsError:
                        pass
                try:
                    fds.append(os.open(part, _DIR_FLAGS, dir_fd=fds[-1]))
                except NotADirectoryError as exc:
                    if not create:
                        raise
                    where = self.root.joinpath(*dirs[:i + 1])
                    raise StoreError(
                        f"path conflict: {where}: a file or a symlink (not followed) stands "
                        f"where {key} needs a directory", store=self.name, key=key) from exc
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return fds, name

    def open_file(self, key: str) -> int:
        """A read-only descriptor of the file `key` (the caller closes it), reached without
        following any symlink, the file's own name included."""
        with self.open_parent(key, create=False) as (dfd, name):
            return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)

    # --- reading (push source, adopt) --------------------------------------------------------

    async def open(self, entry: Entry) -> VolumeSource:
        if unsafe_reason(entry.key):
            raise UnsafeKey(f"refused key {entry.key!r}")
        return VolumeSource(self, entry)

    async def unreadable(self, key: str) -> str | None:
        """Why the file `key` cannot be read now, or None: it is opened (never through a
        symlink) and its first byte read. A listing only stats; a file can stat fine and
        still fail to open (a hard link a FUSE host lost, issue 17)."""
        def first_byte() -> None:
            fd = self.open_file(key)
            try:
                os.pread(fd, 1, 0)
            finally:
                os.close(fd)
        try:
            await asyncio.to_thread(first_byte)
        except OSError as exc:
            return exc.strerror or type(exc).__name__
        return None

    async def checksum(self, entry: Entry, algo: Algo | None = None) -> Checksum | None:
        algo = algo or OWN_ALGO
        source = VolumeSource(self, entry)
        digest = Digest((algo,))
        async with contextlib.aclosing(source.read()) as stream:
            async for chunk in stream:
                digest.update(chunk)
        await source.identity()
        return Checksum(algo, digest.results()[algo])

    # --- writing: staging is volume_download.Downloads ------------------------------------

    async def stage(
        self, source: Source, want: frozenset[Algo], generation: int = 0,
    ) -> VolumeStaged:
        return await self._downloads.stage(source, want, generation)

    async def publish(self, staged: Staged, fence: Fence) -> Entry:
        """Rename the staged file into place, fenced. An empty directory at the key is
        replaced (a directory that became a file at the source, its files already deleted);
        a non-empty one, or a file where a parent directory must go, is a path conflict
        that fails this key alone."""
        mine = staged_by(staged, VolumeStaged, self.name)
        inline, staged_temp = mine.inline, mine.temp

        def rename() -> os.stat_result:
            # an inline-staged file is written here, in the same worker call as its rename
            temp = (self._downloads.write_inline(staged.key, inline) if inline is not None
                    else staged_temp)
            if temp is None:
                raise ValueError(f"{staged.key}: published or discarded already")
            try:
                fence.check()  # the parents it may create are writes too
                with self.open_parent(staged.key, create=True) as (dfd, name):
                    fence.check()
                    self._rename_into(temp, name, dfd, staged.key, fence)
                    self._unflushed.add(staged.key.rpartition("/")[0])
                    if inline is None and is_partial(Path(temp)):  # done: nothing left to resume
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(sidecar_of(Path(temp)))
                    return os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except BaseException:
                if inline is not None:  # its staging file exists only inside this call
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(temp)
                raise
        thread = asyncio.ensure_future(asyncio.to_thread(rename))
        with self.translated(staged.key):
            try:
                st = await asyncio.shield(thread)
            except asyncio.CancelledError:
                # The rename runs on whatever we do: learn its outcome, so a publication the
                # fence refused is reported as refused, not as one that may have happened.
                await asyncio.wait({thread})
                refused = thread.exception()
                if isinstance(refused, LeaseLost):
                    raise refused from None
                raise
        if staged_temp is not None:
            self._downloads.published(Path(staged_temp))
        mine.inline = mine.temp = None
        return entry_of(staged.key, st)

    def _rename_into(self, temp: str, name: str, dfd: int, key: str, fence: Fence) -> None:
        """rename(2) cannot put a file over a directory (EISDIR): an empty one is removed
        first, under the fence; a non-empty one stays and is reported."""
        try:
            os.rename(temp, name, dst_dir_fd=dfd)
            return
        except IsADirectoryError:
            pass
        fence.check()
        try:
            os.rmdir(name, dir_fd=dfd)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            raise StoreError(f"path conflict: {self.root / key} is a directory that is not "
                             "empty; the file is not published", store=self.name,
                             key=key) from exc
        os.rename(temp, name, dst_dir_fd=dfd)

    async def flush(self) -> None:
        """Make the renames of this pass durable: one fsync per directory they touched, not
        one per file. Until then a crash can lose a rename (the old file stays), never leave
        a partial file: each file was fsynced before it was renamed into place."""
        dirs, self._unflushed = self._unflushed, set()

        def sync_dirs() -> None:
            for rel in sorted(dirs):
                with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                    fd = os.open(self.root / rel if rel else self.root, _DIR_FLAGS)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
        if dirs:
            with self.translated():
                await asyncio.to_thread(sync_dirs)

    async def discard(self, staged: Staged) -> None:
        """Callers discard from their exception handler (`sys.exception()` is why): a
        complete partial download that only missed its publication (cancelled, lease lost)
        stays for the next run; bytes that failed verification never do."""
        await self._downloads.discard(staged_by(staged, VolumeStaged, self.name))

    async def delete(self, keys: Sequence[str], fence: Fence) -> None:
        """Remove files, then the directories that removal left empty, up to (never
        including) the root: a later publish of a file at a former directory's path then
        finds nothing in its way. Every removal is fenced; directories are reached and
        removed through descriptors, never through a symlink."""
        for key in keys:
            with self.translated(key):
                await asyncio.to_thread(self._remove, key, fence)

    def _remove(self, key: str, fence: Fence) -> None:
        try:
            fds, name = self._open_chain(key, create=False)
        except (FileNotFoundError, NotADirectoryError):
            return  # a directory on its way is gone (or is a file now): nothing to delete
        try:
            fence.check()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=fds[-1])
            self._unflushed.add(key.rpartition("/")[0])
            dirs = key.split("/")[:-1]
            for depth in range(len(dirs) - 1, -1, -1):  # the deepest first
                if depth == 0 and dirs[0] == RESERVED_DIR:
                    break  # never syncd's own directory (unsafe as a key; kept anyway)
                fence.check()
                try:
                    os.rmdir(dirs[depth], dir_fd=fds[depth])
                except OSError:
                    break  # not empty, or not ours to remove: it stays, and so do its parents
                self._unflushed.add("/".join(dirs[:depth]))
        finally:
            for fd in fds:
                os.close(fd)
