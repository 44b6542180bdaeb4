"""syncd.verify on multipart uploads: composite checksums and md5-of-part-md5s ETags, their
part boundaries, and the weak ETags that identify nothing (issue 19)."""

from __future__ import annotations

import base64
import hashlib
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.listing import Algo, Checksum, weak_etag
from syncd.verify import (
    Composite,
    Digest,
    PartHashes,
    Unvouched,
    combine_parts,
    hash_bytes,
    mismatch,
    unvouched,
    vouched,
)

PROPERTY = settings(max_examples=100, deadline=None)
PART = 5  # a small "part size" keeps the properties fast; the math does not care
DATA = bytes(range(256)) * 3  # 768 bytes: parts of 256


def _parts(data: bytes, step: int) -> list[bytes]:
    return [data[i:i + step] for i in range(0, len(data), step)]


def test_combine_parts_crc32_is_crc32_of_concatenated_big_endian_part_crcs() -> None:
    parts = _parts(DATA, 256)
    raw = b"".join(zlib.crc32(p).to_bytes(4, "big") for p in parts)
    expected = base64.b64encode(zlib.crc32(raw).to_bytes(4, "big")).decode()
    values = [hash_bytes(p, (Algo.CRC32,))[Algo.CRC32] for p in parts]
    assert combine_parts(Algo.CRC32, values) == expected


def test_combine_parts_md5_is_the_multipart_etag() -> None:
    parts = _parts(DATA, 256)
    etag = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest()
    values = [hashlib.md5(p).hexdigest() for p in parts]
    assert combine_parts(Algo.MD5, values) == etag


def test_combine_parts_sha256_is_sha256_of_concatenated_part_digests() -> None:
    parts = _parts(DATA, 256)
    raw = b"".join(hashlib.sha256(p).digest() for p in parts)
    expected = base64.b64encode(hashlib.sha256(raw).digest()).decode()
    values = [hash_bytes(p, (Algo.SHA256,))[Algo.SHA256] for p in parts]
    assert combine_parts(Algo.SHA256, values) == expected


@PROPERTY
@given(data=st.binary(min_size=1, max_size=64),
       chunks=st.lists(st.integers(1, 9), min_size=1, max_size=20),
       algo=st.sampled_from(list(Algo)))
def test_part_hashes_fed_in_any_chunking_equal_hashes_of_each_part(
    data: bytes, chunks: list[int], algo: Algo,
) -> None:
    ranges = [(i, min(i + PART, len(data))) for i in range(0, len(data), PART)]
    parts = PartHashes(algo, ranges)
    digest = Digest((), parts=parts)
    pos, i = 0, 0
    while pos < len(data):
        n = chunks[i % len(chunks)]
        digest.update(data[pos:pos + n])
        pos, i = pos + n, i + 1
    assert parts.values == [hash_bytes(data[s:e], (algo,))[algo] for s, e in ranges]


def test_part_hashes_past_the_last_boundary_never_match() -> None:
    parts = PartHashes(Algo.CRC32, [(0, 4)])
    parts.update(b"12345")
    assert len(parts.values) == 2


@pytest.mark.parametrize(("parts", "part_size", "size", "expected"), [
    (3, 8, 20, [(0, 8), (8, 16), (16, 20)]),
    (2, 8, 16, [(0, 8), (8, 16)]),
    (1, 0, 7, [(0, 7)]),
    (3, 8, 16, []),  # two parts would do: not this upload's boundaries
    (3, 8, 25, []),  # more than three parts
    (2, 0, 16, []),  # part size not learnt
])
def test_composite_ranges_fit_the_size_or_are_empty(
    parts: int, part_size: int, size: int, expected: list[tuple[int, int]],
) -> None:
    claim = Composite(Algo.CRC32, "x", parts, part_size)
    assert claim.ranges(size) == expected


@pytest.mark.parametrize(("sizes", "size", "expected"), [
    ((5, 9, 6), 20, [(0, 5), (5, 14), (14, 20)]),  # unequal parts, as the server told them
    ((5, 9, 6), 21, []),  # they do not add up to the object
    ((5, 0, 15), 20, []),  # an empty part is no upload's
    ((20,), 20, []),  # fewer sizes than the claim's parts
])
def test_composite_ranges_follow_the_sizes_the_server_told(
    sizes: tuple[int, ...], size: int, expected: list[tuple[int, int]],
) -> None:
    claim = Composite(Algo.CRC32, "x", 3, sizes=sizes)
    assert claim.ranges(size) == expected


def test_mismatch_names_the_part_whose_own_checksum_differs() -> None:
    algo = Algo.CRC32
    good = [hash_bytes(p, (algo,))[algo] for p in _parts(DATA, 256)]
    bad = bytearray(DATA)
    bad[300] ^= 0xFF
    got = [hash_bytes(p, (algo,))[algo] for p in _parts(bytes(bad), 256)]
    claim = Composite(algo, combine_parts(algo, good), 3, 256, part_sums=("", good[1], ""))
    assert mismatch(claim, {}, got) == f"part 2 of 3: {got[1]} != {good[1]}"
    unknown = Composite(algo, combine_parts(algo, good), 3, 256, part_sums=("", "", ""))
    assert str(mismatch(unknown, {}, got)).startswith("composite of 3 parts")


