"""Resuming interrupted transfers: small JSON records of the parts that are already done.

A large download keeps a sidecar next to its staging file in `.syncd/tmp/` (which parts the
file holds, with their CRCs); a multipart upload keeps a record in a `ResumeBook` (its upload
id, and each part's ETag and CRCs). A record is a hint and never trusted alone: a kept
download part is re-hashed from disk and must match its recorded CRCs, a kept upload part
must be listed by the server (ListParts) with its recorded ETag and size, and the whole
object is verified as always. So a record can be cheap: a missing or corrupt one reads as
absent, and one saved late (at most about once a second) only costs re-sending some parts.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import stat
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from syncd.durable import write_new
from syncd.errors import IntegrityError, NoSpace, NotFound, SourceChanged, UnsafeKey
from syncd.listing import Algo, normalize_etag
from syncd.stores.staging import hash_range
from syncd.verify import CRC_ALGOS, OWN_ALGO, Digest, crc_bytes, crc_combine, encode

FORMAT = 1  # bumped when a record's meaning changes: an old record then reads as absent
CHECKPOINT_S = 1.0  # progress is saved at most this often (and when a transfer stops)
PARTIAL_PREFIX = "resume-"  # staging files of downloads that may resume
SIDECAR_SUFFIX = ".json"
Sidecar = dict[str, Any]
Crcs = dict[str, int]  # algo name -> CRC value of one part


def worth_resuming(exc: BaseException | None) -> bool:
    """Unfinished business (cancelled, crashed, connection or lease lost) keeps its partial
    bytes for the next run; bytes proven wrong or stale (IntegrityError, SourceChanged, a
    source or upload that is gone), a full disk (the partial file would keep the space) and
    an explicit discard (no exception) do not."""
    if exc is None:
        return False
    return not isinstance(exc, IntegrityError | SourceChanged | NotFound | UnsafeKey | NoSpace)


def record_name(*parts: str) -> str:
    """A fixed-length file name for whatever identifies a transfer (keys may be long)."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def read_record(path: Path) -> Sidecar | None:
    """The record at `path`, or None when it is missing, corrupt or of another format."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as fh:
            record = json.loads(fh.read(1 << 24))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        return None
    return record


def write_record(path: Path, record: Mapping[str, Any], *, durable: bool) -> None:
    """Replace `path` atomically (a new file, then rename): a reader sees the old record or
    the new one. `durable` fsyncs the new file first; a sidecar need not, since every part
    it names is re-hashed before it is kept."""
    data = json.dumps(record, separators=(",", ":"), sort_keys=True).encode()
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        if durable:
            write_new(tmp, data)
        else:
            flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW
            fd = os.open(tmp, flags, 0o644)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def same_head(record: Mapping[str, Any] | None, head: Mapping[str, Any]) -> bool:
    """Does `record` describe the same transfer (every field of `head` equal)?"""
    return record is not None and all(record.get(k) == v for k, v in head.items())


def part_records(record: Mapping[str, Any] | None) -> dict[int, Any]:
    """The record's parts by number; a malformed entry is dropped (its part re-sent)."""
    parts = record.get("parts") if record else None
    if not isinstance(parts, dict):
        return {}
    return {int(k): v for k, v in parts.items()
            if k.isascii() and k.isdigit() and isinstance(v, dict)}


def crc_values(digest: Digest, algos: Iterable[Algo]) -> Crcs:
    return {str(a): digest.crc(a) for a in algos if a in CRC_ALGOS}


def crcs_match(recorded: Mapping[str, Any], actual: Crcs) -> bool:
    """Equal on every algorithm both have, and syncd's own one must be among them."""
    common = recorded.keys() & actual.keys()
    return str(OWN_ALGO) in common and all(recorded[a] == actual[a] for a in common)


def combine_crcs(parts: Sequence[tuple[int, Mapping[str, int]]]) -> dict[Algo, str]:
    """Whole-object CRCs (S3 wire form) from (length, CRCs) of contiguous parts in order,
    for parts whose bytes are not at hand (an upload's kept parts exist only as records)."""
    algos = [a for a in CRC_ALGOS if all(str(a) in crcs for _, crcs in parts)]
    out: dict[Algo, str] = {}
    for algo in algos:
        value = 0
        for i, (length, crcs) in enumerate(parts):
            crc = int(crcs[str(algo)])
            value = crc if i == 0 else crc_combine(algo, value, crc, length)
        out[algo] = encode(algo, crc_bytes(algo, value))
    return out


