"""syncd.published: the per-mirror record is saved atomically and, being a cache, never fatal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from syncd import published
from syncd.keys import RESERVED_DIR
from syncd.listing import Entry, Record, Recorded

MIRROR = "models"

RECORD: Record = {
    "a.bin": Recorded("10:e1", "10:123:7", "crc64nvme:rosUhgp5mIg=", 3),
    "dir/sub/b.json": Recorded("0:", "0:1:0", None, 0),
    "ünïcödé/日本語/ファイル.txt": Recorded("5:abc", "5:9:9", "md5:00ff", 1),
    "emoji \U0001f600/with space.bin": Recorded("1:x", "1:1:1"),
}


def state_dir(root: Path) -> Path:
    return root / RESERVED_DIR / "state"


def test_path_for_lives_in_reserved_state_dir(tmp_path: Path) -> None:
    assert published.path_for(tmp_path, MIRROR) == state_dir(tmp_path) / f"{MIRROR}.json"


async def test_save_then_load_round_trips_record(tmp_path: Path) -> None:
    await published.save(tmp_path, MIRROR, RECORD)
    assert await published.load(tmp_path, MIRROR) == RECORD


async def test_save_then_load_round_trips_empty_record(tmp_path: Path) -> None:
    await published.save(tmp_path, MIRROR, {})
    assert published.path_for(tmp_path, MIRROR).exists()
    assert await published.load(tmp_path, MIRROR) == {}


async def test_save_preserves_unicode_keys_as_utf8(tmp_path: Path) -> None:
    await published.save(tmp_path, MIRROR, RECORD)
    raw = published.path_for(tmp_path, MIRROR).read_bytes()
    assert "ünïcödé/日本語/ファイル.txt".encode() in raw
    loaded = await published.load(tmp_path, MIRROR)
    assert set(loaded) == set(RECORD)


async def test_save_replaces_previous_record_entirely(tmp_path: Path) -> None:
    await published.save(tmp_path, MIRROR, RECORD)
    newer = {"only.bin": Recorded("1:e", "1:2:3", None, 9)}
    await published.save(tmp_path, MIRROR, newer)
    assert await published.load(tmp_path, MIRROR) == newer


async def test_save_leaves_no_temp_files(tmp_path: Path) -> None:
    for i in range(3):
        await published.save(tmp_path, MIRROR, {f"k{i}": Recorded("a", "b")})
    assert sorted(p.name for p in state_dir(tmp_path).iterdir()) == [f"{MIRROR}.json"]


async def test_save_keeps_mirrors_apart(tmp_path: Path) -> None:
    other = {"x": Recorded("1:e", "1:1:1")}
    await published.save(tmp_path, MIRROR, RECORD)
    await published.save(tmp_path, "other", other)
    assert await published.load(tmp_path, MIRROR) == RECORD
    assert await published.load(tmp_path, "other") == other


async def test_save_snapshots_the_record_it_was_given(tmp_path: Path) -> None:
    record = dict(RECORD)
    await published.save(tmp_path, MIRROR, record)
    record["late"] = Recorded("x", "y")
    assert await published.load(tmp_path, MIRROR) == RECORD


async def test_save_failure_leaves_no_temp_file(tmp_path: Path) -> None:
    # BUG (syncd/published.py, _write): when os.replace (or the write/fsync) fails, the
    # `.<name>.<uuid>.tmp` file is never removed, so every failed save leaves one behind in
    # .syncd/state/. Here the target is a directory, so the rename fails.
    target = published.path_for(tmp_path, MIRROR)
    (target / "occupied").mkdir(parents=True)
    with pytest.raises(OSError):
        await published.save(tmp_path, MIRROR, RECORD)
    assert sorted(p.name for p in state_dir(tmp_path).iterdir()) == [f"{MIRROR}.json"]


async def test_load_missing_state_is_empty(tmp_path: Path) -> None:
    assert await published.load(tmp_path, MIRROR) == {}
    assert not (tmp_path / RESERVED_DIR).exists()  # loading creates nothing


def _valid_bytes() -> bytes:
    return (json.dumps({"version": published.VERSION, "count": 1}) + "\n"
            + json.dumps(["a", "1:e", "1:1:1", None, 0]) + "\n").encode()


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        _valid_bytes()[: len(_valid_bytes()) // 2],  # truncated mid-write
        _valid_bytes()[:-2],  # the closing bracket cut
        b"\x00" * 64,
        b"\xff\xfe garbage",
        b"null",
        b"[]",
        b'"a string"',
        b"42",
        b"{}",
        json.dumps({"version": published.VERSION + 1, "entries": {}}).encode(),
        json.dumps({"version": 0, "entries": {"a": ["1:e", "1:1:1", None, 0]}}).encode(),
        json.dumps({"entries": {"a": ["1:e", "1:1:1", None, 0]}}).encode(),
        json.dumps({"version": published.VERSION}).encode(),
        json.dumps({"version": published.VERSION, "entries": []}).encode(),
        json.dumps({"version": published.VERSION, "entries": None}).encode(),
        json.dumps({"version": published.VERSION, "entries": {"a": None}}).encode(),
        json.dumps({"version": published.VERSION, "entries": {"a": 5}}).encode(),
        json.dumps({"version": published.VERSION, "entries": {"a": ["x"]}}).encode(),
        json.dumps({"version": published.VERSION, "entries": {"a": [1, 2, 3, 4, 5, 6]}}).encode(),
        _valid_bytes().replace(b'"count": 1', b'"count": 2'),  # a line missing
        _valid_bytes() + b'["b","1:e","1:1:1",null,0]\n',  # a line too many
        _valid_bytes().replace(b'["a"', b'[7'),  # a key that is not a string
        _valid_bytes().replace(b', 0]', b', 0, 1]'),  # a row of the wrong length
        _valid_bytes().replace(b"\n[", b"\n{"),  # a row that is not a list
        _valid_bytes()[:-3],  # the last line cut
        _valid_bytes().replace(b'"count": 1', b'"count": true'),  # a count that is no int
        _valid_bytes().replace(b'"1:e", "1:1:1", null, 0', b'["s"], {"x": 1}, 5, "g"'),
        _valid_bytes().replace(b'"1:1:1", null, 0', b'"1:1:1", null, true'),  # bool gen
        _valid_bytes() + b"[" * 100_000 + b"\n",  # nesting deep enough to recurse out
        json.dumps({"version": 1, "entries": {"a": "abcd"}}).encode(),  # format 1, no row
        json.dumps({"version": 1, "entries": {"a": [1, 2, 3, 4]}}).encode(),
    ],
    ids=lambda c: repr(c[:24]),
)
async def test_load_unreadable_state_is_empty(tmp_path: Path, content: bytes) -> None:
    path = published.path_for(tmp_path, MIRROR)
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    assert await published.load(tmp_path, MIRROR) == {}


async def test_load_state_path_that_is_a_directory_is_empty(tmp_path: Path) -> None:
    published.path_for(tmp_path, MIRROR).mkdir(parents=True)
    assert await published.load(tmp_path, MIRROR) == {}


async def test_save_over_corrupt_state_recovers(tmp_path: Path) -> None:
    path = published.path_for(tmp_path, MIRROR)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"{truncated")
    await published.save(tmp_path, MIRROR, RECORD)
    assert await published.load(tmp_path, MIRROR) == RECORD


async def test_format_1_records_are_still_read(tmp_path: Path) -> None:
    """An upgrade must not cost a re-hash of the whole volume: the old file still counts,
    and the next save writes the new format."""
    path = published.path_for(tmp_path, MIRROR)
    path.parent.mkdir(parents=True)
    path.write_bytes(json.dumps({"version": 1, "entries": {
        k: [r.src, r.dst, r.checksum, r.gen] for k, r in RECORD.items()}},
        separators=(",", ":"), ensure_ascii=False).encode())
    assert await published.load(tmp_path, MIRROR) == RECORD
    await published.save(tmp_path, MIRROR, RECORD)
    assert json.loads(path.read_bytes().splitlines()[0]) == {"version": 2, "count": 4}
    assert await published.load(tmp_path, MIRROR) == RECORD


async def test_a_record_larger_than_one_slice_round_trips(tmp_path: Path) -> None:
    big = {f"d{i // 1000:03d}/obj-{i:06d}.bin \u2028\n\"x\"": Recorded(
        f"{i}:{i:032x}", f"{i}:{i * 7}:{i}", f"md5:{i:032x}", i % 5) for i in range(30_000)}
    await published.save(tmp_path, MIRROR, big)
    assert published.path_for(tmp_path, MIRROR).stat().st_size > 2 * (1 << 20)
    assert await published.load(tmp_path, MIRROR) == big


async def test_loaded_keys_share_the_listings_strings(tmp_path: Path) -> None:
    """At 100,000 objects a second copy of every key is megabytes: the record reuses the
    key strings of the listing it is compared with."""
    await published.save(tmp_path, MIRROR, RECORD)
    listing = {k: Entry("".join(k), 1) for k in RECORD}  # equal strings, other objects
    loaded = await published.load(tmp_path, MIRROR, listing)
    assert loaded == RECORD
    for key in loaded:
        assert key is listing[key].key
