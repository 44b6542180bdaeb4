"""Checksums: which one the source vouches for, and computing it while bytes stream.

Our own hash decides, never a server's word: the test servers accept wrong `x-amz-checksum-*`
headers (shared/design/leases.md, Part B), so a stored checksum is only a claim that syncd
checks against the bytes it actually received.

Large objects move as parallel parts, so the CRCs are computed per part and combined
(awscrt's combine functions), which yields the whole-object CRC without re-reading the
file. MD5/SHA cannot be combined; a store that moved parts in parallel re-reads the staged
file for those.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from syncd.listing import Algo, Checksum, lower_keys, md5_etag, normalize_etag, weak_etag

OWN_ALGO = Algo.CRC64NVME  # what syncd records and stores in object metadata
META_PREFIX = "syncd-"  # x-amz-meta-syncd-crc64nvme, x-amz-meta-syncd-gen
CRC_ALGOS = (Algo.CRC64NVME, Algo.CRC32C, Algo.CRC32)


_WIDTHS = {Algo.CRC32: 32, Algo.CRC32C: 32, Algo.CRC64NVME: 64}


@functools.cache
def _crc_fn(algo: Algo) -> Callable[[Any, int], int]:
    """awscrt's hardware CRC, loaded on first use: its native library costs ~50 ms at start,
    which a no-op pass or a one-line command never needs."""
    from awscrt import checksums

    fn: Callable[[Any, int], int] = getattr(checksums, algo.value)
    return fn


@functools.cache
def _combine_fn(algo: Algo) -> Callable[[int, int, int], int]:
    from awscrt import checksums

    fn: Callable[[int, int, int], int] = getattr(checksums, f"combine_{algo.value}")
    return fn


def crc_combine(algo: Algo, crc1: int, crc2: int, len2: int) -> int:
    """CRC of A||B from crc(A), crc(B) and len(B), without the bytes (awscrt's)."""
    return _combine_fn(algo)(crc1, crc2, len2)


def crc_bytes(algo: Algo, value: int) -> bytes:
    return value.to_bytes(_WIDTHS[algo] // 8, "big")


def encode(algo: Algo, raw: bytes) -> str:
    """The S3 wire form: base64 of the big-endian digest; hex for MD5 (ETag style)."""
    return raw.hex() if algo is Algo.MD5 else base64.b64encode(raw).decode("ascii")


class Digest:
    """Hashes one contiguous byte range for several algorithms at once."""

    __slots__ = ("_crcs", "_fns", "_other", "length", "parts", "start")

    def __init__(self, algos: Iterable[Algo], start: int = 0,
                 parts: PartHashes | None = None) -> None:
        self.start = start
        self.parts = parts  # also hashed per part, on a composite claim's boundaries
        self.length = 0
        self._crcs = {a: 0 for a in algos if a in _WIDTHS}
        self._fns = {a: _crc_fn(a) for a in self._crcs}
        self._other: dict[Algo, Any] = {
            a: hashlib.new(a.value) for a in algos if a not in _WIDTHS
        }

    def update(self, data: bytes | bytearray | memoryview) -> None:
        for algo, value in self._crcs.items():
            self._crcs[algo] = self._fns[algo](data, value)
        for h in self._other.values():
            h.update(data)
        if self.parts is not None:
            self.parts.update(data)
        self.length += len(data)

    @property
    def combinable(self) -> bool:
        return not self._other

    def crc(self, algo: Algo) -> int:
        return self._crcs[algo]

    def results(self) -> dict[Algo, str]:
        out = {a: encode(a, crc_bytes(a, v)) for a, v in self._crcs.items()}
        out.update({a: encode(a, h.digest()) for a, h in self._other.items()})
        return out


class PartHashes:
    """One algorithm's digests of consecutive parts of a stream fed in order: a composite
    claim verified on a download that was not split on its part boundaries (one GET)."""

    __slots__ = ("_algo", "_ends", "_now", "_pos", "values")

    def __init__(self, algo: Algo, ranges: Sequence[tuple[int, int]]) -> None:
        self._algo = algo
        self._ends = [end for _, end in ranges]
        self._now = Digest((algo,))
        self._pos = 0
        self.values: list[str] = []

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        while view:
            if len(self.values) >= len(self._ends):  # past the last boundary: never matches
                self.values.append("")
                return
            n = min(len(view), self._ends[len(self.values)] - self._pos)
            self._now.update(view[:n])
            self._pos += n
            view = view[n:]
            if self._pos == self._ends[len(self.values)]:
                self.values.append(self._now.results()[self._algo])
                self._now = Digest((self._algo,))


def combine(parts: list[Digest]) -> dict[Algo, str]:
    """Whole-object CRCs from contiguous part digests (any order given; sorted by offset)."""
    ordered = sorted(parts, key=lambda d: d.start)
    if not ordered:
        return Digest(CRC_ALGOS).results()
    algos = list(ordered[0]._crcs)
    out: dict[Algo, str] = {}
    for algo in algos:
        value = ordered[0].crc(algo)
        for d in ordered[1:]:
            value = crc_combine(algo, value, d.crc(algo), d.length)
        out[algo] = encode(algo, crc_bytes(algo, value))
    return out


def hash_bytes(data: bytes, algos: Iterable[Algo]) -> dict[Algo, str]:
    d = Digest(algos)
    d.update(data)
    return d.results()


@dataclass(frozen=True, slots=True)
class Composite(Checksum):
    """A multipart upload's claim: `value` is the checksum of its part checksums, without the
    "-N" (MD5: the md5-of-part-md5s ETag). It holds only for bytes hashed on the upload's own
    part boundaries: `sizes` when the server told each part's size, else every part
    `part_size` long but the last (how every SDK uploads; a wrong guess shows as a
    mismatch, never a pass). `part_size` 0 and no `sizes`: not learnt yet. `part_sums` are
    the server's own checksums of single parts ("" where it did not say), checked before
    the combination so a mismatch names the part.

    `marked` is False when the server gave the value without "-N" or a ChecksumType (moto):
    the object is multipart, so it is read as composite, and a full-object value is accepted
    too, since the marker that would tell the two apart is missing."""

    parts: int = 1
    part_size: int = 0
    marked: bool = True
    sizes: tuple[int, ...] = ()
    part_sums: tuple[str, ...] = ()

    def ranges(self, size: int) -> list[tuple[int, int]]:
        """The upload's part boundaries, half-open, or [] when they do not fit `size`."""
        if self.sizes:
            if len(self.sizes) != self.parts or sum(self.sizes) != size or min(self.sizes) < 1:
                return []
            ends = list(itertools.accumulate(self.sizes))
            return list(zip([0, *ends[:-1]], ends, strict=True))
        step = size if self.parts == 1 else self.part_size
        if step <= 0 or not (step * (self.parts - 1) < size <= step * self.parts):
            return []
        return [(start, min(start + step, size)) for start in range(0, size, step)]


def combine_parts(algo: Algo, values: Iterable[str]) -> str:
    """The composite of part checksums (wire form): the same algorithm over their
    concatenated raw digests, as S3 computes COMPOSITE checksums and multipart ETags."""
    raw = b"".join(bytes.fromhex(v) if algo is Algo.MD5 else base64.b64decode(v)
                   for v in values)
    return hash_bytes(raw, (algo,))[algo]


def mismatch(claim: Checksum, checksums: Mapping[Algo, str],
             parts: Sequence[str]) -> str | None:
    """Why the received bytes do not match `claim`, or None when they do. `checksums` are
    the whole object's, `parts` the claim algorithm's on its part boundaries."""
    got = checksums.get(claim.algo)
    if not isinstance(claim, Composite):
        return None if got == claim.value else f"{got} != {claim.value}"
    if not claim.marked and got == claim.value:
        return None  # an unmarked value that is the full-object checksum after all
    if len(parts) != claim.parts:
        return f"hashed {len(parts)} parts, the upload has {claim.parts}"
    for number, (want, got_part) in enumerate(zip(claim.part_sums, parts, strict=False), 1):
        if want and want != got_part:
            return f"part {number} of {claim.parts}: {got_part} != {want}"
    combined = combine_parts(claim.algo, parts)
    if combined != claim.value:
        return f"composite of {claim.parts} parts {combined} != {claim.value}"
    return None


_FIELDS = (
    (Algo.CRC64NVME, "ChecksumCRC64NVME"),
    (Algo.CRC32C, "ChecksumCRC32C"),
    (Algo.CRC32, "ChecksumCRC32"),
    (Algo.SHA256, "ChecksumSHA256"),
    (Algo.SHA1, "ChecksumSHA1"),
)


def _count(value: object) -> int | None:
    """N of a "-N" suffix (multipart ETag, composite checksum), else None."""
    body, dash, tail = str(value or "").strip().strip('"').rpartition("-")
    return int(tail) if dash and body and tail.isdigit() and int(tail) > 0 else None


def vouched(
    head: Mapping[str, Any], *, metadata: Mapping[str, str] | None = None
) -> Checksum | None:
    """The strongest checksum the source vouches for, from a HEAD/GET response.

    Order: syncd's own metadata (we computed it from the bytes we uploaded), then an S3
    full-object checksum, then the MD5 ETag of a single-part upload that is not SSE-KMS/SSE-C
    encrypted (those ETags are not MD5s), then a composite multipart checksum, then a
    multipart upload's md5-of-part-md5s ETag (both `Composite`: verified per part). None
    means the object can only be checked by size and is counted unverified (`unvouched`
    says why).
    """
    meta = lower_keys(metadata if metadata is not None else head.get("Metadata"))
    own = meta.get(f"{META_PREFIX}{OWN_ALGO}")
    if own:
        return Checksum(OWN_ALGO, own)
    kind = str(head.get("ChecksumType") or "").upper()
    etag_parts = None if weak_etag(head.get("ETag")) else _count(head.get("ETag"))
    composites: list[Composite] = []
    for algo, field_name in _FIELDS:
        value = str(head.get(field_name) or "")
        if not value:
            continue
        count = _count(value)
        if count is not None:
            composites.append(Composite(algo, value.rpartition("-")[0], count))
        elif kind == "COMPOSITE" or (not kind and etag_parts is not None):
            composites.append(Composite(algo, value, etag_parts or 0, marked=kind != ""))
        else:
            return Checksum(algo, value)
    # the md5 of nothing is a true claim only of an empty object: SeaweedFS's own tools
    # write it on every object (issue 19)
    empty = head.get("ContentLength") == 0
    if not _encrypted(head) and (empty or not weak_etag(head.get("ETag"))):
        md5 = md5_etag(head.get("ETag"))
        if md5:
            return Checksum(Algo.MD5, md5)
    if composites:
        return composites[0]
    if etag_parts is not None and not _encrypted(head):
        bare = str(normalize_etag(head.get("ETag")))
        return Composite(Algo.MD5, bare.rpartition("-")[0].lower(), etag_parts)
    return None


def _encrypted(head: Mapping[str, Any]) -> bool:
    """SSE-KMS (incl. dual-layer) and SSE-C objects have ETags that are not MD5s."""
    encryption = str(head.get("ServerSideEncryption") or "")
    return bool(head.get("SSECustomerAlgorithm")) or encryption.startswith("aws:kms")


class Unvouched(StrEnum):
    """Why a file was checked by size only (the reason label of syncd_unverified_files_total)."""

    NO_CHECKSUM = "no_checksum"  # no S3 checksum, no MD5 ETag (an S3 server's own ETag)
    ENCRYPTED = "encrypted"  # SSE-KMS/SSE-C without an S3 checksum: the ETag is no MD5
    WEAK_ETAG = "weak_etag"  # an ETag that does not depend on the content (SeaweedFS tools)
    PARTS_UNKNOWN = "parts_unknown"  # multipart, and the server does not tell the parts


def unvouched(head: Mapping[str, Any]) -> Unvouched:
    """Why `vouched(head)` found nothing."""
    if _encrypted(head):
        return Unvouched.ENCRYPTED
    if weak_etag(head.get("ETag")):
        return Unvouched.WEAK_ETAG
    return Unvouched.NO_CHECKSUM