class Progress:
    """The completed parts of one transfer, saved as one record while `autosave()` runs (at
    most every `interval_s`, and within `interval_s` of a part finishing, so a crash loses
    at most about a second of progress) and on `flush()`. Saves run on a worker thread, one
    at a time, so a later record never loses to an earlier one."""

    def __init__(
        self, head: Mapping[str, Any], save: Callable[[Sidecar], None],
        parts: Mapping[int, Any] | None = None, *, interval_s: float = CHECKPOINT_S,
    ) -> None:
        self.head = dict(head)
        self.parts: dict[int, Any] = dict(parts or {})
        self._save = save
        self._interval_s = interval_s
        self._saved_at = float("-inf")
        self._dirty = False
        self._changed = asyncio.Event()
        self._inflight: asyncio.Future[bool] | None = None

    def record(self) -> Sidecar:
        return {**self.head, "format": FORMAT,
                "parts": {str(n): p for n, p in sorted(self.parts.items())}}

    def add(self, part: int, info: Any) -> None:
        self.parts[part] = info
        self._dirty = True
        self._changed.set()

    @contextlib.asynccontextmanager
    async def autosave(self) -> AsyncIterator[None]:
        """Save in the background while the body runs; on leaving, no save is in flight
        (one landing later could resurrect a record its caller is about to delete)."""
        saver = asyncio.create_task(self._save_loop(), name="resume-progress")
        try:
            yield
        finally:
            saver.cancel()
            await asyncio.wait({saver})
            if self._inflight is not None:
                await asyncio.wait({self._inflight})

    async def flush(self, *, force: bool = False) -> None:
        """Save whatever is not saved yet (everything with `force`); callable from a
        cancelled task's cleanup."""
        if self._inflight is not None:
            await asyncio.wait({self._inflight})
        if self._dirty or force:
            await self._write()

    async def _save_loop(self) -> None:
        while True:
            await self._changed.wait()
            await asyncio.sleep(max(0.0, self._saved_at + self._interval_s - time.monotonic()))
            self._changed.clear()
            await self.flush()

    async def _write(self) -> None:
        self._dirty = False
        self._saved_at = time.monotonic()
        future = asyncio.ensure_future(asyncio.to_thread(self._save_quietly, self.record()))
        self._inflight = future
        future.add_done_callback(self._saved)
        await asyncio.shield(future)  # a cancelled caller leaves the save to finish

    def _save_quietly(self, record: Sidecar) -> bool:
        """A record that cannot be written costs a re-transfer later, never correctness."""
        try:
            self._save(record)
        except OSError:
            return False
        return True

    def _saved(self, future: asyncio.Future[bool]) -> None:
        self._inflight = None
        if future.cancelled() or future.exception() is not None or not future.result():
            self._dirty = True
            self._changed.set()  # the save loop tries again


class PartialDownload:
    """A large download's staging file, named after its destination, and its sidecar of
    the parts it already holds; `keep()` proves a recorded part is still intact."""

    def __init__(self, path: Path, head: Mapping[str, Any], recorded: Mapping[int, Any],
                 algos: Iterable[Algo]) -> None:
        self.path = path
        self.sidecar = sidecar_of(path)
        self.recorded = dict(recorded)
        self.algos = frozenset(a for a in algos if a in CRC_ALGOS)  # what parts are hashed with
        self.resumed = 0  # bytes kept instead of downloaded
        self.progress = Progress(head, self._save)

    def _save(self, record: Sidecar) -> None:
        write_record(self.sidecar, record, durable=False)

    async def keep(self, fd: int, part: int, start: int, end: int) -> Digest | None:
        """The part's digest when the file still holds the bytes the sidecar recorded
        (re-hashed off the event loop), else None: the part is downloaded again."""
        recorded = self.recorded.pop(part, None)
        if recorded is None:
            return None
        digest = Digest(self.algos, start)
        await asyncio.to_thread(hash_range, fd, start, end, digest)
        if not crcs_match(recorded, crc_values(digest, self.algos)):
            return None
        self.resumed += end - start
        return digest

    def done(self, part: int, digest: Digest) -> None:
        self.progress.add(part, crc_values(digest, self.algos))

    def reopen(self) -> None:
        """Every part finished so far becomes a part to keep (proved again by `keep()`), as
        if the download had stopped here: another path takes it over."""
        self.recorded = dict(self.progress.parts)

    def remove(self) -> None:
        for path in (self.path, self.sidecar):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def partial_name(dest: str) -> str:
    """The staging file of a download to `dest`: the same on every run, so it can resume."""
    return f"{PARTIAL_PREFIX}{hashlib.sha256(dest.encode()).hexdigest()[:24]}.part"


