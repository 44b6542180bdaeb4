"""Checksums: which one the source vouches for, and computing it while bytes stream.

Our own hash decides, never a server's word: the test servers accept wrong `x-amz-checksum-*`
headers (shared/design/leases.md, Part B), so a stored checksum is only a claim that syncd
checks against the bytes it actually received.

Large objects move as parallel parts, so the CRCs are computed per part and combined in GF(2)
(the zlib crc32_combine construction, generalised to any reflected CRC with all-ones init and
xorout). That yields the whole-object CRC without re-reading the file. MD5/SHA cannot be
combined; a store that moved parts in parallel re-reads the staged file for those.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from syncd.listing import Algo, Checksum, lower_keys, md5_etag

OWN_ALGO = Algo.CRC64NVME  # what syncd records and stores in object metadata
META_PREFIX = "syncd-"  # x-amz-meta-syncd-crc64nvme, x-amz-meta-syncd-gen
CRC_ALGOS = (Algo.CRC64NVME, Algo.CRC32C, Algo.CRC32)


@dataclass(frozen=True, slots=True)
class _Crc:
    width: int
    poly: int  # reflected polynomial

    def x2n_table(self) -> list[int]:
        """x^(2^k) mod p for k < 64, in reflected form."""
        table = [1 << (self.width - 2)]  # x^1
        for _ in range(63):
            table.append(self.mult(table[-1], table[-1]))
        return table

    def mult(self, a: int, b: int) -> int:
        """a * b mod p, both reflected."""
        top = 1 << (self.width - 1)
        mask = (1 << self.width) - 1
        m, p = top, 0
        while m:
            if a & m:
                p ^= b
            m >>= 1
            b = ((b >> 1) ^ self.poly) if b & 1 else (b >> 1)
        return p & mask


_SPECS = {
    Algo.CRC32: _Crc(32, 0xEDB88320),
    Algo.CRC32C: _Crc(32, 0x82F63B78),
    Algo.CRC64NVME: _Crc(64, 0x9A6C9329AC4BC9B5),
}


@functools.cache
def _crc_fn(algo: Algo) -> Callable[[Any, int], int]:
    """awscrt's hardware CRC, loaded on first use: its native library costs ~50 ms at start,
    which a no-op pass or a one-line command never needs."""
    from awscrt import checksums

    fn: Callable[[Any, int], int] = getattr(checksums, algo.value)
    return fn


@functools.cache
def _table(algo: Algo) -> list[int]:
    return _SPECS[algo].x2n_table()


def crc_combine(algo: Algo, crc1: int, crc2: int, len2: int) -> int:
    """CRC of A||B from crc(A), crc(B) and len(B), without the bytes."""
    spec, table = _SPECS[algo], _table(algo)
    shift = 1 << (spec.width - 1)  # x^0
    k, n = 3, len2  # multiply crc1 by x^(8*len2)
    while n:
        if n & 1:
            shift = spec.mult(table[k & 63], shift)
        n >>= 1
        k += 1
    return spec.mult(shift, crc1) ^ crc2


def crc_bytes(algo: Algo, value: int) -> bytes:
    return value.to_bytes(_SPECS[algo].width // 8, "big")


def encode(algo: Algo, raw: bytes) -> str:
    """The S3 wire form: base64 of the big-endian digest; hex for MD5 (ETag style)."""
    return raw.hex() if algo is Algo.MD5 else base64.b64encode(raw).decode("ascii")


class Digest:
    """Hashes one contiguous byte range for several algorithms at once."""

    __slots__ = ("_crcs", "_fns", "_other", "length", "start")

    def __init__(self, algos: Iterable[Algo], start: int = 0) -> None:
        self.start = start
        self.length = 0
        self._crcs = {a: 0 for a in algos if a in _SPECS}
        self._fns = {a: _crc_fn(a) for a in self._crcs}
        self._other: dict[Algo, Any] = {
            a: hashlib.new(a.value) for a in algos if a not in _SPECS
        }

    def update(self, data: bytes | bytearray | memoryview) -> None:
        for algo, value in self._crcs.items():
            self._crcs[algo] = self._fns[algo](data, value)
        for h in self._other.values():
            h.update(data)
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


def vouched(
    head: Mapping[str, Any], *, metadata: Mapping[str, str] | None = None
) -> Checksum | None:
    """The strongest full-object checksum the source vouches for, from a HEAD/GET response.

    Order: syncd's own metadata (we computed it from the bytes we uploaded), then an S3
    full-object checksum (composite multipart ones cover parts, not the object), then the
    MD5 ETag of a single-part upload that is not SSE-KMS/SSE-C encrypted (those ETags are not
    MD5s). None means the object can only be checked by size and is counted unverified.
    """
    meta = lower_keys(metadata if metadata is not None else head.get("Metadata"))
    own = meta.get(f"{META_PREFIX}{OWN_ALGO}")
    if own:
        return Checksum(OWN_ALGO, own)
    composite = str(head.get("ChecksumType") or "").upper() == "COMPOSITE"
    for algo, field_name in (
        (Algo.CRC64NVME, "ChecksumCRC64NVME"),
        (Algo.CRC32C, "ChecksumCRC32C"),
        (Algo.CRC32, "ChecksumCRC32"),
        (Algo.SHA256, "ChecksumSHA256"),
        (Algo.SHA1, "ChecksumSHA1"),
    ):
        value = head.get(field_name)
        if value and not composite and "-" not in str(value):
            return Checksum(algo, str(value))
    encryption = str(head.get("ServerSideEncryption") or "")
    if head.get("SSECustomerAlgorithm") or encryption.startswith("aws:kms"):  # incl. :dsse
        return None
    md5 = md5_etag(head.get("ETag"))
    return Checksum(Algo.MD5, md5) if md5 else None
