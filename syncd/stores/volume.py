"""The volume store: a directory tree on a (network) filesystem, written atomically.

Bytes land in `<root>/.syncd/tmp/` (same filesystem, so the final rename is atomic), are
fsynced and verified there, and become visible in one `rename()` into place: a crash at any
moment leaves the old file or the new one, never a partial one. Paths are opened one
component at a time with O_NOFOLLOW relative to the parent's descriptor, so neither a hostile
key nor a symlink planted on the volume can make syncd read or write outside the root.
All filesystem calls run off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import stat
import sys
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Iterator, MutableSequence, Sequence
from pathlib import Path
from typing import Any

import aiofiles.os

from syncd.errors import (
    AccessDenied,
    LeaseLost,
    NoSpace,
    NotFound,
    SourceChanged,
    StoreError,
    UnsafeKey,
    first_error,
)
from syncd.keys import RESERVED_DIR, unsafe_reason
from syncd.listing import Algo, Checksum, Entry, Listing, fingerprint
from syncd.parts import effective_part_size, part_ranges
from syncd.resume import (
    PartialDownload,
    fresh_partials,
    is_partial,
    part_records,
    partial_name,
    read_record,
    same_head,
    sidecar_of,
    worth_resuming,
)
from syncd.stores.base import CHUNK_BYTES, Capabilities, Fence, Source, Staged
from syncd.stores.staging import WRITE_BATCH, InOrderHash, hash_and_write
from syncd.verify import CRC_ALGOS, OWN_ALGO, Digest, combine

SMALL_BYTES = WRITE_BATCH  # files up to this size are buffered and written in one call
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_ACCESS_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}
RESUME_MAX_AGE_S = 24 * 3600.0  # a partial download untouched this long is a leftover


def own_dir(path: Path, *, store: str) -> None:
    """Create one of syncd's own directories, which must be a real directory: a symlink
    planted there would send temp files, state, leases and cleanup outside the volume."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o755)
    if not stat.S_ISDIR(os.lstat(path).st_mode):
        raise StoreError(f"{path} is not a directory (a symlink?); refusing to use it",
                         store=store, hint="remove it; syncd recreates its own directories")