def sidecar_of(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def is_partial(path: Path) -> bool:
    return path.name.startswith(PARTIAL_PREFIX) and path.name.endswith(".part")


def fresh_partials(tmp_dir: Path, names: Iterable[str], now: float, max_age_s: float
                   ) -> set[str]:
    """Which files in `tmp_dir` are resumable downloads to keep: a staging file and its
    readable sidecar, the newer of the two modified within `max_age_s`. Everything else
    there is a leftover (uuid temporaries, orphans, stale or unreadable records)."""
    present = set(names)
    keep: set[str] = set()
    for name in present:
        part = tmp_dir / name
        side = sidecar_of(part)
        if not is_partial(part) or side.name not in present:
            continue
        try:
            mtime = max(os.lstat(part).st_mtime, os.lstat(side).st_mtime)
        except FileNotFoundError:
            continue
        if now - mtime <= max_age_s and read_record(side) is not None:
            keep.update((name, side.name))
    return keep


@dataclass(slots=True)
class PartialUpload:
    """An uncompleted multipart upload: the checksum and metadata it promised at creation,
    and per finished part its ETag and CRCs (the bytes themselves are on the server)."""

    upload_id: str
    promised: str
    metadata: dict[str, str]
    done: dict[int, Sidecar] = field(default_factory=dict)  # part number -> etag, crcs
    record: str | None = None  # its name in the resume book
    progress: Progress | None = None
    resumed: int = 0  # bytes of parts kept from an earlier run

    @classmethod
    def resume(cls, record: Sidecar, listed: Mapping[int, tuple[str | None, int]],
               ranges: Sequence[tuple[int, int]], algos: Iterable[Algo]) -> PartialUpload | None:
        """The upload `record` describes, keeping each recorded part the server still lists
        with the same ETag and size (ListParts); None when the record is malformed."""
        upload_id, promised, meta = (record.get(k) for k in ("upload_id", "promised", "metadata"))
        if not (isinstance(upload_id, str) and isinstance(promised, str)
                and isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
            return None
        need = {str(a) for a in algos if a in CRC_ALGOS}
        upload = cls(upload_id, promised, {str(k): str(v) for k, v in meta.items()})
        for number, part in part_records(record).items():
            crcs = part.get("crcs")
            if not (1 <= number <= len(ranges) and isinstance(crcs, dict)
                    and need <= crcs.keys() and all(isinstance(v, int) for v in crcs.values())):
                continue
            start, end = ranges[number - 1]
            if listed.get(number) == (normalize_etag(part.get("etag")), end - start):
                upload.done[number] = part
                upload.resumed += end - start
        return upload

    def add(self, number: int, etag: str, digest: Digest, algos: Iterable[Algo]) -> None:
        part = {"etag": etag, "crcs": crc_values(digest, algos)}
        self.done[number] = part
        if self.progress is not None:
            self.progress.add(number, part)

    def autosave(self) -> contextlib.AbstractAsyncContextManager[None]:
        return self.progress.autosave() if self.progress else contextlib.nullcontext()

    def completion(self) -> list[dict[str, Any]]:
        """The parts as CompleteMultipartUpload takes them, in order."""
        return [{"PartNumber": n, "ETag": p["etag"],
                 "ChecksumCRC32C": encode(Algo.CRC32C, crc_bytes(Algo.CRC32C,
                                                                 p["crcs"][str(Algo.CRC32C)]))}
                for n, p in sorted(self.done.items())]

    def checksums(self, ranges: Sequence[tuple[int, int]]) -> dict[Algo, str]:
        """The whole object's CRCs, combined from every part's (sent now or kept)."""
        return combine_crcs([(end - start, self.done[i + 1]["crcs"])
                             for i, (start, end) in enumerate(ranges)])


class ResumeBook:
    """A directory of upload records (`<volume root>/.syncd/uploads`), one per object being
    uploaded. Its methods do blocking file I/O: call them off the event loop."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, name: str) -> Path:
        return self.root / f"{name}{SIDECAR_SUFFIX}"

    def load(self, name: str) -> Sidecar | None:
        return read_record(self.path(name))

    def save(self, name: str, record: Mapping[str, Any]) -> None:
        self._ensure_root()
        write_record(self.path(name), record, durable=True)

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(name))

    def names(self) -> list[str]:
        try:
            with os.scandir(self.root) as it:
                return sorted(e.name[: -len(SIDECAR_SUFFIX)] for e in it
                              if e.name.endswith(SIDECAR_SUFFIX) and not e.name.startswith(".")
                              and e.is_file(follow_symlinks=False))
        except FileNotFoundError:
            return []

    def records(self) -> dict[str, Sidecar]:
        """Every readable record by name (corrupt ones read as absent)."""
        found = {name: self.load(name) for name in self.names()}
        return {name: record for name, record in found.items() if record is not None}

    def sweep(self, older_than_s: float) -> int:
        """Remove half-written records (a crash between write and rename) older than
        `older_than_s`; returns how many."""
        removed, now = 0, time.time()
        with contextlib.suppress(FileNotFoundError), os.scandir(self.root) as it:
            for e in it:
                if e.name.startswith(".") and e.name.endswith(".tmp") and e.is_file(
                        follow_symlinks=False) and now - e.stat().st_mtime >= older_than_s:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(e.path)
                        removed += 1
        return removed

    def age_s(self, name: str, now: float | None = None) -> float | None:
        """Seconds since the record was last written, or None when there is none."""
        try:
            mtime = os.lstat(self.path(name)).st_mtime
        except FileNotFoundError:
            return None
        return (time.time() if now is None else now) - mtime

    def _ensure_root(self) -> None:
        """A real directory: a symlink planted there would send records elsewhere."""
        self.root.mkdir(parents=True, exist_ok=True)
        if not stat.S_ISDIR(os.lstat(self.root).st_mode):
            raise NotADirectoryError(f"{self.root} is not a directory (a symlink?)")
