"""Values describing what a store holds. No I/O.

An `Entry` is one object or file, keyed by its path relative to the mirror root ('/'-separated).
A `Listing` also says whether it is `complete`: the planner never deletes on the strength of a
listing that failed part-way, because "absent from the listing" would then not mean "absent".
A path the listing could not read (a directory without read or search permission) is named in
`unreadable` instead: the rest of the tree is still known, so only deletes under those paths
need holding back, and the listing stays `complete`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum


class Algo(StrEnum):
    """Checksum algorithms, strongest-and-cheapest first in `PREFERENCE`."""

    CRC64NVME = "crc64nvme"
    CRC32C = "crc32c"
    CRC32 = "crc32"
    SHA256 = "sha256"
    SHA1 = "sha1"
    MD5 = "md5"


@dataclass(frozen=True, slots=True)
class Checksum:
    """A full-object checksum; `value` is the S3 wire form (base64; hex for MD5 ETags)."""

    algo: Algo
    value: str

    def __str__(self) -> str:
        return f"{self.algo}:{self.value}"


@dataclass(frozen=True, slots=True)
class Entry:
    """One object or file. `etag` is unquoted; `mtime_ns`/`inode` only come from the volume.
    `last_modified` is S3's, in whole seconds (`epoch_s`), and is kept only where the ETag
    is weak (`weak_etag`): there it is part of the identity; elsewhere it would only cost
    memory per object in a 100k-object mirror."""

    key: str
    size: int
    etag: str | None = None
    mtime_ns: int | None = None
    inode: int | None = None
    checksum: Checksum | None = None
    last_modified: int | None = None

    def stat_signature(self) -> tuple[int, int | None, int | None]:
        """What tells a volume file unchanged without reading it."""
        return (self.size, self.mtime_ns, self.inode)


@dataclass(slots=True)
class Listing:
    """Entries by key. `complete=False` when any part of the listing failed."""

    entries: dict[str, Entry] = field(default_factory=dict)
    complete: bool = True
    refused: dict[str, str] = field(default_factory=dict)  # raw key -> why it was refused
    # key of a file or directory ('/'-separated, no trailing slash) -> why it could not be read;
    # what is at or under it may be missing from `entries`
    unreadable: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, entries: Iterable[Entry], *, complete: bool = True) -> Listing:
        return cls({e.key: e for e in entries}, complete)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries.values())

    def __contains__(self, key: object) -> bool:
        return key in self.entries

    def get(self, key: str) -> Entry | None:
        return self.entries.get(key)

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries.values())


def normalize_etag(etag: str | None) -> str | None:
    """Servers disagree on quoting (rclone lists unquoted, HEADs quoted); compare bare."""
    if etag is None:
        return None
    etag = etag.strip()
    if etag.startswith("W/"):
        etag = etag[2:]
    return etag.strip('"') or None


def md5_etag(etag: str | None) -> str | None:
    """The hex MD5 when `etag` is a single-part upload's ETag, else None."""
    bare = normalize_etag(etag)
    if bare and len(bare) == 32 and all(c in "0123456789abcdef" for c in bare.lower()):
        return bare.lower()
    return None


EMPTY_MD5 = "d41d8cd98f00b204e9800998ecf8427e"  # md5 of no bytes


def weak_etag(etag: str | None) -> bool:
    """True when `etag` does not depend on the object's content, so it cannot tell versions
    apart: absent or empty, or the MD5 of nothing with or without a part count, which
    SeaweedFS's own tools (`weed filer.copy`, its FUSE mount) write (issue 19). Such an object
    is identified by size and Last-Modified, and a ranged read of it cannot be pinned by
    If-Match."""
    bare = normalize_etag(etag)
    if not bare:
        return True
    head, _, count = bare.lower().partition("-")
    return head == EMPTY_MD5 and (not count or count.isdigit())


def lower_keys(mapping: Mapping[str, str] | None) -> dict[str, str]:
    """Metadata keys vary in case between servers (rclone capitalises them)."""
    return {k.lower(): v for k, v in (mapping or {}).items()}


def epoch_s(text: str | None) -> int | None:
    """S3's Last-Modified in whole seconds since the epoch, as a listing writes it (ISO 8601,
    with or without milliseconds) or a HEAD/GET header (RFC 7231); None if absent or not a
    time. Whole seconds because a header carries no more: a listing and a read of one version
    must agree."""
    if not text or not text.strip():
        return None
    text = text.strip()
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
    if when.tzinfo is None:  # both forms are UTC by definition
        when = when.replace(tzinfo=UTC)
    return math.floor(when.timestamp())


def fingerprint(entry: Entry) -> str:
    """What identifies this version without reading it: ETag on S3, stat fields on a volume.
    A weak ETag (`weak_etag`, SeaweedFS's own tools) names no version, so there size and
    Last-Modified do (issue 19): a rewrite at the same size within the same second, or under
    a server clock that steps back, goes unseen. Strong ETags keep their old fingerprint, so
    records made before stay valid; an empty object has one possible content."""
    if entry.mtime_ns is not None:
        return f"{entry.size}:{entry.mtime_ns}:{entry.inode or 0}"
    if entry.last_modified is not None and entry.size and weak_etag(entry.etag):
        return f"{entry.size}:{entry.etag or ''}@{entry.last_modified}"
    return f"{entry.size}:{entry.etag or ''}"


@dataclass(frozen=True, slots=True)
class Recorded:
    """What syncd published for one key: both sides' fingerprints, the verified checksum and
    the lease generation it was published under (so an audit can tell which writer did it)."""

    src: str
    dst: str
    checksum: str | None = None
    gen: int = 0


Record = dict[str, Recorded]
