"""syncd.artifacts: grouping keys into artifacts and the manifests that vouch for a version.

A worker must see all of one version or all of another, so the rules tested here decide what
is published together (`artifact_of`, `split`), what names a version (`listing_version`,
`Manifest.version`) and when the bucket does not yet hold a whole one (`disagreement`).
"""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.artifacts import (
    MANIFEST_NAME,
    FileRecord,
    Group,
    Manifest,
    ManifestError,
    artifact_of,
    disagreement,
    incomplete,
    is_manifest,
    listing_version,
    manifest_for,
    manifest_key,
    rebase,
    split,
)
from syncd.keys import glob_match, unsafe_reason
from syncd.listing import Algo, Checksum, Entry, Listing

PROPERTY = settings(max_examples=150, deadline=None)

# --- strategies ---------------------------------------------------------------------------------

SEGMENTS = st.sampled_from(["models", "llama", "ckpt-1", "a", "b", "w.bin", "日本", "..", "."])
KEYS = st.lists(SEGMENTS, min_size=1, max_size=4).map("/".join)
PATTERNS = st.lists(
    st.sampled_from(["models/*", "llama", "ckpt-*", "*", "a/b", "**/b", "日本"]), max_size=3
).map(tuple)
ENTRY_FIELDS = st.tuples(st.sampled_from([0, 1, 7, 1 << 20]), st.sampled_from([None, "e1", "e2"]))
FILES = st.dictionaries(
    st.sampled_from(["w.bin", "config.json", "sub/t.json", "日本.bin"]),
    st.tuples(st.integers(0, 1 << 40), st.text(max_size=8), st.text(max_size=12)),
    max_size=4,
).map(lambda d: {k: FileRecord(*v) for k, v in d.items()})


@st.composite
def listings(draw: st.DrawFn) -> Listing:
    keys = draw(st.lists(KEYS | KEYS.map(manifest_key), max_size=8, unique=True))
    listing = Listing.of(
        (Entry(k, *draw(ENTRY_FIELDS)) for k in keys), complete=draw(st.booleans())
    )
    listing.refused = draw(st.dictionaries(st.sampled_from(["s", "l/x"]), st.just("symlink")))
    return listing


def entry(key: str, size: int = 1, etag: str | None = "e") -> Entry:
    return Entry(key, size, etag)


def files(**sizes: int) -> dict[str, Entry]:
    return {k: entry(k, v, f"e{v}") for k, v in sizes.items()}


# --- artifact_of --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "patterns", "want"),
    [
        ("models/llama/w.bin", ("models/*",), "models/llama"),
        ("models/llama/sub/deep/w.bin", ("models/*",), "models/llama"),
        ("models/llama/ckpt-1/w.bin", ("models/*", "ckpt-*"), "models/llama"),
        ("models/llama/ckpt-1/w.bin", ("ckpt-*",), "models/llama/ckpt-1"),
        ("x/y/llama/w.bin", ("llama",), "x/y/llama"),
        ("llama/w.bin", ("llama",), "llama"),
        ("a/b/c/w.bin", ("*",), "a"),
        ("other/w.bin", ("models/*",), None),
        ("models/w.bin", ("models/*",), None),
        ("w.bin", ("*",), None),
        ("w.bin", ("w.bin",), None),
        ("d/w.bin", ("w.bin",), None),
        ("models/llama/w.bin", (), None),
    ],
)
def test_artifact_of_is_the_shallowest_matching_directory(
    key: str, patterns: tuple[str, ...], want: str | None
) -> None:
    """A file's own name never makes it an artifact; only directories above it do."""
    assert artifact_of(key, patterns) == want


def test_artifact_of_accepts_any_iterable_of_patterns() -> None:
    assert artifact_of("models/llama/w.bin", iter(["nope", "models/*"])) == "models/llama"


@PROPERTY
@given(key=KEYS, patterns=PATTERNS)
def test_artifact_of_returns_a_matched_ancestor_with_no_shallower_match(
    key: str, patterns: tuple[str, ...]
) -> None:
    name = artifact_of(key, patterns)
    parts = key.split("/")[:-1]
    ancestors = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    matched = [d for d in ancestors if any(glob_match(p, d) for p in patterns)]
    if name is None:
        assert not matched
    else:
        assert key.startswith(f"{name}/")
        assert matched[0] == name


# --- split --------------------------------------------------------------------------------------


