"""Interrupted transfers resume: a download from the verified parts it already has, a
multipart upload from the parts the server still holds; leftovers are cleaned up.

Everything runs against real servers (moto, rclone) and the real filesystem. A `Tap` wraps
a real source to count the bytes read from it and to hold reads past some offset, so a test
can interrupt a transfer at a known point without sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from syncd.config import S3Config, TransferConfig
from syncd.errors import IntegrityError, LeaseLost, SourceChanged
from syncd.listing import Entry, lower_keys
from syncd.stores.base import OpenFence, Staged, Store
from syncd.stores.resume import FORMAT, ResumeBook, read_record, write_record
from syncd.stores.s3 import S3Store
from syncd.stores.volume import VolumeStore
from syncd.verify import META_PREFIX, OWN_ALGO, hash_bytes
from tests.mirrors import MiB
from tests.servers import S3Server
from tests.stores.taps import Tap, until

PART = 5 * MiB
SIZE = 24 * MiB + 123  # five parts, the last one short
TRANSFER = TransferConfig(part_size=PART, multipart_threshold=PART, concurrency=4)


async def _cancel(task: asyncio.Task[Staged]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def _discard_during(store: Store, staged: Staged, exc: BaseException) -> None:
    """Discard as Transfer does: from the handler of the error that stopped the copy."""
    with contextlib.suppress(type(exc)):
        try:
            raise exc
        except type(exc):
            await store.discard(staged)
            raise


def _s3cfg(server: Any) -> S3Config:
    return S3Config(endpoint_url=server.endpoint_url, addressing_style="path")


def _volume(tmp_path: Path, name: str = "vol", **kw: Any) -> VolumeStore:
    root = tmp_path / name
    root.mkdir(exist_ok=True)
    return VolumeStore(root, part_size=PART, multipart_threshold=PART, **kw)


def _part_bytes(parts: Any, size: int = SIZE) -> int:
    """Bytes covered by these part indexes (0-based) of a SIZE object."""
    return sum(min(PART, size - int(i) * PART) for i in parts)


# --- downloads ---------------------------------------------------------------------------

def _sidecar(volume: VolumeStore) -> dict[str, Any] | None:
    found = list(volume.tmp_dir.glob("resume-*.part.json"))
    return read_record(found[0]) if len(found) == 1 else None


async def _interrupted_download(volume: VolumeStore, src: S3Store, entry: Entry) -> list[int]:
    """Stage `entry`, hold every part after the first two, cancel once the sidecar records
    both; returns the parts the sidecar kept."""
    tap = Tap(await src.open(entry), hold_from=2 * PART)
    task = asyncio.create_task(volume.stage(tap, frozenset()))
    await until(lambda: len((_sidecar(volume) or {}).get("parts", {})) >= 2)
    await _cancel(task)
    record = _sidecar(volume)
    assert record is not None, "a cancelled download keeps its sidecar"
    return sorted(int(i) for i in record["parts"])


async def _pull(volume: VolumeStore, src: S3Store, entry: Entry) -> tuple[Staged, Tap]:
    tap = Tap(await src.open(entry))
    staged = await volume.stage(tap, frozenset())
    claim = await tap.vouched()
    assert claim is not None and staged.checksums[claim.algo] == claim.value
    await volume.publish(staged, OpenFence())
    return staged, tap


async def _shard(s3: S3Server, bucket: str, tmp_path: Path) -> tuple[bytes, VolumeStore]:
    """One large object in the bucket and an empty, checked volume."""
    data = os.urandom(SIZE)
    s3.client().put_object(Bucket=bucket, Key="m/shard.bin", Body=data)
    volume = _volume(tmp_path)
    await volume.check(writable=True)
    return data, volume


async def test_download_resumes_from_verified_parts_after_cancel(s3, bucket, tmp_path):
    data, volume = await _shard(s3, bucket, tmp_path)
    async with S3Store(_s3cfg(s3), TRANSFER, bucket, "m/") as src:
        entry = (await src.list()).entries["shard.bin"]
        kept = await _interrupted_download(volume, src, entry)
        assert await volume.clean_temporaries(OpenFence()) == 0  # the next pass starts by cleaning
        staged, tap = await _pull(volume, src, entry)
    assert staged.resumed == _part_bytes(kept) >= 2 * PART
    assert tap.read_bytes == SIZE - staged.resumed
    assert (volume.root / "shard.bin").read_bytes() == data
    assert list(volume.tmp_dir.iterdir()) == []


async def test_download_resumes_when_only_its_short_last_part_finished(s3, bucket, tmp_path):
    """The last part's tail is written direct, padded to a block: the padding must be gone
    as soon as the part is written, or the kept file has the wrong size to be resumed."""
    data, volume = await _shard(s3, bucket, tmp_path)
    last = SIZE - SIZE % PART
    async with S3Store(_s3cfg(s3), TRANSFER, bucket, "m/") as src:
        entry = (await src.list()).entries["shard.bin"]
        tap = Tap(await src.open(entry), hold_before=last)
        task = asyncio.create_task(volume.stage(tap, frozenset()))
        await until(lambda: "4" in (_sidecar(volume) or {}).get("parts", {}))
        await _cancel(task)
        assert {p.stat().st_size for p in volume.tmp_dir.glob("resume-*.part")} == {SIZE}
        staged, _ = await _pull(volume, src, entry)
    assert staged.resumed == SIZE - last
    assert (volume.root / "shard.bin").read_bytes() == data


async def test_download_fetches_again_a_kept_part_whose_bytes_changed(s3, bucket, tmp_path):
    data, volume = await _shard(s3, bucket, tmp_path)
    async with S3Store(_s3cfg(s3), TRANSFER, bucket, "m/") as src:
        entry = (await src.list()).entries["shard.bin"]
        kept = await _interrupted_download(volume, src, entry)
        (partial,) = volume.tmp_dir.glob("resume-*.part")
        with partial.open("r+b") as fh:  # one flipped byte in the first kept part
            fh.seek(kept[0] * PART + 1000)
            byte = fh.read(1)
            fh.seek(-1, os.SEEK_CUR)
            fh.write(bytes([byte[0] ^ 0xFF]))
        staged, tap = await _pull(volume, src, entry)
    assert staged.resumed == _part_bytes(kept[1:]) > 0
    assert tap.read_bytes == SIZE - staged.resumed
    assert (volume.root / "shard.bin").read_bytes() == data


async def test_download_starts_over_when_the_source_etag_changed(s3, bucket, tmp_path):
    client = s3.client()
    client.put_object(Bucket=bucket, Key="m/shard.bin", Body=os.urandom(SIZE))
    volume = _volume(tmp_path)
    await volume.check(writable=True)
    async with S3Store(_s3cfg(s3), TRANSFER, bucket, "m/") as src:
        entry = (await src.list()).entries["shard.bin"]
        assert await _interrupted_download(volume, src, entry)
        newer = os.urandom(SIZE)  # same size, new ETag
        client.put_object(Bucket=bucket, Key="m/shard.bin", Body=newer)
        entry = (await src.list()).entries["shard.bin"]
        staged, tap = await _pull(volume, src, entry)
    assert staged.resumed == 0
    assert tap.read_bytes == SIZE
    assert (volume.root / "shard.bin").read_bytes() == newer


async def test_download_discard_keeps_an_interrupted_file_and_drops_a_bad_one(tmp_path):
    data = os.urandom(SIZE)
    origin = _volume(tmp_path, "origin")
    (origin.root / "ckpt.bin").write_bytes(data)
    entry = (await origin.list()).entries["ckpt.bin"]
    volume = _volume(tmp_path)
    await volume.check(writable=True)

    staged = await volume.stage(await origin.open(entry), frozenset())
    await _discard_during(volume, staged, LeaseLost("lease lost before publish"))
    assert len(list(volume.tmp_dir.glob("resume-*"))) == 2, "file and sidecar are kept"

    tap = Tap(await origin.open(entry))
    staged = await volume.stage(tap, frozenset())
    assert (staged.resumed, tap.read_bytes) == (SIZE, 0)
    await _discard_during(volume, staged, IntegrityError("checksum mismatch"))
    assert list(volume.tmp_dir.iterdir()) == []

    tap = Tap(await origin.open(entry))
    staged = await volume.stage(tap, frozenset())
    assert (staged.resumed, tap.read_bytes) == (0, SIZE)
    await volume.publish(staged, OpenFence())
    assert (volume.root / "ckpt.bin").read_bytes() == data
    assert list(volume.tmp_dir.iterdir()) == []


async def test_clean_temporaries_keeps_fresh_partials_and_removes_old_and_orphans(tmp_path):
    volume = _volume(tmp_path, resume_max_age_s=3600)
    await volume.check(writable=True)
    tmp = volume.tmp_dir
    record = {"format": FORMAT, "key": "k", "size": 1, "version": "e", "part_size": 1,
              "parts": {}}

    def pair(name: str, sidecar: bytes | None = None) -> None:
        (tmp / f"{name}.part").write_bytes(b"x")
        if sidecar is None:
            write_record(tmp / f"{name}.part.json", record, durable=False)
        else:
            (tmp / f"{name}.part.json").write_bytes(sidecar)

    pair("resume-fresh")
    pair("resume-old")
    old = time.time() - 7200
    for path in tmp.glob("resume-old*"):
        os.utime(path, (old, old))
    pair("resume-corrupt", sidecar=b"{not json")
    (tmp / "resume-orphan.part").write_bytes(b"x")
    write_record(tmp / "resume-gone.part.json", record, durable=False)
    for leftover in ("0123abcd.part", ".probe-1", ".resume-fresh.part.json.12ab.tmp"):
        (tmp / leftover).write_bytes(b"x")

    assert await volume.clean_temporaries(OpenFence()) == 9
    assert sorted(p.name for p in tmp.iterdir()) == ["resume-fresh.part",
                                                     "resume-fresh.part.json"]


# --- uploads -----------------------------------------------------------------------------

def _book(volume: VolumeStore) -> ResumeBook:
    return ResumeBook(volume.meta_dir / "uploads")


def _only_record(book: ResumeBook) -> dict[str, Any] | None:
    records = list(book.records().values())
    return records[0] if len(records) == 1 else None


async def _checkpoint(tmp_path: Path, data: bytes) -> tuple[VolumeStore, Entry]:
    volume = _volume(tmp_path)
    (volume.root / "ckpt.bin").write_bytes(data)
    return volume, (await volume.list()).entries["ckpt.bin"]


async def _interrupted_upload(store: S3Store, volume: VolumeStore, entry: Entry,
                              book: ResumeBook) -> dict[str, Any]:
    """Upload `entry`, hold every part after the first two, cancel once the book records
    both; returns the record."""
    tap = Tap(await volume.open(entry), hold_from=2 * PART)
    task = asyncio.create_task(store.stage(tap, frozenset()))
    await until(lambda: len((_only_record(book) or {}).get("parts", {})) >= 2)
    await _cancel(task)
    record = _only_record(book)
    assert record is not None, "a cancelled upload keeps its record"
    return record


def _server_parts(s3: Any, bucket: str, key: str, upload_id: str) -> set[int] | None:
    try:
        listed = s3.client().list_parts(Bucket=bucket, Key=key, UploadId=upload_id)
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "NoSuchUpload"
        return None
    return {p["PartNumber"] for p in listed.get("Parts", [])}


def _assert_object(s3: Any, bucket: str, key: str, data: bytes) -> None:
    got = s3.client().get_object(Bucket=bucket, Key=key)
    assert got["Body"].read() == data
    own = lower_keys(got["Metadata"])[f"{META_PREFIX}{OWN_ALGO}"]
    assert own == hash_bytes(data, (OWN_ALGO,))[OWN_ALGO]


async def test_upload_resumes_sending_only_the_missing_parts(s3, bucket, tmp_path):
    data = os.urandom(SIZE)
    volume, entry = await _checkpoint(tmp_path, data)
    book = _book(volume)
    async with S3Store(_s3cfg(s3), TRANSFER, bucket, "p/", resume=book) as store:
        record = await _interrupted_upload(store, volume, entry, book)
    kept = sorted(int(n) for n in record["parts"])
    on_server = _server_parts(s3, bucket, "p/ckpt.bin", record["upload_id"])
    assert on_server is not None and on_server >= set(kept), "a recorded upload is not aborted"

    async with S3Store(_s3cfg(s3), TRANSFER, bucket, "p/", resume=book) as store:  # restart
        tap = Tap(await volume.open(entry))
        staged = await store.stage(tap, frozenset())
        assert staged.resumed == _part_bytes(n - 1 for n in kept) >= 2 * PART
        assert tap.read_bytes == SIZE - staged.resumed
        await store.publish(staged, OpenFence())
    _assert_object(s3, bucket, "p/ckpt.bin", data)
    assert book.records() == {}


@pytest.mark.parametrize("why", ["stale", "rewritten"])
async def test_upload_with_an_unusable_record_is_aborted_and_restarted(s3, bucket, tmp_path,
                                                                       why):
    data = os.urandom(SIZE)
    volume, entry = await _checkpoint(tmp_path, data)
    book = _book(volume)
    async with S3Store(_s3cfg(s3), TRANSFER, bucket, "p/", resume=book) as store:
        old = (await _interrupted_upload(store, volume, entry, book))["upload_id"]
    stale_s = 0.0 if why == "stale" else 3600.0
    if why == "rewritten":
        data = os.urandom(SIZE)
        (volume.root / "ckpt.bin").write_bytes(data)
        os.utime(volume.root / "ckpt.bin", ns=(1, 1))
        entry = (await volume.list()).entries["ckpt.bin"]

    async with S3Store(_s3cfg(s3), TRANSFER, bucket, "p/", resume=book,
                       stale_upload_s=stale_s) as store:
        tap = Tap(await volume.open(entry))
        staged = await store.stage(tap, frozenset())
        assert (staged.resumed, tap.read_bytes) == (0, SIZE)
        assert _server_parts(s3, bucket, "p/ckpt.bin", old) is None, "old upload aborted"
        await store.publish(staged, OpenFence())
    _assert_object(s3, bucket, "p/ckpt.bin", data)
    assert book.records() == {}


async def test_upload_staged_whole_but_not_published_is_completed_by_the_next_run(s3, bucket,
                                                                                  tmp_path):
    data = os.urandom(SIZE)
    volume, entry = await _checkpoint(tmp_path, data)
    book = _book(volume)
    async with S3Store(_s3cfg(s3), TRANSFER, bucket, "p/", resume=book) as store:
        staged = await store.stage(await volume.open(entry), frozenset())
        await _discard_during(store, staged, LeaseLost("lease lost before complete"))
    async with S3Store(_s3cfg(s3), TRANSFER, bucket, "p/", resume=book) as store:
        tap = Tap(await volume.open(entry))
        staged = await store.stage(tap, frozenset())
        assert (staged.resumed, tap.read_bytes) == (SIZE, 0)
        await store.publish(staged, OpenFence())
    _assert_object(s3, bucket, "p/ckpt.bin", data)
    assert book.records() == {}


async def test_upload_that_failed_verification_is_aborted_and_forgotten(s3, bucket, tmp_path):
    volume, entry = await _checkpoint(tmp_path, os.urandom(SIZE))
    book = _book(volume)
    async with S3Store(_s3cfg(s3), TRANSFER, bucket, "p/", resume=book) as store:
        staged = await store.stage(await volume.open(entry), frozenset())
        record = _only_record(book)
        assert record is not None
        await _discard_during(store, staged, SourceChanged("ckpt.bin changed"))
    assert book.records() == {}
    assert _server_parts(s3, bucket, "p/ckpt.bin", record["upload_id"]) is None


async def test_abort_stale_uploads_aborts_abandoned_ones_and_keeps_recorded(s3, bucket,
                                                                           tmp_path):
    volume, entry = await _checkpoint(tmp_path, os.urandom(SIZE))
    book = _book(volume)
    async with S3Store(_s3cfg(s3), TRANSFER, bucket, "p/", resume=book) as store:
        assert await store.abort_stale_uploads(0) == 0  # nothing pending (rclone: NoSuchUpload)
        client = s3.client()
        abandoned = client.create_multipart_upload(Bucket=bucket, Key="p/old.bin")["UploadId"]
        elsewhere = client.create_multipart_upload(Bucket=bucket, Key="q/x.bin")["UploadId"]
        recorded = (await _interrupted_upload(store, volume, entry, book))["upload_id"]
        if s3.name == "rclone":  # moto dates every upload 2010: there all look old
            assert await store.abort_stale_uploads(3600) == 0
        assert await store.abort_stale_uploads(0) == 1
    pending = {u["UploadId"] for u in client.list_multipart_uploads(Bucket=bucket)["Uploads"]}
    assert abandoned not in pending
    assert {recorded, elsewhere} <= pending

    async with S3Store(_s3cfg(s3), TRANSFER, bucket, "p/", resume=book,
                       stale_upload_s=0) as store:  # the record is stale now: no protection
        assert await store.abort_stale_uploads(0) == 1
    pending = {u["UploadId"] for u in client.list_multipart_uploads(Bucket=bucket)["Uploads"]}
    assert pending == {elsewhere}
    assert book.records() == {}
