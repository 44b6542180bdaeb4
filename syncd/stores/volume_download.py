"""Getting bytes into a volume's tmp directory, fsynced and hashed, ready to be renamed.

Kept apart from `volume.py` (which confines paths, lists, renames into place and deletes)
because staging is the volume's largest job: free-space checks and preallocation, small
files in one write, large ones as ranged parts written at their offsets, and partial
downloads that survive a restart (a sidecar records finished parts, so the next run
downloads only what is missing). Moving the bytes into a staging file (buffered or
O_DIRECT) is `volume_write.Writer`. The store hands in its error translation; OSErrors raised
here become StoreErrors naming the store's paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import sys
import time
import uuid
from collections.abc import AsyncGenerator, Callable, MutableSequence, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from syncd.errors import NativeError, SourceChanged, StoreError, TooLarge, first_error
from syncd.listing import Algo, Checksum, fingerprint, weak_etag
from syncd.parts import part_ranges
from syncd.stores.base import Fence, Source, Staged, native_stream, part_boundaries
from syncd.stores.resume import (
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
from syncd.stores.staging import WRITE_BATCH, InOrderHash, ReadBack, Space, hash_range
from syncd.stores.volume_native import stream_into
from syncd.stores.volume_write import StagingFile, Writer
from syncd.verify import CRC_ALGOS, OWN_ALGO, Composite, Digest, PartHashes, combine

SMALL_BYTES = WRITE_BATCH  # files up to this size are buffered and written in one call
SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
INLINE_MAX = 64 << 10  # files up to this size are hashed on the loop, written at publication
READ_BLOCK = 4 << 20  # the in-order hashers' direct reads: large, so the disk keeps up
READ_PAIRS = 2  # in-order hashers reading at once (2 buffers each)


@dataclass(slots=True)
class Inline:
    """A small file staged in memory: publication writes, fsyncs and renames it in one
    worker-thread call, so it costs one hand-off to a thread instead of two. Its checksums
    are known before that, so a file that fails verification is never written at all."""

    chunks: list[bytes]
    size: int


@dataclass(slots=True, kw_only=True)
class VolumeStaged(Staged):
    """A file staged on the volume: held in memory (`inline`, written at publication) or in
    a staging file under tmp (`temp`). Both are None once it is published or discarded."""

    inline: Inline | None = None
    temp: str | None = None


class Downloads:
    """The staging files of one `VolumeStore`, in its tmp directory (shared with the stores
    of its artifact versions, which stage on the same filesystem)."""

    def __init__(
        self, root: Path, tmp_dir: Path, *, name: str,
        translated: Callable[[str | None], contextlib.AbstractContextManager[None]],
        part_size: int, multipart_threshold: int, space: Space, resume_max_age_s: float,
        direct_io: bool = True,
    ) -> None:
        self.root = root  # partial files are named after their destination under it
        self.tmp_dir = tmp_dir
        self.name = name
        self._translated = translated
        self._part_size = part_size
        self._threshold = multipart_threshold
        self.space = space
        self._resume_max_age_s = resume_max_age_s
        self._partials: set[str] = set()  # partial downloads staged now, by file name
        self._writer = Writer(name=name, direct_io=direct_io)
        self._readback = ReadBack(READ_BLOCK, READ_PAIRS)

    @property
    def writes_direct(self) -> bool:
        """Whether staging still writes with O_DIRECT (off for good once refused)."""
        return self._writer.direct

    def published(self, path: Path) -> None:
        """`path` was renamed into place: nothing of it is staged any more."""
        self._partials.discard(path.name)

    async def clean_temporaries(self, fence: Fence) -> int:
        """Remove staging leftovers of an earlier crash; returns how many. Partial downloads
        with a readable sidecar stay for `resume_max_age_s`, so the next pass resumes them.
        Each removal follows a fence check: a holder that lost its lease must not delete
        what its successor is staging."""
        def clean() -> int:
            if self.tmp_dir.is_symlink():
                raise StoreError(f"{self.tmp_dir} is a symlink; refusing to clean it",
                                 store=self.name)
            with contextlib.suppress(FileNotFoundError), os.scandir(self.tmp_dir) as it:
                files = [e.name for e in it if e.is_file(follow_symlinks=False)]
                keep = fresh_partials(self.tmp_dir, files, time.time(), self._resume_max_age_s)
                keep.update(*((p, sidecar_of(self.tmp_dir / p).name) for p in self._partials))
                removed = 0
                for name in sorted(set(files) - keep):
                    fence.check()
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.tmp_dir / name)
                        removed += 1
                return removed
            return 0
        with self._translated(None):
            return await asyncio.to_thread(clean)

    def _check_space(self, size: int, key: str) -> None:
        """Take `size` bytes of the volume's free space, or refuse before any byte moves:
        TooLarge for this object alone, NoSpace when the volume has nothing left (`Space`)."""
        self.space.reserve(size, key, store=self.name)

    def _create_temp(self) -> tuple[int, str]:
        path = str(self.tmp_dir / f"{uuid.uuid4().hex}.part")
        flags = os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC
        try:
            return os.open(path, flags, 0o644), path
        except FileNotFoundError:  # someone removed .syncd/tmp under us
            os.makedirs(self.tmp_dir, exist_ok=True)
            return os.open(path, flags, 0o644), path

    def _reserve(self, size: int, key: str) -> tuple[StagingFile, str]:
        self._check_space(size, key)
        fd, path = self._create_temp()
        try:
            _allocate(fd, size)
            return self._writer.file(fd, path, size), path
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise

    def _reserve_partial(
        self, name: str, head: dict[str, Any], algos: frozenset[Algo],
    ) -> tuple[StagingFile, PartialDownload]:
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
                self._check_space(max(0, size - st.st_blocks * 512), str(head["key"]))
            else:
                recorded = {}
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(sidecar_of(path))
                os.ftruncate(fd, 0)  # first: the space it held counts as free
                self._check_space(size, str(head["key"]))
                _allocate(fd, size)
            file = self._writer.file(fd, str(path), size)
        except BaseException as exc:
            os.close(fd)
            if fresh or isinstance(exc, TooLarge) or (
                    isinstance(exc, OSError) and exc.errno in SPACE_ERRNOS):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)  # an empty or space-starved file must not hold the disk
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(sidecar_of(path))
            raise
        return file, PartialDownload(path, head, recorded, algos)

    def _write_small(
        self, key: str, chunks: Sequence[bytes], size: int, digest: Digest | None,
    ) -> str:
        """Hash (unless `digest` is None), create, write, fsync and close in one worker call:
        a small file costs one hand-off to a thread instead of four."""
        self._check_space(size, key)
        fd, path = self._create_temp()
        try:
            self._writer.write_small(fd, chunks, size, digest)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)
        return path

    def write_inline(self, key: str, inline: Inline) -> str:
        """The staging file of an inline-staged file, fsynced (on a worker thread)."""
        return self._write_small(key, inline.chunks, inline.size, None)

    async def stage(
        self, source: Source, want: frozenset[Algo], generation: int = 0,
    ) -> VolumeStaged:
        algos = frozenset({OWN_ALGO, *want})
        if source.size <= SMALL_BYTES and not self.space.fits_recently(source.size):
            # refused before the download; larger files are checked as they are reserved
            with self._translated(source.key):
                await asyncio.to_thread(self.space.check, source.size, source.key,
                                        store=self.name)
        if source.size <= INLINE_MAX:
            with self._translated(source.key):
                chunks, got = await self._gather(source)
            digest = await _digest(source, algos)
            for chunk in chunks:
                digest.update(chunk)
            return VolumeStaged(source.key, got, digest.results(), source,
                                inline=Inline(chunks, got), parts=_parts(digest))
        if source.size <= SMALL_BYTES:
            with self._translated(source.key):
                digest, path = await self._small(source, algos)
            return VolumeStaged(source.key, source.size, digest.results(), source, temp=path,
                                parts=_parts(digest))
        if source.size > self._threshold:
            return await self._stage_parts(source, algos)
        with self._translated(source.key):
            file, path = await asyncio.to_thread(self._reserve, source.size, source.key)
        try:
            with self._translated(source.key):
                digest = await self._single(file, source, algos)
                await asyncio.to_thread(os.fsync, file.fd)
        except BaseException:
            file.close()
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        file.close()
        return VolumeStaged(source.key, source.size, digest.results(), source, temp=path,
                            parts=_parts(digest))

    async def _stage_parts(self, source: Source, algos: frozenset[Algo]) -> VolumeStaged:
        """A large file in ranged parts. When the source names its version (an ETag), the
        staging file is named after the destination and a sidecar records finished parts,
        so an interrupted download resumes from the bytes it already has."""
        claim = await source.vouched()
        algos = algos | _algo(claim)
        ranges = part_boundaries(source) or part_ranges(source.size, self._part_size)
        head = await self._download_head(source, ranges)
        name = partial_name(str(self.root / source.key))
        partial: PartialDownload | None = None
        with self._translated(source.key):
            if head is not None and name not in self._partials:
                file, partial = await asyncio.to_thread(
                    self._reserve_partial, name, head, algos)
                self._partials.add(name)
            else:  # no version to resume against, or this store stages that file already
                file, path = await asyncio.to_thread(self._reserve, source.size, source.key)
        if partial is not None:
            path = str(partial.path)
        try:
            with self._translated(source.key):
                sums, parts = await self._parallel(file, source, algos, partial, ranges,
                                                   _per_part(claim))
                await asyncio.to_thread(os.fsync, file.fd)
                if partial is not None:  # a publication that fails still resumes it all
                    await partial.progress.flush()
        except BaseException as exc:
            file.close()
            await self._abandon(path, partial, exc)
            raise
        file.close()
        resumed = partial.resumed if partial else 0
        return VolumeStaged(source.key, source.size, sums, source, resumed=resumed, temp=path,
                            parts=parts)

    async def _download_head(self, source: Source,
                             ranges: Sequence[tuple[int, int]]) -> dict[str, Any] | None:
        """What a sidecar must match to resume: this source version, size and part size
        (a multipart upload's own, when its parts are verified one by one)."""
        ident = await source.identity()
        if ident.mtime_ns is not None or weak_etag(ident.etag):
            # a volume file, or an ETag that names no content: size and time name the version
            timed = ident.mtime_ns is not None or ident.last_modified is not None
            version = fingerprint(ident) if timed else None
        else:
            version = ident.etag
        if not version:
            return None
        return {"key": source.key, "size": source.size, "version": version,
                "part_size": ranges[0][1] if ranges else 0}

    async def _abandon(self, path: str, partial: PartialDownload | None,
                       exc: BaseException | None) -> None:
        """A staging file that failed: a partial download worth keeping (`_keeps`) keeps its
        file and saves its sidecar for the next run; anything else is removed."""
        try:
            if partial is not None and await self._keeps(exc):
                await partial.progress.flush()
            else:
                await asyncio.to_thread(_remove_staging, Path(path))
        finally:
            self._partials.discard(Path(path).name)

    async def _keeps(self, exc: BaseException | None) -> bool:
        """Is a partial download that stopped with `exc` kept for the next run to resume?

        Only when it is worth resuming (`worth_resuming`: unfinished, not wrong) and the
        volume can spare its space. A partial file is preallocated at its full size and
        holds all of it until it is resumed (or `resume_max_age_s` passes). On a volume with
        room above `min_free_bytes` that costs nothing the next pass would not spend again,
        and saves downloading again what already arrived. On a volume that ran out of space
        in this store's life (a download failed with ENOSPC, the pass stopped and cancelled
        the others) or is below its floor now, that space is exactly what the volume's other
        users and the files that do fit need, and the next pass would meet the same
        shortage: the partial is removed, and downloaded again once there is room."""
        if not worth_resuming(exc) or self.space.starved:
            return False
        try:
            return await asyncio.to_thread(self.space.above_floor) >= 0
        except OSError:
            return False

    async def _gather(self, source: Source) -> tuple[list[bytes], int]:
        """A small source's whole body, as the chunks it came in."""
        chunks: list[bytes] = []
        got = 0
        async with contextlib.aclosing(source.read()) as stream:
            async for chunk in stream:
                chunks.append(chunk)
                got += len(chunk)
        if got != source.size:
            raise SourceChanged(f"{source.key}: got {got} bytes, expected {source.size}",
                                store=self.name, key=source.key)
        return chunks, got

    async def _small(self, source: Source, algos: frozenset[Algo]) -> tuple[Digest, str]:
        chunks, got = await self._gather(source)
        digest = await _digest(source, algos)
        path = await asyncio.to_thread(self._write_small, source.key, chunks, got, digest)
        return digest, path

    async def _single(
        self, file: StagingFile, source: Source, algos: frozenset[Algo],
    ) -> Digest:
        """One stream; the hash set is fixed after the first chunk, when a single GET has
        told which checksum the object carries."""
        async with contextlib.aclosing(source.read()) as chunks:
            first = await anext(chunks, None)
            digest = await _digest(source, algos)
            await self._writer.fill(file, source, 0, source.size, digest, _prepend(first, chunks))
        return digest

    async def _parallel(
        self, file: StagingFile, source: Source, algos: frozenset[Algo],
        partial: PartialDownload | None, ranges: Sequence[tuple[int, int]],
        per_part: Algo | None,
    ) -> tuple[dict[Algo, str], tuple[str, ...]]:
        """Ranged parts written at their offsets; CRCs per part, combined. MD5/SHA cannot be
        combined, so an in-order hasher follows the completed prefix of the file on a worker
        thread (hashlib releases the GIL) instead of re-reading it all at the end; it reads
        kept parts from the file like downloaded ones. On a multipart upload's own
        `ranges`, each part is also hashed with the claim's algorithm `per_part` (in
        parallel, on worker threads): its part checksums, to combine as S3 did. A source
        the native engine serves goes that way instead, unless kept parts are resumed."""
        stream = native_stream(source)
        if stream is not None and not (partial and partial.recorded):
            try:
                return await stream_into(file, self._writer, stream, algos, partial, ranges,
                                         per_part, source.key)
            except NativeError:
                # the engine gave up without an S3 answer (connections it could not keep, a
                # reply it could not read): syncd's own path takes over from its parts
                if partial is not None:
                    partial.reopen()
        crcs = frozenset(a for a in algos if a in CRC_ALGOS)
        own = frozenset({per_part}) if per_part else frozenset()
        digests = [Digest(crcs | own, start) for start, _ in ranges]
        follower = (InOrderHash(file.fd, list(ranges), algos - crcs, file.direct, self._readback)
                    if algos - crcs else None)
        saving = partial.progress.autosave() if partial else contextlib.nullcontext()
        try:
            async with saving, asyncio.TaskGroup() as tg:
                if follower is not None:
                    tg.create_task(follower.run())
                for i in range(len(ranges)):
                    tg.create_task(self._part(file, source, i, ranges[i], digests, partial,
                                              follower.done if follower else None, own))
        except BaseExceptionGroup as group:
            raise first_error(group) from None
        sums = combine(digests)
        if follower is not None:
            sums.update(follower.digest.results())
        parts = tuple(d.results()[per_part] for d in digests) if per_part else ()
        return sums, parts

    async def _part(
        self, file: StagingFile, source: Source, i: int, span: tuple[int, int],
        digests: MutableSequence[Digest], partial: PartialDownload | None,
        on_done: Callable[[int], None] | None, own: frozenset[Algo],
    ) -> None:
        """One part: kept when the partial file still holds it intact, else downloaded. A
        kept part is re-hashed with what its sidecar does not record (`own`)."""
        start, end = span
        kept = await partial.keep(file.fd, i, start, end) if partial else None
        if kept is not None:
            if own - frozenset(CRC_ALGOS):  # digests[i] is still fresh: hash it all
                await asyncio.to_thread(hash_range, file.fd, start, end, digests[i])
            else:
                digests[i] = kept
        else:
            await self._writer.fill(file, source, start, end, digests[i])
        if partial is not None:
            partial.done(i, digests[i])
        if on_done is not None:
            on_done(i)

    async def discard(self, staged: VolumeStaged) -> None:
        """Callers discard from their exception handler (`sys.exception()` is why): a
        complete partial download that only missed its publication (cancelled, lease lost)
        stays for the next run (space allowing: `_keeps`); bytes that failed verification
        never do."""
        why = sys.exception()
        staged.inline = None  # never written: nothing to remove
        if staged.temp:
            path = Path(staged.temp)
            if not (is_partial(path) and await self._keeps(why)):
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(_remove_staging, path)
            self._partials.discard(path.name)
            staged.temp = None


def _allocate(fd: int, size: int) -> None:
    if size:
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            if exc.errno in SPACE_ERRNOS:
                raise
            os.ftruncate(fd, size)  # the filesystem cannot preallocate


def _remove_staging(path: Path) -> None:
    """A staging file, and the sidecar of a partial download."""
    for p in (path, sidecar_of(path)) if is_partial(path) else (path,):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)