def test_split_groups_artifact_files_and_keeps_the_rest_loose() -> None:
    listing = Listing.of([
        entry("models/llama/w.bin"),
        entry("models/llama/sub/t.json"),
        entry(f"models/llama/{MANIFEST_NAME}", 99, "m"),
        entry("models/mistral/w.bin"),
        entry("readme.md"),
        entry("models/loose.txt"),
    ])
    got = split(listing, ("models/*",))
    assert sorted(got.loose.entries) == ["models/loose.txt", "readme.md"]
    assert sorted(got.groups) == ["models/llama", "models/mistral"]
    llama = got.groups["models/llama"]
    assert llama.name == "models/llama"
    assert sorted(llama.files) == ["sub/t.json", "w.bin"]
    assert llama.files["w.bin"] == listing.entries["models/llama/w.bin"]
    assert llama.manifest == listing.entries[f"models/llama/{MANIFEST_NAME}"]
    assert got.groups["models/mistral"].manifest is None


def test_split_drops_a_manifest_outside_any_artifact() -> None:
    """A stray manifest is syncd's metadata, not a file to mirror."""
    listing = Listing.of([entry(f"other/{MANIFEST_NAME}"), entry("other/w.bin")])
    got = split(listing, ("models/*",))
    assert list(got.loose.entries) == ["other/w.bin"]
    assert got.groups == {}


@pytest.mark.parametrize(
    ("key", "patterns"),
    [("../x/w.bin", ("*",)), ("a/../../b/w.bin", ("a",)), ("./a/w.bin", ("*",)),
     ("a//w.bin", ("a",))],
)
def test_split_leaves_unsafe_keys_loose_for_the_planner_to_refuse(
    key: str, patterns: tuple[str, ...]
) -> None:
    assert unsafe_reason(key) is not None
    assert artifact_of(key, patterns) is not None  # grouping alone would have taken it
    got = split(Listing.of([entry(key)]), patterns)
    assert list(got.loose.entries) == [key]
    assert got.groups == {}


@pytest.mark.parametrize("patterns", [(), ("models/*",)])
def test_split_carries_completeness_and_refusals_over_to_loose(patterns: tuple[str, ...]) -> None:
    """An incomplete listing must keep deletes on hold after the split too."""
    listing = Listing.of([entry("models/a/w.bin"), entry("x")], complete=False)
    listing.refused = {"link": "symlink (not followed)"}
    got = split(listing, patterns)
    assert got.loose.complete is False
    assert got.loose.refused == {"link": "symlink (not followed)"}
    got.loose.refused.clear()
    assert listing.refused == {"link": "symlink (not followed)"}


def test_split_without_patterns_drops_manifests_and_keeps_every_other_key_loose() -> None:
    listing = Listing.of([
        entry("models/a/w.bin"), entry(f"models/a/{MANIFEST_NAME}"), entry(MANIFEST_NAME),
        entry("x"),
    ])
    got = split(listing, ())
    assert sorted(got.loose.entries) == ["models/a/w.bin", "x"]
    assert got.groups == {}


@PROPERTY
@given(listing=listings(), patterns=PATTERNS)
def test_split_places_every_key_once_and_drops_only_manifests(
    listing: Listing, patterns: tuple[str, ...]
) -> None:
    got = split(listing, patterns)
    placed = list(got.loose.entries)
    for name, group in got.groups.items():
        assert group.name == name
        placed += [f"{name}/{rel}" for rel in group.files]
        if group.manifest is not None:
            assert group.manifest.key == manifest_key(name)
            placed.append(group.manifest.key)
    assert len(placed) == len(set(placed))
    assert set(placed) <= set(listing.entries)
    assert all(is_manifest(k) for k in set(listing.entries) - set(placed))
    assert not any(is_manifest(k) for k in got.loose.entries)
    for name in got.groups:
        assert unsafe_reason(name) is None
    assert got.loose.complete == listing.complete
    assert got.loose.refused == listing.refused


# --- rebase -------------------------------------------------------------------------------------


def test_rebase_prefixes_keys_and_keeps_every_other_field() -> None:
    src = Entry("w.bin", 5, "e", 7, 9, Checksum(Algo.SHA256, "x"))
    got = rebase({"w.bin": src, "sub/t.json": entry("sub/t.json")}, "models/llama")
    assert sorted(got.entries) == ["models/llama/sub/t.json", "models/llama/w.bin"]
    moved = got.entries["models/llama/w.bin"]
    assert (moved.size, moved.etag, moved.mtime_ns, moved.inode, moved.checksum) == (
        src.size, src.etag, src.mtime_ns, src.inode, src.checksum)
    assert got.complete is True


@PROPERTY
@given(listing=listings(), patterns=PATTERNS)
def test_rebase_of_a_split_group_restores_the_original_entries(
    listing: Listing, patterns: tuple[str, ...]
) -> None:
    for name, group in split(listing, patterns).groups.items():
        for key, back in rebase(group.files, name).entries.items():
            assert back == listing.entries[key]


# --- listing_version ----------------------------------------------------------------------------