def _claim_of(data: bytes, algo: Algo, step: int, *, marked: bool = True) -> Composite:
    values = [hash_bytes(p, (algo,))[algo] for p in _parts(data, step)]
    return Composite(algo, combine_parts(algo, values), len(values), step, marked=marked)


@pytest.mark.parametrize("algo", list(Algo))
def test_mismatch_accepts_composite_of_the_right_parts(algo: Algo) -> None:
    claim = _claim_of(DATA, algo, 256)
    values = [hash_bytes(p, (algo,))[algo] for p in _parts(DATA, 256)]
    assert mismatch(claim, hash_bytes(DATA, (algo,)), values) is None


@pytest.mark.parametrize("algo", list(Algo))
def test_mismatch_refuses_one_corrupted_part(algo: Algo) -> None:
    claim = _claim_of(DATA, algo, 256)
    bad = bytearray(DATA)
    bad[300] ^= 0xFF
    values = [hash_bytes(p, (algo,))[algo] for p in _parts(bytes(bad), 256)]
    assert mismatch(claim, hash_bytes(bytes(bad), (algo,)), values) is not None


def test_mismatch_refuses_parts_hashed_on_other_boundaries() -> None:
    claim = _claim_of(DATA, Algo.CRC32, 256)
    values = [hash_bytes(p, (Algo.CRC32,))[Algo.CRC32] for p in _parts(DATA, 384)]
    assert mismatch(claim, hash_bytes(DATA, (Algo.CRC32,)), values) is not None


def test_mismatch_of_unmarked_claim_also_accepts_the_full_object_value() -> None:
    whole = hash_bytes(DATA, (Algo.CRC32,))
    claim = Composite(Algo.CRC32, whole[Algo.CRC32], 3, 256, marked=False)
    assert mismatch(claim, whole, []) is None
    marked = Composite(Algo.CRC32, whole[Algo.CRC32], 3, 256)
    assert mismatch(marked, whole, []) is not None


def test_mismatch_of_full_object_checksum_compares_whole_value() -> None:
    whole = hash_bytes(DATA, (Algo.SHA1,))
    assert mismatch(Checksum(Algo.SHA1, whole[Algo.SHA1]), whole, ()) is None
    assert mismatch(Checksum(Algo.SHA1, "nope"), whole, ()) is not None


def test_vouched_reads_unmarked_composite_of_multipart_object_as_moto_returns_it() -> None:
    head = {"ChecksumCRC32": "tlVDbA==", "ETag": '"2cd9cf8a134aaaf20630724453b53d8e-3"'}
    assert vouched(head) == Composite(Algo.CRC32, "tlVDbA==", 3, marked=False)


def test_vouched_reads_full_object_checksum_of_multipart_object_when_typed() -> None:
    head = {"ChecksumCRC64NVME": "AAAAAAAAAAA=", "ChecksumType": "FULL_OBJECT",
            "ETag": '"2cd9cf8a134aaaf20630724453b53d8e-3"'}
    assert vouched(head) == Checksum(Algo.CRC64NVME, "AAAAAAAAAAA=")


def test_vouched_reads_multipart_md5_etag_as_composite_md5() -> None:
    head = {"ETag": '"2CD9CF8A134AAAF20630724453B53D8E-3"'}
    assert vouched(head) == Composite(Algo.MD5, "2cd9cf8a134aaaf20630724453b53d8e", 3)


def test_vouched_ignores_multipart_etag_of_encrypted_object() -> None:
    head = {"ETag": '"2cd9cf8a134aaaf20630724453b53d8e-3"', "ServerSideEncryption": "aws:kms"}
    assert vouched(head) is None
    assert unvouched(head) is Unvouched.ENCRYPTED


@pytest.mark.parametrize("etag", [None, "", '""', "d41d8cd98f00b204e9800998ecf8427e",
                                  '"d41d8cd98f00b204e9800998ecf8427e-4"'])
def test_weak_etag_names_etags_that_do_not_depend_on_content(etag: str | None) -> None:
    assert weak_etag(etag)
    assert vouched({"ETag": etag}) is None
    assert unvouched({"ETag": etag}) is Unvouched.WEAK_ETAG


def test_vouched_trusts_md5_of_nothing_only_on_an_empty_object() -> None:
    etag = '"d41d8cd98f00b204e9800998ecf8427e"'
    assert vouched({"ETag": etag, "ContentLength": 0}) == Checksum(
        Algo.MD5, "d41d8cd98f00b204e9800998ecf8427e")
    assert vouched({"ETag": etag, "ContentLength": 5}) is None


@pytest.mark.parametrize("etag", ['"9e107d9d372bb6826bd81d3542a419d6"',
                                  "9e107d9d372bb6826bd81d3542a419d6-2", "abc"])
def test_weak_etag_keeps_content_etags(etag: str) -> None:
    assert not weak_etag(etag)