def _algo(claim: Checksum | None) -> frozenset[Algo]:
    """The hash a claim needs over the whole file. A marked composite's parts decide
    (`verify.mismatch`): its MD5/SHA is hashed per part only, not twice; its CRC stays,
    since the resume sidecar records each part's CRCs."""
    if claim is None or (isinstance(claim, Composite) and claim.marked
                         and claim.algo not in CRC_ALGOS):
        return frozenset()
    return frozenset({claim.algo})


def _per_part(claim: Checksum | None) -> Algo | None:
    """The algorithm each upload part is hashed with: a composite claim's only."""
    return claim.algo if isinstance(claim, Composite) else None


async def _digest(source: Source, algos: frozenset[Algo]) -> Digest:
    """The digest of one stream: `algos`, the claim's algorithm, and per part on the
    upload's boundaries when the claim is a multipart upload's (asked after the first
    chunk, once a single GET has told what the object carries)."""
    claim = await source.vouched()
    bounds = part_boundaries(source) if claim else None
    parts = PartHashes(claim.algo, bounds) if claim and bounds is not None else None
    return Digest(algos | _algo(claim), parts=parts)


def _parts(digest: Digest) -> tuple[str, ...]:
    return tuple(digest.parts.values) if digest.parts is not None else ()


async def _prepend(
    first: bytes | None, rest: AsyncGenerator[bytes, None]
) -> AsyncGenerator[bytes, None]:
    if first is not None:
        yield first
        async for chunk in rest:
            yield chunk