def test_listing_version_is_stable_and_names_the_listing() -> None:
    a = files(**{"w.bin": 3, "c.json": 1})
    assert listing_version(a) == listing_version(dict(a))
    assert listing_version(a).startswith("l-")


@pytest.mark.parametrize(
    "changed",
    [
        {"w.bin": entry("w.bin", 4, "e3"), "c.json": entry("c.json", 1, "e1")},
        {"w.bin": entry("w.bin", 3, "other"), "c.json": entry("c.json", 1, "e1")},
        {"w2.bin": entry("w2.bin", 3, "e3"), "c.json": entry("c.json", 1, "e1")},
        {"w.bin": entry("w.bin", 3, "e3")},
    ],
    ids=["size", "etag", "key", "file-removed"],
)
def test_listing_version_changes_with_size_etag_or_keys(changed: dict[str, Entry]) -> None:
    base = {"w.bin": entry("w.bin", 3, "e3"), "c.json": entry("c.json", 1, "e1")}
    assert listing_version(changed) != listing_version(base)


def test_listing_version_ignores_stat_fields() -> None:
    """The bucket's listing names the version; a volume's mtimes must not."""
    assert listing_version({"w": Entry("w", 1, "e", mtime_ns=1, inode=2)}) == listing_version(
        {"w": Entry("w", 1, "e", mtime_ns=3, inode=4)})


@PROPERTY
@given(st.lists(st.tuples(KEYS, ENTRY_FIELDS), unique_by=lambda t: t[0], max_size=8),
       st.randoms(use_true_random=False))
def test_listing_version_does_not_depend_on_order(
    items: list[tuple[str, tuple[int, str | None]]], rnd: random.Random
) -> None:
    forward = {k: Entry(k, *f) for k, f in items}
    shuffled = list(forward.items())
    rnd.shuffle(shuffled)
    assert listing_version(dict(shuffled)) == listing_version(forward)


# --- Manifest -----------------------------------------------------------------------------------


@PROPERTY
@given(name=KEYS, files=FILES)
def test_manifest_survives_a_bytes_round_trip(name: str, files: dict[str, FileRecord]) -> None:
    m = Manifest(name, files)
    back = Manifest.from_bytes(m.to_bytes())
    assert back == m
    assert back.version == m.version


def test_manifest_bytes_are_json_with_a_format_version() -> None:
    body = json.loads(Manifest("a", {"w": FileRecord(1, "e", "crc64nvme:x")}).to_bytes())
    assert body == {"syncd_manifest": 1, "artifact": "a",
                    "files": {"w": {"size": 1, "etag": "e", "checksum": "crc64nvme:x"}}}


@PROPERTY
@given(files=FILES)
def test_manifest_bytes_depend_only_on_the_files(files: dict[str, FileRecord]) -> None:
    """An unchanged artifact's manifest has the same bytes (so the same ETag) whoever writes
    it, so a new lease holder does not rewrite it."""
    shuffled = dict(reversed(list(files.items())))
    assert Manifest("x", files).to_bytes() == Manifest("x", shuffled).to_bytes()


def test_manifest_version_changes_with_the_bytes() -> None:
    one = Manifest("x", {"w": FileRecord(1, "e", "sha256:a")})
    assert one.version.startswith("m-")
    assert Manifest("x", {"w": FileRecord(1, "e", "sha256:b")}).version != one.version
    assert Manifest("x", {"w": FileRecord(2, "e", "sha256:a")}).version != one.version
    assert Manifest("x", {"v": FileRecord(1, "e", "sha256:a")}).version != one.version


def test_manifest_from_bytes_reads_an_older_writers_generation_field() -> None:
    data = json.dumps({"syncd_manifest": 1, "artifact": "a", "gen": 4, "files": {}}).encode()
    assert Manifest.from_bytes(data) == Manifest("a", {})


def _body(**changes: object) -> bytes:
    body: dict[str, object] = {
        "syncd_manifest": 1, "artifact": "a", "gen": 1,
        "files": {"w": {"size": 1, "etag": "e", "checksum": "c"}},
    }
    body.update(changes)
    return json.dumps({k: v for k, v in body.items() if v is not None}).encode()


@pytest.mark.parametrize(
    "data",
    [
        b"", b"not json", b"\xff\xfe\x00", b"[]", b"null", b'"manifest"', b"42",
        _body(syncd_manifest=2), _body(syncd_manifest="1"), _body(syncd_manifest=None),
        _body(artifact=None), _body(files=None), _body(files=[]), _body(files={"w": 1}),
        _body(files={"w": {"etag": "e", "checksum": "c"}}),
        _body(files={"w": {"size": 1, "checksum": "c"}}),
        _body(files={"w": {"size": 1, "etag": "e"}}),
        _body(files={"w": {"size": "big", "etag": "e", "checksum": "c"}}),
    ],
)
def test_manifest_from_bytes_raises_manifest_error_on_what_syncd_did_not_write(
    data: bytes,
) -> None:
    with pytest.raises(ManifestError):
        Manifest.from_bytes(data)


