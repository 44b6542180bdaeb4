"""Per-mirror record of what syncd published, under the volume's `.syncd/state/`.

It lets a no-op run skip unchanged files without re-reading or re-hashing them: a key whose
source and destination fingerprints both match the record is in sync. It is a cache, not the
truth: a missing or unreadable record only costs re-hashing (planner `Adopt`), never a wrong
skip, so a corrupt file is ignored rather than fatal. Saved by tmp + fsync + rename.

Format 2 is JSON lines: a header `{"version": 2, "count": N}`, then one
`[key, src, dst, checksum, gen]` per line. It is read and written a slice of lines at a
time, so at 100,000 objects neither the file's text nor a decoded copy of the whole record
sits in memory beside the record itself (format 1, one JSON object, did both). Format 1 is
still read; the next save writes format 2.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from syncd import durable
from syncd.keys import RESERVED_DIR
from syncd.listing import Entry, Record, Recorded

VERSION = 2
_SLICE_BYTES = 1 << 20  # lines decoded per json.loads call


def path_for(root: Path, mirror: str) -> Path:
    return root / RESERVED_DIR / "state" / f"{mirror}.json"


class _Unusable(ValueError):
    """The file is not a record this version can trust."""


def _recorded(row: Any) -> tuple[str, Recorded]:
    """[key, src, dst, checksum or null, gen], each of its type, or _Unusable."""
    if not (isinstance(row, list) and len(row) == 5 and isinstance(row[0], str)
            and isinstance(row[1], str) and isinstance(row[2], str)
            and (row[3] is None or isinstance(row[3], str)) and type(row[4]) is int):
        raise _Unusable("bad row")
    return row[0], Recorded(row[1], row[2], row[3], row[4])


def _read(path: Path, keys: Mapping[str, Entry] | None = None) -> Record:
    """Keys found in `keys` (a listing of this pass) share its string: at 100,000 objects a
    second copy of every key costs megabytes."""
    try:
        with path.open("rb") as f:
            header = json.loads(f.readline() or b"null")
            if isinstance(header, dict) and header.get("version") == VERSION:
                count = header.get("count")
                record = _read_lines(f, keys)
                if type(count) is not int or len(record) != count:
                    return {}  # cut short: trust none of it
                return record
            if isinstance(header, dict) and header.get("version") == 1:  # one line, whole
                return dict(_recorded([k, *v]) for k, v in header["entries"].items())
            return {}
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return {}


def _read_lines(f: IO[bytes], keys: Mapping[str, Entry] | None) -> Record:
    record: Record = {}
    while lines := f.readlines(_SLICE_BYTES):
        for row in json.loads(b"[" + b",".join(lines) + b"]"):
            key, rec = _recorded(row)
            if keys is not None and (e := keys.get(key)) is not None:
                key = e.key
            record[key] = rec
    return record


def _lines(record: Record) -> Iterator[bytes]:
    yield json.dumps({"version": VERSION, "count": len(record)}).encode() + b"\n"
    batch: list[str] = []
    size = 0
    for k, r in record.items():
        line = json.dumps([k, r.src, r.dst, r.checksum, r.gen], separators=(",", ":"),
                          ensure_ascii=False)
        batch.append(line)
        size += len(line)
        if size >= _SLICE_BYTES:
            yield ("\n".join(batch) + "\n").encode("utf-8")
            batch, size = [], 0
    if batch:
        yield ("\n".join(batch) + "\n").encode("utf-8")


def _write(path: Path, record: Record) -> None:
    durable.replace(path, _lines(record))


async def load(root: Path, mirror: str, keys: Mapping[str, Entry] | None = None) -> Record:
    return await asyncio.to_thread(_read, path_for(root, mirror), keys)


async def save(root: Path, mirror: str, record: Record) -> None:
    await asyncio.to_thread(_write, path_for(root, mirror), dict(record))
