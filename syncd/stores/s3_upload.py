"""Writing objects to S3 unseen until publication: one PUT of bytes held in memory, or the
parts of a multipart upload that CompleteMultipartUpload makes visible.

Kept apart from `s3.py` because uploads carry state of their own across runs: with a resume
book (on the volume) an interrupted multipart upload is recorded and a later run continues
it, sending only the parts the server does not hold; uploads no run will continue are
aborted (`abort_stale_uploads`). The store wires in its control-plane client, its error
translation and its transfer slots; everything else here is this module's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from syncd.config import TransferConfig
from syncd.errors import SourceChanged, first_error
from syncd.listing import Algo, Checksum, Entry, normalize_etag
from syncd.parts import effective_part_size, part_ranges
from syncd.stores.base import Fence, Source, Staged, staged_by
from syncd.stores.resume import (
    PartialUpload,
    Progress,
    ResumeBook,
    record_name,
    same_head,
    worth_resuming,
)
from syncd.stores.s3_http import NotS3Response, required_etag
from syncd.stores.sigv4 import UNSIGNED_PAYLOAD
from syncd.verify import META_PREFIX, OWN_ALGO, Digest

if TYPE_CHECKING:
    from syncd.stores.s3 import S3Store

GEN_META = "syncd-gen"
# ListMultipartUploads answers meaning "nothing to list": rclone says NoSuchUpload for a
# bucket without pending uploads; other servers may not implement the call at all.
_NO_UPLOAD_LISTING = {"NoSuchUpload", "NotImplemented", "501", "MethodNotAllowed", "405"}


@dataclass(slots=True, kw_only=True)
class S3Staged(Staged):
    """An object staged for S3: its `body` held in memory for one PUT, or the parts of an
    uncompleted multipart `upload`. Both are None once it is published or discarded."""

    body: bytearray | None = None
    upload: PartialUpload | None = None


class Uploads:
    """The writing side of one `S3Store`: stage, publish, discard, abandoned-upload cleanup."""

    def __init__(
        self, store: S3Store, transfer: TransferConfig, *,
        control: Callable[[], Awaitable[Any]],
        translated: Callable[[str | None], contextlib.AbstractContextManager[None]],
        slots: asyncio.Semaphore, book: ResumeBook | None, stale_upload_s: float,
    ) -> None:
        self._store = store
        self._transfer = transfer
        self._control = control  # the botocore client: create, list, complete, abort
        self._translated = translated
        self._slots = slots  # shared with the store's reads
        self._book = book  # multipart uploads recorded here survive a restart
        self._stale_upload_s = stale_upload_s

    async def stage(self, source: Source, want: frozenset[Algo], generation: int = 0) -> S3Staged:
        """Single PUT: bytes held in memory until publish. Large: parts of an uncompleted MPU."""
        algos = frozenset({OWN_ALGO, Algo.CRC32C, *want})
        if source.size <= self._transfer.multipart_threshold:
            await self._store.budget.take(source.size)  # held until publish or discard
            try:
                digest = Digest(algos)
                buf = await _read_exactly(source, 0, source.size, digest)
            except BaseException:
                await self._store.budget.give(source.size)
                raise
            sums = digest.results()
            meta = {f"{META_PREFIX}{OWN_ALGO}": sums[OWN_ALGO], **_gen_meta(generation)}
            return S3Staged(source.key, source.size, sums, source, meta, body=buf)
        return await self._stage_multipart(source, algos, generation)

    async def _stage_multipart(
        self, source: Source, algos: frozenset[Algo], generation: int
    ) -> S3Staged:
        """Parts of an uncompleted upload. With a resume book, the upload is recorded, and a
        later run continues it: parts the server still holds are neither read nor sent."""
        key = source.key
        ranges = part_ranges(source.size, int(self._transfer.part_size))
        head = await self._upload_head(source)
        upload = await self._resumed(key, head, ranges, algos) if head else None
        if upload is None:
            upload = await self._create(source, generation)
        try:
            if head is not None and upload.progress is None:
                await self._record(upload, head)
            async with upload.autosave():
                await self._send_parts(source, upload, ranges, algos)
            sums = upload.checksums(ranges)
            if sums[OWN_ALGO] != upload.promised:
                raise SourceChanged(f"{key} changed while it was uploaded",
                                    store=self._store.name, key=key)
            return S3Staged(key, source.size, sums, source, upload.metadata,
                            resumed=upload.resumed, upload=upload)
        except BaseException as exc:
            await self._end_upload(key, upload, exc)
            raise

    def _record_name(self, object_key: str) -> str:
        """One record per object per endpoint: two push mirrors of one volume may send the
        same file to buckets of the same name at AWS and at R2."""
        return record_name(self._store.endpoint_url, self._store.bucket, object_key)

    async def _upload_head(self, source: Source) -> dict[str, Any] | None:
        """What an upload record must match to resume: the object, and the file's size and
        stat signature (a rewritten checkpoint is a new upload). None without a book, or
        for a source that is not a file."""
        if self._book is None:
            return None
        ident = await source.identity()
        if ident.mtime_ns is None:
            return None
        return {"endpoint": self._store.endpoint_url, "bucket": self._store.bucket,
                "object_key": self._store.object_key(source.key),
                "size": source.size, "signature": list(ident.stat_signature()),
                "part_size": effective_part_size(source.size, int(self._transfer.part_size))}

    async def _resumed(
        self, key: str, head: dict[str, Any], ranges: Sequence[tuple[int, int]],
        algos: frozenset[Algo],
    ) -> PartialUpload | None:
        """The recorded upload of this very file, if it is fresh and the server still has
        it; a record that does not match (or is stale) has its upload aborted."""
        assert self._book is not None
        name = self._record_name(self._store.object_key(key))
        record = await asyncio.to_thread(self._book.load, name)
        if record is None:
            return None
        upload_id = record.get("upload_id")
        upload = None
        if same_head(record, head) and not self._stale(record) and isinstance(upload_id, str):
            listed = await self._listed_parts(key, upload_id)
            if listed is not None:
                upload = PartialUpload.resume(record, listed, ranges, algos)
        if upload is None:
            if isinstance(upload_id, str):
                await self._abort(self._store.object_key(key), upload_id)
            await asyncio.to_thread(self._book.delete, name)
            return None
        upload.record = name
        upload.progress = Progress(record, functools.partial(self._book.save, name),
                                   upload.done)
        return upload

    def _stale(self, record: dict[str, Any]) -> bool:
        initiated = record.get("initiated")
        if not isinstance(initiated, int | float):
            return True
        return time.time() - initiated >= self._stale_upload_s

    async def _listed_parts(
        self, key: str, upload_id: str
    ) -> dict[int, tuple[str | None, int]] | None:
        """The parts the server holds for the upload (ETag, size), or None once it is gone."""
        client = await self._control()
        parts: dict[int, tuple[str | None, int]] = {}
        marker = 0
        with self._translated(key):
            while True:
                try:
                    page = await client.list_parts(
                        Bucket=self._store.bucket, Key=self._store.object_key(key),
                        UploadId=upload_id, PartNumberMarker=marker)
                except ClientError as exc:
                    if _code(exc) == "NoSuchUpload":
                        return None
                    raise
                for part in page.get("Parts") or []:
                    parts[int(part["PartNumber"])] = (normalize_etag(part.get("ETag")),
                                                      int(part.get("Size", -1)))
                following = int(page.get("NextPartNumberMarker") or 0)
                if not page.get("IsTruncated") or following <= marker:
                    return parts
                marker = following

    async def _create(self, source: Source, generation: int) -> PartialUpload:
        promised = await source.digest(OWN_ALGO)  # metadata must be set before the 1st part
        meta = {f"{META_PREFIX}{OWN_ALGO}": promised.value, **_gen_meta(generation)}
        with self._translated(source.key):
            created = await (await self._control()).create_multipart_upload(
                Bucket=self._store.bucket, Key=self._store.object_key(source.key), Metadata=meta,
                ChecksumAlgorithm="CRC32C",
            )
            upload_id = created.get("UploadId")
            if not isinstance(upload_id, str) or not upload_id:  # the store's hook says why
                raise _answer_without("CreateMultipartUpload", "UploadId", created)
        return PartialUpload(upload_id, promised.value, meta)

    async def _record(self, upload: PartialUpload, head: dict[str, Any]) -> None:
        """Write the new upload into the book before its first part is sent."""
        assert self._book is not None
        name = self._record_name(str(head["object_key"]))
        upload.record = name
        upload.progress = Progress(
            {**head, "upload_id": upload.upload_id, "promised": upload.promised,
             "metadata": upload.metadata, "initiated": time.time()},
            functools.partial(self._book.save, name))
        await upload.progress.flush(force=True)

    async def _send_parts(
        self, source: Source, upload: PartialUpload, ranges: Sequence[tuple[int, int]],
        algos: frozenset[Algo],
    ) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                for i, (start, end) in enumerate(ranges):
                    if i + 1 not in upload.done:
                        tg.create_task(self._upload_part(source, upload, i + 1, start, end,
                                                         algos))
        except BaseExceptionGroup as group:
            raise first_error(group) from None

    async def _upload_part(
        self, source: Source, upload: PartialUpload, number: int, start: int, end: int,
        algos: frozenset[Algo],
    ) -> None:
        digest = Digest(algos, start)
        await self._store.budget.take(end - start)
        try:
            async with self._slots:
                buf = await _read_exactly(source, start, end, digest)
                crc = digest.results()[Algo.CRC32C]
                with self._translated(source.key):
                    resp = await self._store.http.send(
                        "PUT", self._store.bucket, self._store.object_key(source.key), body=buf,
                        query=[("partNumber", str(number)), ("uploadId", upload.upload_id)],
                        headers={"x-amz-checksum-crc32c": crc}, payload_hash=UNSIGNED_PAYLOAD)
                    try:  # CompleteMultipartUpload names each part by its ETag
                        etag = await required_etag(resp, "UploadPart")
                    finally:
                        resp.release()
        finally:
            await self._store.budget.give(end - start)
        upload.add(number, etag, digest, algos)

    async def _end_upload(self, key: str, upload: PartialUpload, exc: BaseException | None
                          ) -> None:
        """An upload that will not be published now: kept, with its record, when it was
        interrupted and is recorded (the next run continues it); else aborted."""
        if upload.progress is not None and worth_resuming(exc):
            await upload.progress.flush()
            return
        await self._abort(self._store.object_key(key), upload.upload_id)
        await self._forget(upload)

    async def _forget(self, upload: PartialUpload) -> None:
        if self._book is not None and upload.record is not None:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self._book.delete, upload.record)

    async def _abort(self, object_key: str, upload_id: str) -> bool:
        try:
            await asyncio.shield((await self._control()).abort_multipart_upload(
                Bucket=self._store.bucket, Key=object_key, UploadId=upload_id))
        except Exception:
            return False
        return True

    async def abort_stale_uploads(self, older_than_s: float) -> int:
        """Abort uploads under the prefix that no run will continue: initiated more than
        `older_than_s` ago and not named by a fresh record in the resume book (a crash
        before its record was written, a file since deleted, a stale record). Returns how
        many were aborted. moto reports every upload as initiated in 2010: there any
        upload without a record counts as old."""
        protected = await self._protected_uploads()
        now = datetime.now(UTC)
        aborted = 0
        for object_key, upload_id, initiated in await self._pending_uploads():
            if upload_id in protected or (now - initiated).total_seconds() < older_than_s:
                continue
            aborted += await self._abort(object_key, upload_id)
        return aborted

    async def _protected_uploads(self) -> set[str]:
        """Upload ids a fresh record in the book will resume (any store's: the book is the
        volume's). This store's stale records are deleted: their uploads are fair game."""
        if self._book is None:
            return set()
        await asyncio.to_thread(self._book.sweep, self._stale_upload_s)
        records = await asyncio.to_thread(self._book.records)
        protected: set[str] = set()
        for name, record in records.items():
            mine = (record.get("bucket") == self._store.bucket
                    and str(record.get("object_key", "")).startswith(self._store.prefix))
            if mine and self._stale(record):
                await asyncio.to_thread(self._book.delete, name)
            elif isinstance(record.get("upload_id"), str):
                protected.add(record["upload_id"])
        return protected

    async def _pending_uploads(self) -> Sequence[tuple[str, str, datetime]]:
        """Every uncompleted upload under the prefix (ListMultipartUploads, paged); those
        the server does not date are left out."""
        client = await self._control()
        found: dict[str, tuple[str, str, datetime]] = {}
        markers: dict[str, str] = {}
        with self._translated(None):
            while True:
                try:
                    page = await client.list_multipart_uploads(
                        Bucket=self._store.bucket, Prefix=self._store.prefix, **markers)
                except ClientError as exc:
                    if _code(exc) in _NO_UPLOAD_LISTING:
                        return list(found.values())
                    raise
                for up in page.get("Uploads") or []:
                    if isinstance(up.get("Initiated"), datetime):
                        found.setdefault(up["UploadId"], (up["Key"], up["UploadId"],
                                                          up["Initiated"]))
                following = {"KeyMarker": str(page.get("NextKeyMarker") or ""),
                             "UploadIdMarker": str(page.get("NextUploadIdMarker") or "")}
                if not page.get("IsTruncated") or not following["KeyMarker"] or (
                        following == markers):
                    return list(found.values())
                markers = following

    async def publish(self, staged: Staged, fence: Fence) -> Entry:
        mine = staged_by(staged, S3Staged, self._store.name)
        key = mine.key
        upload = mine.upload
        if upload is None:  # one PUT of the bytes in memory
            if mine.body is None:
                raise ValueError(f"{key}: published or discarded already")
            fence.check()
            headers = {f"x-amz-meta-{k}": v for k, v in staged.metadata.items()}
            headers["x-amz-checksum-crc32c"] = staged.checksums[Algo.CRC32C]
            with self._translated(key):
                resp = await self._store.http.send(
                    "PUT", self._store.bucket, self._store.object_key(key), body=mine.body,
                    headers=headers, payload_hash=UNSIGNED_PAYLOAD, guard=fence.check)
                try:  # a 200 without an ETag is a web server, not a stored object
                    etag = await required_etag(resp, "PutObject")
                finally:
                    resp.release()
            mine.body = None
            await self._store.budget.give(staged.size)
            return Entry(key, staged.size, etag=normalize_etag(etag),
                         checksum=Checksum(OWN_ALGO, staged.checksums[OWN_ALGO]))
        fence.check()
        with self._translated(key):
            done = await (await self._control()).complete_multipart_upload(
                Bucket=self._store.bucket, Key=self._store.object_key(key),
                UploadId=upload.upload_id, MultipartUpload={"Parts": upload.completion()},
            )
            if not done.get("ETag"):  # the store's hook says why, with the body
                raise _answer_without("CompleteMultipartUpload", "ETag", done)
        mine.upload = None
        await self._forget(upload)
        head = await self._store.head(key)
        if not normalize_etag(head.get("ETag")):
            with self._translated(key):
                raise NotS3Response("HeadObject", "no ETag header", status=200,
                                    content_type=None)
        return Entry(key, staged.size, etag=normalize_etag(head.get("ETag")),
                     checksum=Checksum(OWN_ALGO, staged.checksums[OWN_ALGO]))

    async def discard(self, staged: Staged) -> None:
        """Callers discard from their exception handler (`sys.exception()` is why): a
        recorded upload that was only interrupted stays for the next run to complete."""
        mine = staged_by(staged, S3Staged, self._store.name)
        if mine.upload is not None:
            await self._end_upload(mine.key, mine.upload, sys.exception())
        elif mine.body is not None:
            await self._store.budget.give(mine.size)
        mine.body = mine.upload = None


def _answer_without(request: str, field: str, answer: dict[str, Any]) -> NotS3Response:
    meta = answer.get("ResponseMetadata") or {}
    return NotS3Response(request, f"an answer without {field}",
                         status=int(meta.get("HTTPStatusCode") or 200),
                         content_type=(meta.get("HTTPHeaders") or {}).get("content-type"))


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _gen_meta(generation: int) -> dict[str, str]:
    """The writer's lease generation, so an audit can tell which writer published what."""
    return {GEN_META: str(generation)} if generation else {}


async def _read_exactly(source: Source, start: int, end: int, digest: Digest) -> bytearray:
    """[start, end) of `source` into one preallocated buffer (one copy per chunk), hashed."""
    buf = bytearray(end - start)
    view = memoryview(buf)
    at = 0
    async for chunk in source.read(start, end):
        if at + len(chunk) > len(buf):
            raise SourceChanged(f"{source.key} grew while it was read", key=source.key)
        view[at:at + len(chunk)] = chunk
        digest.update(chunk)
        at += len(chunk)
    if at != len(buf):
        raise SourceChanged(f"{source.key} shrank while it was read", key=source.key)
    return buf