@pytest.mark.parametrize(
    "data",
    [
        _body(files={"w": {"size": 1e400, "etag": "e", "checksum": "c"}}),  # valid JSON: inf
        b"[" * 100_000,
    ],
    ids=["size-1e400", "deeply-nested"],
)
def test_manifest_from_bytes_raises_manifest_error_on_hostile_json(data: bytes) -> None:
    """artifact_pull holds an artifact only on ManifestError; anything else ends the pass."""
    with pytest.raises(ManifestError):
        Manifest.from_bytes(data)


# --- disagreement -------------------------------------------------------------------------------

MANIFEST = Manifest("m", {"w.bin": FileRecord(3, "e3", "c"), "c.json": FileRecord(1, "e1", "c")})
BUCKET = files(**{"w.bin": 3, "c.json": 1})


def test_disagreement_is_none_when_the_listing_holds_every_named_file() -> None:
    assert disagreement(MANIFEST, BUCKET) is None


def test_disagreement_ignores_files_the_manifest_does_not_name() -> None:
    """Extra files belong to the next version being pushed; the named one is still whole."""
    assert disagreement(MANIFEST, {**BUCKET, **files(**{"new.bin": 9})}) is None


def test_disagreement_names_a_missing_file() -> None:
    why = disagreement(MANIFEST, files(**{"w.bin": 3}))
    assert why is not None
    assert "c.json" in why


def test_disagreement_names_a_file_whose_size_differs() -> None:
    why = disagreement(MANIFEST, {**BUCKET, "w.bin": entry("w.bin", 4, "e3")})
    assert why is not None
    assert "w.bin" in why


def test_disagreement_names_a_file_whose_etag_differs() -> None:
    why = disagreement(MANIFEST, {**BUCKET, "w.bin": entry("w.bin", 3, "new")})
    assert why is not None
    assert "w.bin" in why


@pytest.mark.parametrize(("named", "listed"), [("", "e3"), ("e3", None)])
def test_disagreement_compares_etags_only_when_both_sides_have_one(
    named: str, listed: str | None
) -> None:
    m = Manifest("m", {"w.bin": FileRecord(3, named, "c")})
    assert disagreement(m, {"w.bin": entry("w.bin", 3, listed)}) is None


# --- incomplete ---------------------------------------------------------------------------------


def _groups() -> dict[str, Group]:
    return {
        "a": Group("a", files(**{"w.bin": 1, "DONE": 0})),
        "b": Group("b", files(**{"w.bin": 1, "z.bin": 1})),
    }


def test_incomplete_with_a_marker_waits_only_for_the_marker() -> None:
    """The writer's marker says "done"; settling is not consulted in that mode."""
    got = incomplete(_groups(), {"a/w.bin", "a/DONE"}, "DONE")
    assert list(got) == ["b"]
    assert "DONE" in got["b"]


def test_incomplete_without_a_marker_waits_for_unsettled_files() -> None:
    got = incomplete(_groups(), {"b/z.bin", "b/w.bin", "other/x"}, None)
    assert list(got) == ["b"]
    assert "2 file(s)" in got["b"]
    assert "w.bin" in got["b"]  # the first, sorted


def test_incomplete_is_empty_when_everything_is_settled() -> None:
    assert incomplete(_groups(), set(), None) == {}
    assert incomplete(_groups(), {"elsewhere/w.bin"}, None) == {}


# --- manifest_for -------------------------------------------------------------------------------


def test_manifest_for_describes_the_published_files_with_the_generation() -> None:
    group = Group("models/a", files(**{"w.bin": 3, "c.json": 1}))
    published = {"models/a/w.bin": (3, "e3", "sha256:w"), "models/a/c.json": (1, "e1", "sha256:c"),
                 "models/b/x": (9, "e9", "sha256:x")}
    got = manifest_for("models/a", group, published)
    assert got == Manifest("models/a", {"w.bin": FileRecord(3, "e3", "sha256:w"),
                                        "c.json": FileRecord(1, "e1", "sha256:c")})


def test_manifest_for_is_none_while_any_file_is_unpublished() -> None:
    """A manifest is the last write; naming a file not yet in the bucket would lie."""
    group = Group("models/a", files(**{"w.bin": 3, "c.json": 1}))
    assert manifest_for("models/a", group, {"models/a/w.bin": (3, "e3", "c")}) is None