class VolumeStore:
    caps = Capabilities(atomic_rename=True, local=True)

    def __init__(
        self, root: Path, *, part_size: int, multipart_threshold: int, min_free_bytes: int = 0,
        concurrency: int = 16, tmp_dir: Path | None = None,
        resume_max_age_s: float = RESUME_MAX_AGE_S,
    ) -> None:
        self.root = Path(root)
        self.name = str(self.root)
        self.meta_dir = self.root / RESERVED_DIR
        # a store rooted inside the volume (an artifact version) stages in the volume's tmp
        self.tmp_dir = tmp_dir or self.meta_dir / "tmp"
        self._part_size = part_size
        self._threshold = multipart_threshold
        self._min_free = min_free_bytes
        self._slots = asyncio.Semaphore(concurrency)
        self._free, self._free_at = 0, -1.0
        self._unflushed: set[str] = set()
        self._resume_max_age_s = resume_max_age_s
        self._partials: set[str] = set()  # partial downloads staged now, by file name

    async def __aenter__(self) -> VolumeStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        return None

    @contextlib.contextmanager
    def _translated(self, key: str | None = None) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise self.os_error(exc, key) from exc

    def os_error(self, exc: OSError, key: str | None = None) -> StoreError:
        where = str(self.root / key) if key else str(self.root)
        reason = exc.strerror or type(exc).__name__
        if exc.errno in _SPACE_ERRNOS:
            return NoSpace(f"volume {self.root} is full while writing {where}", store=self.name,
                           key=key, hint="free space on the volume or grow it")
        if exc.errno in _ACCESS_ERRNOS:
            return AccessDenied(f"cannot write {where}: {reason}", store=self.name, key=key)
        if exc.errno in (errno.ENOTDIR, errno.ELOOP, errno.EISDIR):
            return StoreError(f"{where}: path conflicts with an existing file, directory or "
                              f"symlink ({reason})", store=self.name, key=key)
        return StoreError(f"{where}: {reason}", store=self.name, key=key)

    async def check(self, *, writable: bool) -> None:
        """The root must exist (a missing mount must not silently fill the container disk)."""
        if not await aiofiles.os.path.isdir(self.root):
            raise NotFound(f"volume root {self.root} does not exist or is not a directory",
                           store=self.name, hint="is the volume mounted?")
        if writable:
            with self._translated():
                await asyncio.to_thread(self._prepare_dirs)

    def _prepare_dirs(self) -> None:
        """syncd's own directories must be real directories: a symlink planted at `.syncd`
        would otherwise send temp files, state writes and leftover cleanup elsewhere."""
        for path in (self.meta_dir, self.tmp_dir, self.meta_dir / "state"):
            own_dir(path, store=self.name)
        probe = self.tmp_dir / f".probe-{uuid.uuid4().hex}"
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
        os.unlink(probe)

    async def clean_temporaries(self) -> int:
        """Remove staging leftovers of an earlier crash; returns how many. Partial downloads
        with a readable sidecar stay for `resume_max_age_s`, so the next pass resumes them."""
        def clean() -> int:
            if self.tmp_dir.is_symlink():
                raise StoreError(f"{self.tmp_dir} is a symlink; refusing to clean it",
                                 store=self.name)
            with contextlib.suppress(FileNotFoundError), os.scandir(self.tmp_dir) as it:
                files = [e.name for e in it if e.is_file(follow_symlinks=False)]
                keep = fresh_partials(self.tmp_dir, files, time.time(), self._resume_max_age_s)
                keep.update(*((p, sidecar_of(self.tmp_dir / p).name) for p in self._partials))
                removed = 0
                for name in set(files) - keep:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.tmp_dir / name)
                        removed += 1
                return removed
            return 0
        with self._translated():
            return await asyncio.to_thread(clean)

    # --- listing -----------------------------------------------------------------------------

    async def list(self) -> Listing:
        with self._translated():
            return await asyncio.to_thread(self._walk)

    def _walk(self) -> Listing:
        listing = Listing()
        stack = [""]
        while stack:
            rel = stack.pop()
            try:
                it = os.scandir(self.root / rel if rel else self.root)
            except FileNotFoundError:
                if not rel:
                    raise
                continue
            except PermissionError:
                listing.complete = False
                continue
            with it:
                for e in it:
                    key = f"{rel}/{e.name}" if rel else e.name
                    if not rel and e.name == RESERVED_DIR:
                        continue
                    try:
                        st = e.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        stack.append(key)
                    elif stat.S_ISREG(st.st_mode):
                        listing.entries[key] = _entry(key, st)
                    elif stat.S_ISLNK(st.st_mode):
                        listing.refused[key] = "symlink (not followed)"
        return listing

    # --- confined paths ----------------------------------------------------------------------

    def _open_parent(self, key: str, *, create: bool) -> tuple[int, str]:
        """A descriptor of `key`'s parent directory, reached without following any symlink."""
        why = unsafe_reason(key)
        if why is not None:
            raise UnsafeKey(f"refused key {key!r}: {why}")
        *dirs, name = key.split("/")
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # root: configured
        try:
            for i, part in enumerate(dirs):
                if create:
                    try:
                        os.mkdir(part, 0o755, dir_fd=fd)
                        self._unflushed.add("/".join(dirs[:i]))  # the new entry's directory
                    except FileExistsError:
                        pass
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = nxt
        except BaseException:
            os.close(fd)
            raise
        return fd, name

    def _open_file(self, key: str) -> int:
        dfd, name = self._open_parent(key, create=False)
        try:
            return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        finally:
            os.close(dfd)

    # --- reading (push source, adopt) --------------------------------------------------------

    async def open(self, entry: Entry) -> VolumeSource:
        if unsafe_reason(entry.key):
            raise UnsafeKey(f"refused key {entry.key!r}")
        return VolumeSource(self, entry)

    async def checksum(self, entry: Entry, algo: Algo | None = None) -> Checksum | None:
        algo = algo or OWN_ALGO
        source = VolumeSource(self, entry)
        digest = Digest((algo,))
        async with contextlib.aclosing(source.read()) as stream:
            async for chunk in stream:
                digest.update(chunk)
        await source.identity()
        return Checksum(algo, digest.results()[algo])

    # --- writing -----------------------------------------------------------------------------

    def _check_space(self, size: int) -> None:
        """Refuse to start a write that would leave less than `min_free_bytes`. Small writes
        reuse a reading under half a second old; ENOSPC from the write itself still counts."""
        now = time.monotonic()
        if size >= SMALL_BYTES or now - self._free_at > 0.5:
            st = os.statvfs(self.tmp_dir)
            self._free, self._free_at = st.f_bavail * st.f_frsize, now
        if self._free < size + self._min_free:
            raise OSError(errno.ENOSPC, "not enough free space")
        self._free -= size

    def _create_temp(self) -> tuple[int, str]:
        path = str(self.tmp_dir / f"{uuid.uuid4().hex}.part")
        flags = os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC
        try:
            return os.open(path, flags, 0o644), path
        except FileNotFoundError:  # someone removed .syncd/tmp under us
            os.makedirs(self.tmp_dir, exist_ok=True)
            return os.open(path, flags, 0o644), path

    def _reserve(self, size: int) -> tuple[int, str]:
        self._check_space(size)
        fd, path = self._create_temp()
        try:
            _allocate(fd, size)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        return fd, path

    def _reserve_partial(
        self, name: str, head: dict[str, Any], algos: frozenset[Algo],
    ) -> tuple[int, PartialDownload]:
        """Open (or create) the download's resumable staging file. Its sidecar's parts are
        kept for verification only when it describes this very download and the file has
        its full size; otherwise the file starts over, sidecar first."""
        path = self.tmp_dir / name
        size = int(head["size"])
        record = read_record(sidecar_of(path))
        flags = os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, 0o644)
        except FileNotFoundError:  # someone removed .syncd/tmp under us
            os.makedirs(self.tmp_dir, exist_ok=True)
            fd = os.open(path, flags, 0o644)
        fresh = True  # nothing worth keeping in the file (yet)
        try:
            st = os.fstat(fd)
            recorded = part_records(record) if same_head(record, head) else {}
            if recorded and st.st_size == size:
                fresh = False
                self._check_space(max(0, size - st.st_blocks * 512))
            else:
                recorded = {}
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(sidecar_of(path))
                self._check_space(size)
                os.ftruncate(fd, 0)
                _allocate(fd, size)
        except BaseException as exc:
            os.close(fd)
            if fresh or (isinstance(exc, OSError) and exc.errno in _SPACE_ERRNOS):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)  # an empty or space-starved file must not hold the disk
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(sidecar_of(path))
            raise
        return fd, PartialDownload(path, head, recorded, algos)

    def _write_small(self, chunks: Sequence[bytes], size: int, digest: Digest) -> str:
        """Hash, create, write, fsync and close in one worker call: a small file costs one
        hand-off to a thread instead of four."""
        self._check_space(size)
        fd, path = self._create_temp()
        try:
            hash_and_write(fd, chunks, 0, digest)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)
        return path

    async def stage(self, source: Source, want: frozenset[Algo], generation: int = 0) -> Staged:
        algos = frozenset({OWN_ALGO, *want})
        if source.size <= SMALL_BYTES:
            with self._translated(source.key):
                sums, path = await self._small(source, algos)
            return Staged(source.key, source.size, sums, source, path)
        if source.size > self._threshold:
            return await self._stage_parts(source, algos)
        with self._translated(source.key):
            fd, path = await asyncio.to_thread(self._reserve, source.size)
        try:
            with self._translated(source.key):
                sums = await self._single(fd, source, algos)
                await asyncio.to_thread(os.fsync, fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        os.close(fd)
        return Staged(source.key, source.size, sums, source, path)

    async def _stage_parts(self, source: Source, algos: frozenset[Algo]) -> Staged:
        """A large file in ranged parts. When the source names its version (an ETag), the
        staging file is named after the destination and a sidecar records finished parts,
        so an interrupted download resumes from the bytes it already has."""
        algos = algos | _algo(await source.vouched())
        head = await self._download_head(source)
        name = partial_name(str(self.root / source.key))
        partial: PartialDownload | None = None
        with self._translated(source.key):
            if head is not None and name not in self._partials:
                fd, partial = await asyncio.to_thread(self._reserve_partial, name, head, algos)
                self._partials.add(name)
            else:  # no version to resume against, or this store stages that file already
                fd, path = await asyncio.to_thread(self._reserve, source.size)
        if partial is not None:
            path = str(partial.path)
        try:
            with self._translated(source.key):
                sums = await self._parallel(fd, source, algos, partial)
                await asyncio.to_thread(os.fsync, fd)
                if partial is not None:  # a publication that fails still resumes it all
                    await partial.progress.flush()
        except BaseException as exc:
            os.close(fd)
            await self._abandon(path, partial, exc)
            raise
        os.close(fd)
        resumed = partial.resumed if partial else 0
        return Staged(source.key, source.size, sums, source, path, resumed=resumed)

    async def _download_head(self, source: Source) -> dict[str, Any] | None:
        """What a sidecar must match to resume: this source version, size and part size."""
        ident = await source.identity()
        version = ident.etag or (fingerprint(ident) if ident.mtime_ns is not None else None)
        if not version:
            return None
        return {"key": source.key, "size": source.size, "version": version,
                "part_size": effective_part_size(source.size, self._part_size)}

    async def _abandon(self, path: str, partial: PartialDownload | None,
                       exc: BaseException | None) -> None:
        """A staging file that failed: a partial download worth resuming keeps its file and
        saves its sidecar for the next run; anything else is removed."""
        try:
            if partial is not None and worth_resuming(exc):
                await partial.progress.flush()
            else:
                await asyncio.to_thread(_remove_staging, Path(path))
        finally:
            self._partials.discard(Path(path).name)

    async def _small(self, source: Source, algos: frozenset[Algo]) -> tuple[dict[Algo, str], str]:
        chunks: list[bytes] = []
        got = 0
        async with contextlib.aclosing(source.read()) as stream:
            async for chunk in stream:
                chunks.append(chunk)
                got += len(chunk)
        if got != source.size:
            raise SourceChanged(f"{source.key}: got {got} bytes, expected {source.size}",
                                store=self.name, key=source.key)
        digest = Digest(algos | _algo(await source.vouched()))
        path = await asyncio.to_thread(self._write_small, chunks, got, digest)
        return digest.results(), path

    async def _single(self, fd: int, source: Source, algos: frozenset[Algo]) -> dict[Algo, str]:
        """One stream; the hash set is fixed after the first chunk, when a single GET has
        told which checksum the object carries."""
        async with contextlib.aclosing(source.read()) as chunks:
            first = await anext(chunks, None)
            digest = Digest(algos | _algo(await source.vouched()))
            await self._fill(fd, source, 0, source.size, digest, _prepend(first, chunks))
        return digest.results()

    async def _parallel(
        self, fd: int, source: Source, algos: frozenset[Algo], partial: PartialDownload | None,
    ) -> dict[Algo, str]:
        """Ranged parts written at their offsets; CRCs per part, combined. MD5/SHA cannot be
        combined, so an in-order hasher follows the completed prefix of the file on a worker
        thread (hashlib releases the GIL) instead of re-reading it all at the end; it reads
        kept parts from the file like downloaded ones."""
        crcs = frozenset(a for a in algos if a in CRC_ALGOS)
        ranges = part_ranges(source.size, self._part_size)
        digests = [Digest(crcs, start) for start, _ in ranges]
        follower = InOrderHash(fd, ranges, algos - crcs) if algos - crcs else None
        saving = partial.progress.autosave() if partial else contextlib.nullcontext()
        try:
            async with saving, asyncio.TaskGroup() as tg:
                if follower is not None:
                    tg.create_task(follower.run())
                for i in range(len(ranges)):
                    tg.create_task(self._part(fd, source, i, ranges[i], digests, partial,
                                              follower.done if follower else None))
        except BaseExceptionGroup as group:
            raise first_error(group) from None
        sums = combine(digests)
        if follower is not None:
            sums.update(follower.digest.results())
        return sums

    async def _part(
        self, fd: int, source: Source, i: int, span: tuple[int, int],
        digests: MutableSequence[Digest], partial: PartialDownload | None,
        on_done: Callable[[int], None] | None,
    ) -> None:
        """One part: kept when the partial file still holds it intact, else downloaded."""
        start, end = span
        kept = await partial.keep(fd, i, start, end) if partial else None
        if kept is not None:
            digests[i] = kept
        else:
            await self._fill(fd, source, start, end, digests[i])
        if partial is not None:
            partial.done(i, digests[i])
        if on_done is not None:
            on_done(i)

    async def _fill(
        self, fd: int, source: Source, start: int, end: int, digest: Digest,
        chunks: AsyncGenerator[bytes, None] | None = None,
    ) -> None:
        """Stream [start, end) into the file; chunks are batched so one worker-thread call
        hashes and writes WRITE_BATCH bytes with pwritev (no joining copy)."""
        offset = start
        batch: list[bytes] = []
        batch_len = 0
        async with contextlib.aclosing(chunks or source.read(start, end)) as stream:
            async for chunk in stream:
                batch.append(chunk)
                batch_len += len(chunk)
                if batch_len >= WRITE_BATCH:
                    await _settled(hash_and_write, fd, batch, offset, digest)
                    offset += batch_len
                    batch, batch_len = [], 0
        if batch:
            await _settled(hash_and_write, fd, batch, offset, digest)
            offset += batch_len
        if offset != end:
            raise SourceChanged(f"{source.key}: range {start}-{end} ended at {offset}",
                                store=self.name, key=source.key)

    async def publish(self, staged: Staged, fence: Fence) -> Entry:
        def rename() -> os.stat_result:
            dfd, name = self._open_parent(staged.key, create=True)
            try:
                fence.check()
                os.rename(staged.handle, name, dst_dir_fd=dfd)
                self._unflushed.add(staged.key.rpartition("/")[0])
                if is_partial(Path(staged.handle)):  # done: nothing left to resume
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(sidecar_of(Path(staged.handle)))
                return os.stat(name, dir_fd=dfd, follow_symlinks=False)
            finally:
                os.close(dfd)
        thread = asyncio.ensure_future(asyncio.to_thread(rename))
        with self._translated(staged.key):
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
        self._partials.discard(Path(staged.handle).name)
        staged.handle = None
        return _entry(staged.key, st)

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
            with self._translated():
                await asyncio.to_thread(sync_dirs)

    async def discard(self, staged: Staged) -> None:
        """Callers discard from their exception handler (`sys.exception()` is why): a
        complete partial download that only missed its publication (cancelled, lease lost)
        stays for the next run; bytes that failed verification never do."""
        if staged.handle:
            path = Path(staged.handle)
            if not (is_partial(path) and worth_resuming(sys.exception())):
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(_remove_staging, path)
            self._partials.discard(path.name)
            staged.handle = None

    async def delete(self, keys: Sequence[str], fence: Fence) -> None:
        def remove(key: str) -> None:
            try:
                dfd, name = self._open_parent(key, create=False)
            except FileNotFoundError:
                return  # its directory is gone: nothing left to delete
            try:
                fence.check()
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=dfd)
            finally:
                os.close(dfd)
            parts = key.split("/")[:-1]
            while parts:  # prune directories the delete emptied, never the root
                try:
                    os.rmdir(self.root.joinpath(*parts))
                except OSError:
                    break
                parts.pop()
        for key in keys:
            with self._translated(key):
                await asyncio.to_thread(remove, key)


async def _settled(fn: Callable[..., None], *args: Any) -> None:
    """`fn` on a worker thread; a cancelled caller still waits for it to return. A write
    that outlived its caller could land after the descriptor was closed and its number
    reused (by the sidecar being saved, by another staging file)."""
    thread = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        await asyncio.shield(thread)
    except asyncio.CancelledError:
        await asyncio.wait({thread})
        raise


def _allocate(fd: int, size: int) -> None:
    if size:
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            if exc.errno in _SPACE_ERRNOS:
                raise
            os.ftruncate(fd, size)  # the filesystem cannot preallocate


def _remove_staging(path: Path) -> None:
    """A staging file, and the sidecar of a partial download."""
    for p in (path, sidecar_of(path)) if is_partial(path) else (path,):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)


def _algo(claim: Checksum | None) -> frozenset[Algo]:
    return frozenset({claim.algo}) if claim else frozenset()


async def _prepend(
    first: bytes | None, rest: AsyncGenerator[bytes, None]
) -> AsyncGenerator[bytes, None]:
    if first is not None:
        yield first
        async for chunk in rest:
            yield chunk


def _entry(key: str, st: os.stat_result) -> Entry:
    return Entry(key, st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino)


class VolumeSource:
    """A file being uploaded; it must not change between open and publish."""

    def __init__(self, store: VolumeStore, entry: Entry) -> None:
        self.store = store
        self.key = entry.key
        self.size = entry.size
        self._entry = entry
        self._own: Checksum | None = None

    async def read(self, start: int = 0, end: int | None = None) -> AsyncGenerator[bytes, None]:
        end = self.size if end is None else end
        store = self.store
        with store._translated(self.key):
            fd = await asyncio.to_thread(store._open_file, self.key)
        try:
            offset = start
            while offset < end:
                with store._translated(self.key):
                    chunk = await asyncio.to_thread(
                        os.pread, fd, min(CHUNK_BYTES, end - offset), offset)
                if not chunk:
                    raise SourceChanged(f"{store.root / self.key} shrank while it was read",
                                        store=store.name, key=self.key)
                offset += len(chunk)
                yield chunk
        finally:
            os.close(fd)

    async def vouched(self) -> Checksum | None:
        """A file vouches for nothing but what syncd computed from it (see `digest`)."""
        return self._own

    async def digest(self, algo: Algo) -> Checksum:
        if self._own is None or self._own.algo is not algo:
            own = await self.store.checksum(self._entry, algo)
            assert own is not None
            self._own = own
        return self._own

    async def identity(self) -> Entry:
        def current() -> os.stat_result:
            fd = self.store._open_file(self.key)
            try:
                return os.fstat(fd)
            finally:
                os.close(fd)
        with self.store._translated(self.key):
            st = await asyncio.to_thread(current)
        now = _entry(self.key, st)
        if now.stat_signature() != self._entry.stat_signature():
            raise SourceChanged(f"{self.store.root / self.key} changed while it was uploaded",
                                store=self.store.name, key=self.key)
        return now
