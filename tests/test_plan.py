"""syncd.plan.compute: invariants over arbitrary listings, then focused examples."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.keys import is_directory_marker, selected, unsafe_reason
from syncd.listing import Entry, Listing, Record, Recorded, fingerprint
from syncd.plan import Adopt, Copy, Delete, Plan, Policy, Reason, Refuse, Skip, compute

PROPERTY = settings(max_examples=150, deadline=None)

# --- strategies ---------------------------------------------------------------------------------

SAFE_SEGMENTS = ["a", "b", "w.bin", "c.json", "é", "日本", "sp ace", "..x", ".h"]
UNSAFE_SEGMENTS = ["..", ".", "", "x\\y", "\\", "n\x00l", "\x07", ".syncd"]
SEGMENTS = st.sampled_from(SAFE_SEGMENTS * 3 + UNSAFE_SEGMENTS)


KEYS = st.tuples(
    st.lists(SEGMENTS, min_size=1, max_size=3).map("/".join),
    st.sampled_from(["", "", "", "", "", "", "", "", "/"]),  # sometimes absolute
    st.sampled_from(["", "", "", "", "", "", "", "", "/"]),  # sometimes a directory marker
).map(lambda t: f"{t[1]}{t[0]}{t[2]}")

SIZES = st.sampled_from([0, 1, 7, 1 << 20])
# An S3 entry has an etag; a volume entry has mtime/inode. Their fingerprints differ in kind.
S3_ENTRY = st.tuples(SIZES, st.sampled_from([None, "e1", "e2"])).map(
    lambda t: {"size": t[0], "etag": t[1]}
)
VOLUME_ENTRY = st.tuples(SIZES, st.sampled_from([1, 2]), st.sampled_from([None, 1, 2])).map(
    lambda t: {"size": t[0], "mtime_ns": t[1], "inode": t[2]}
)
ENTRY_FIELDS = S3_ENTRY | VOLUME_ENTRY


def entry(draw: st.DrawFn, key: str) -> Entry:
    return Entry(key, **draw(ENTRY_FIELDS))


GLOBS = st.sampled_from(["*.bin", "*.json", "a/**", "b/*", "日本/**", "[ab]", "?"])
POLICIES = st.builds(
    Policy,
    include=st.lists(GLOBS, max_size=2).map(tuple),
    exclude=st.lists(GLOBS, max_size=2).map(tuple),
    delete=st.booleans(),
    max_delete_count=st.sampled_from([0, 1, 2, 5, 1000]),
    max_delete_fraction=st.sampled_from([0.0, 0.25, 0.5, 1.0]),
)


DST_CHOICE = st.sampled_from(["absent", "same", "other"])
# keep the key in the record?, source fingerprint current?, destination current?, checksum, gen
RECORD_FIELDS = st.tuples(
    st.booleans(), st.booleans(), st.booleans(),
    st.sampled_from([None, "crc64nvme:AAAAAAAAAAA="]), st.integers(0, 3),
)


@dataclass
class Scenario:
    src: Listing
    dst: Listing
    record: Record
    policy: Policy

    def plan(self) -> Plan:
        return compute(self.src, self.dst, self.record, self.policy)

    def wanted(self, key: str) -> bool:
        return not is_directory_marker(key) and selected(
            key, self.policy.include, self.policy.exclude
        )


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    src_keys = draw(st.lists(KEYS, max_size=10, unique=True))
    src = Listing.of([entry(draw, k) for k in src_keys], complete=draw(st.booleans()))
    # What a store refuses while listing (e.g. a symlink on a volume) is reported raw, apart.
    src.refused = {
        k: "refused by the store"
        for k in draw(st.lists(KEYS, max_size=2, unique=True))
        if k not in src.entries and unsafe_reason(k) is not None
    }

    dst_entries: list[Entry] = []
    for key in src_keys:
        choice = draw(DST_CHOICE)
        if choice == "same":
            dst_entries.append(src.entries[key])
        elif choice == "other":
            dst_entries.append(entry(draw, key))
    for key in draw(st.lists(KEYS, max_size=10, unique=True)):
        if key not in src.entries:
            dst_entries.append(entry(draw, key))
    dst = Listing.of(dst_entries, complete=draw(st.booleans()))

    record: Record = {}
    for key in sorted(set(src.entries) | set(dst.entries)):
        keep, src_ok, dst_ok, checksum, gen = draw(RECORD_FIELDS)
        if keep:
            s, d = src.get(key), dst.get(key)
            record[key] = Recorded(
                src=fingerprint(s) if s and src_ok else "stale:src",
                dst=fingerprint(d) if d and dst_ok else "stale:dst",
                checksum=checksum,
                gen=gen,
            )
    return Scenario(src, dst, record, draw(POLICIES))


def keys_of(actions: object) -> list[str]:
    return [a.key for a in actions]  # type: ignore[attr-defined]


# --- invariants ---------------------------------------------------------------------------------


@PROPERTY
@given(scenarios())
def test_compute_plans_only_keys_that_pass_unsafe_reason(s: Scenario) -> None:
    plan = s.plan()
    for action in plan.actions:
        if isinstance(action, Copy | Adopt | Delete):
            assert unsafe_reason(action.key) is None, action
    assert all(unsafe_reason(a.key) is None for a in plan.copies)


@PROPERTY
@given(scenarios(), st.sampled_from(["src", "dst", "both"]))
def test_compute_deletes_nothing_when_a_listing_is_incomplete(s: Scenario, side: str) -> None:
    if side in ("src", "both"):
        s.src.complete = False
    if side in ("dst", "both"):
        s.dst.complete = False
    plan = s.plan()
    assert plan.deletes == []
    assert plan.refused_deletes is None
    why = Reason.LISTING_INCOMPLETE if s.policy.delete else Reason.DELETE_DISABLED
    for key in s.dst.entries:
        if key not in s.src.entries and s.wanted(key) and unsafe_reason(key) is None:
            assert Skip(key, why) in plan.actions


@PROPERTY
@given(scenarios())
def test_compute_deletes_nothing_when_policy_delete_is_false(s: Scenario) -> None:
    s.policy = Policy(
        include=s.policy.include, exclude=s.policy.exclude, delete=False,
        max_delete_count=s.policy.max_delete_count,
        max_delete_fraction=s.policy.max_delete_fraction,
    )
    plan = s.plan()
    assert plan.deletes == []
    assert plan.refused_deletes is None
    for key in s.dst.entries:
        if key not in s.src.entries and s.wanted(key) and unsafe_reason(key) is None:
            assert Skip(key, Reason.DELETE_DISABLED) in plan.actions


@PROPERTY
@given(scenarios())
def test_compute_deletes_all_absent_keys_or_none_under_the_guard(s: Scenario) -> None:
    s.src.complete = s.dst.complete = True
    s.policy = Policy(
        include=s.policy.include, exclude=s.policy.exclude, delete=True,
        max_delete_count=s.policy.max_delete_count,
        max_delete_fraction=s.policy.max_delete_fraction,
    )
    absent = sorted(
        k for k in s.dst.entries
        if k not in s.src.entries and s.wanted(k) and unsafe_reason(k) is None
    )
    plan = s.plan()
    if plan.refused_deletes is None:
        assert sorted(keys_of(plan.deletes)) == absent
        assert all(d.reason is Reason.ABSENT_FROM_SOURCE for d in plan.deletes)
        assert all(d.dst == s.dst.entries[d.key] for d in plan.deletes)
    else:
        assert absent, "the guard only speaks when there is something to delete"
        assert plan.deletes == []
        empty = not any(s.wanted(k) for k in s.src.entries)
        reason = Reason.SOURCE_EMPTY if empty else Reason.DELETE_GUARD
        held = sorted(a.key for a in plan.actions if a == Skip(a.key, reason))
        assert held == absent


def test_an_empty_source_listing_deletes_nothing_whatever_the_guard_allows() -> None:
    dst = Listing.of([Entry("a", 1, "x"), Entry("b/c", 2, "y")])
    plan = compute(Listing(), dst, {}, Policy(delete=True, max_delete_count=10,
                                                max_delete_fraction=1.0))
    assert plan.deletes == []
    assert plan.actions == [Skip("a", Reason.SOURCE_EMPTY), Skip("b/c", Reason.SOURCE_EMPTY)]
    assert plan.refused_deletes is not None and "empty" in plan.refused_deletes


@PROPERTY
@given(scenarios(), st.data())
def test_compute_neither_copies_nor_deletes_a_held_key(s: Scenario, data: st.DataObject) -> None:
    keys = sorted(set(s.src.entries) | set(s.dst.entries))
    held = set(data.draw(st.lists(st.sampled_from(keys), unique=True))) if keys else set()
    s.policy = Policy(include=s.policy.include, exclude=s.policy.exclude, delete=True,
                      max_delete_count=10**6, max_delete_fraction=1.0)
    plan = compute(s.src, s.dst, s.record, s.policy,
                   lambda k: Reason.NOT_SETTLED if k in held else None)
    moved = {a.key for a in plan.actions if isinstance(a, Copy | Adopt | Delete)}
    assert not moved & held
    for a in plan.actions:
        if a.key in held and not isinstance(a, Refuse):
            assert a == Skip(a.key, Reason.NOT_SETTLED)


@PROPERTY
@given(scenarios())
def test_compute_gives_each_selected_source_key_exactly_one_action(s: Scenario) -> None:
    plan = s.plan()
    counts = Counter(a.key for a in plan.actions)
    for key in s.src.entries:
        assert counts[key] == (1 if s.wanted(key) else 0), key
    for key in s.src.refused:
        assert counts[key] == 1
        assert Refuse(key, Reason.UNSAFE_KEY, s.src.refused[key]) in plan.actions
    # ... and no key is planned twice at all.
    assert max(counts.values(), default=1) == 1


@PROPERTY
@given(scenarios())
def test_compute_copies_and_adopts_only_selected_source_entries(s: Scenario) -> None:
    plan = s.plan()
    moved: list[Copy | Adopt] = [*plan.copies, *plan.adopts]
    for action in moved:
        assert s.wanted(action.key)
        assert action.src == s.src.entries[action.key]
    for adopt in plan.adopts:
        assert adopt.dst == s.dst.entries[adopt.key]
        assert adopt.src.size == adopt.dst.size
    for delete in plan.deletes:
        assert delete.key not in s.src.entries
        assert delete.key not in s.src.refused
        assert s.wanted(delete.key)


@PROPERTY
@given(scenarios())
def test_compute_skips_unchanged_when_record_matches_both_fingerprints(s: Scenario) -> None:
    plan = s.plan()
    dirs = {k.rsplit("/", 1)[0] for k in s.src.entries if "/" in k and s.wanted(k)}
    for key, src in s.src.entries.items():
        dst, rec = s.dst.get(key), s.record.get(key)
        if (
            dst is None or rec is None or not s.wanted(key) or unsafe_reason(key) is not None
            or any(d == key or d.startswith(f"{key}/") for d in dirs)
        ):
            continue
        matches = rec.src == fingerprint(src) and rec.dst == fingerprint(dst)
        assert (Skip(key, Reason.UNCHANGED) in plan.actions) is matches


@PROPERTY
@given(scenarios())
def test_compute_is_deterministic_regardless_of_listing_order(s: Scenario) -> None:
    first = s.plan()
    again = s.plan()
    shuffled = compute(
        Listing(dict(reversed(s.src.entries.items())), s.src.complete,
                dict(reversed(s.src.refused.items()))),
        Listing(dict(reversed(s.dst.entries.items())), s.dst.complete),
        dict(reversed(s.record.items())),
        s.policy,
    )
    assert first.actions == again.actions == shuffled.actions
    assert first.refused_deletes == again.refused_deletes == shuffled.refused_deletes


@PROPERTY
@given(scenarios())
def test_compute_does_not_mutate_its_inputs(s: Scenario) -> None:
    before = (dict(s.src.entries), dict(s.src.refused), dict(s.dst.entries), dict(s.record))
    s.plan()
    assert before == (dict(s.src.entries), dict(s.src.refused), dict(s.dst.entries),
                      dict(s.record))


# --- focused examples ---------------------------------------------------------------------------


def s3(key: str, size: int = 10, etag: str = "e1") -> Entry:
    return Entry(key, size, etag=etag)


def vol(key: str, size: int = 10, mtime_ns: int = 1, inode: int = 7) -> Entry:
    return Entry(key, size, mtime_ns=mtime_ns, inode=inode)


def listing(*items: Entry, complete: bool = True) -> Listing:
    return Listing.of(items, complete=complete)


def recorded(src: Entry, dst: Entry) -> Recorded:
    return Recorded(fingerprint(src), fingerprint(dst), "crc64nvme:x", 1)


DELETE = Policy(delete=True, max_delete_count=1000, max_delete_fraction=1.0)


def test_compute_copies_new_file_absent_from_destination() -> None:
    src = s3("m/w.bin")
    plan = compute(listing(src), listing(), {}, Policy())
    assert plan.actions == [Copy("m/w.bin", Reason.NEW, src)]
    assert plan.copy_bytes == 10
    assert plan.counts() == {"copy": 1}


def test_compute_copies_new_file_even_when_record_remembers_it() -> None:
    src, dst = s3("a"), vol("a")
    plan = compute(listing(src), listing(), {"a": recorded(src, dst)}, Policy())
    assert plan.actions == [Copy("a", Reason.NEW, src)]


def test_compute_copies_on_size_change_without_record() -> None:
    src = s3("a", size=11)
    plan = compute(listing(src), listing(vol("a", size=10)), {}, Policy())
    assert plan.actions == [Copy("a", Reason.SIZE_CHANGED, src)]


def test_compute_copies_on_size_change_when_source_differs_from_record() -> None:
    old, dst = s3("a", size=10, etag="old"), vol("a", size=10)
    src = s3("a", size=12, etag="new")
    plan = compute(listing(src), listing(dst), {"a": recorded(old, dst)}, Policy())
    assert plan.actions == [Copy("a", Reason.SIZE_CHANGED, src)]


def test_compute_copies_source_changed_same_size_with_record() -> None:
    old, dst = s3("a", etag="old"), vol("a")
    src = s3("a", etag="new")
    plan = compute(listing(src), listing(dst), {"a": recorded(old, dst)}, Policy())
    assert plan.actions == [Copy("a", Reason.SOURCE_CHANGED, src)]


def test_compute_adopts_unrecorded_destination_of_same_size() -> None:
    src, dst = s3("a"), vol("a")
    plan = compute(listing(src), listing(dst), {}, Policy())
    assert plan.actions == [Adopt("a", Reason.UNRECORDED, src, dst)]
    assert plan.copy_bytes == 0


def test_compute_adopts_destination_changed_same_size() -> None:
    src, dst = s3("a"), vol("a", mtime_ns=1)
    touched = vol("a", mtime_ns=2)
    plan = compute(listing(src), listing(touched), {"a": recorded(src, dst)}, Policy())
    assert plan.actions == [Adopt("a", Reason.DESTINATION_CHANGED, src, touched)]


def test_compute_copies_destination_changed_to_other_size() -> None:
    src, dst = s3("a"), vol("a")
    truncated = vol("a", size=3, mtime_ns=2)
    plan = compute(listing(src), listing(truncated), {"a": recorded(src, dst)}, Policy())
    assert plan.actions == [Copy("a", Reason.DESTINATION_CHANGED, src)]


def test_compute_skips_unchanged_when_record_matches_both_sides() -> None:
    src, dst = s3("a"), vol("a")
    plan = compute(listing(src), listing(dst), {"a": recorded(src, dst)}, Policy())
    assert plan.actions == [Skip("a", Reason.UNCHANGED)]
    assert plan.counts() == {"skip": 1}


def test_compute_push_direction_fingerprints_volume_source_by_stat() -> None:
    src, dst = vol("a", mtime_ns=5), s3("a", etag="x")
    rec = {"a": recorded(src, dst)}
    assert compute(listing(src), listing(dst), rec, Policy()).actions == [
        Skip("a", Reason.UNCHANGED)
    ]
    rewritten = vol("a", mtime_ns=6)  # same size, new mtime: the source changed
    assert compute(listing(rewritten), listing(dst), rec, Policy()).actions == [
        Copy("a", Reason.SOURCE_CHANGED, rewritten)
    ]


def test_compute_applies_include_and_exclude_globs_to_both_sides() -> None:
    src = listing(s3("w.bin"), s3("sub/x.bin"), s3("notes.txt"), s3("tmp/y.bin"))
    dst = listing(vol("old.bin"), vol("old.txt"), vol("tmp/z.bin"))
    policy = Policy(include=("*.bin",), exclude=("tmp/**",), delete=True,
                    max_delete_fraction=1.0)
    plan = compute(src, dst, {}, policy)
    assert sorted(keys_of(plan.copies)) == ["sub/x.bin", "w.bin"]
    assert keys_of(plan.deletes) == ["old.bin"]
    assert {a.key for a in plan.actions} == {"sub/x.bin", "w.bin", "old.bin"}


def test_compute_ignores_directory_markers_on_both_sides() -> None:
    src = listing(s3("dir/", size=0), s3("dir/f"))
    dst = listing(vol("other/", size=0))
    plan = compute(src, dst, {}, DELETE)
    assert plan.actions == [Copy("dir/f", Reason.NEW, src.entries["dir/f"])]


def test_compute_refuses_file_that_is_also_a_directory_in_source() -> None:
    src = listing(s3("a"), s3("a/b"), s3("x/y"), s3("x/y/z/w"))
    plan = compute(src, listing(), {}, Policy())
    refused = {a.key: a for a in plan.refused}
    assert set(refused) == {"a", "x/y"}
    assert all(r.reason is Reason.PATH_CONFLICT for r in refused.values())
    assert "directory" in refused["a"].detail
    assert sorted(keys_of(plan.copies)) == ["a/b", "x/y/z/w"]


def test_compute_refuses_unsafe_source_keys_with_reason() -> None:
    bad = ["../escape", "/abs", "a\\b", "a//b", ".syncd/state/m.json", "n\x00l"]
    src = listing(*(s3(k) for k in bad), s3("ok"))
    plan = compute(src, listing(), {}, Policy())
    assert keys_of(plan.copies) == ["ok"]
    assert sorted(keys_of(plan.refused)) == sorted(bad)
    for action in plan.refused:
        assert action.reason is Reason.UNSAFE_KEY
        assert action.detail == unsafe_reason(action.key)


def test_compute_reports_keys_the_source_store_refused() -> None:
    src = Listing.of([s3("ok")])
    src.refused = {"evil\x00": "contains NUL"}
    plan = compute(src, listing(), {}, Policy())
    assert Refuse("evil\x00", Reason.UNSAFE_KEY, "contains NUL") in plan.actions


def test_compute_never_deletes_unsafe_destination_keys() -> None:
    dst = listing(vol("../x"), vol(".syncd/state/m.json"), vol("gone"))
    plan = compute(listing(s3("keep")), dst, {}, DELETE)
    assert keys_of(plan.deletes) == ["gone"]
    assert {a.key for a in plan.actions} == {"keep", "gone"}


def test_compute_deletes_absent_files_when_allowed() -> None:
    dst = listing(vol("keep"), vol("gone1"), vol("gone2"))
    plan = compute(listing(s3("keep")), dst, {}, DELETE)
    assert plan.refused_deletes is None
    assert plan.deletes == [
        Delete("gone1", Reason.ABSENT_FROM_SOURCE, dst.entries["gone1"]),
        Delete("gone2", Reason.ABSENT_FROM_SOURCE, dst.entries["gone2"]),
    ]


def test_compute_skips_deletes_when_delete_disabled() -> None:
    plan = compute(listing(), listing(vol("x")), {}, Policy(delete=False))
    assert plan.actions == [Skip("x", Reason.DELETE_DISABLED)]
    assert plan.refused_deletes is None


@pytest.mark.parametrize(("src_complete", "dst_complete"), [(False, True), (True, False)])
def test_compute_skips_deletes_when_listing_incomplete(
    src_complete: bool, dst_complete: bool
) -> None:
    src = listing(s3("keep"), complete=src_complete)
    dst = listing(vol("keep"), vol("x"), complete=dst_complete)
    plan = compute(src, dst, {}, DELETE)
    assert plan.deletes == []
    assert Skip("x", Reason.LISTING_INCOMPLETE) in plan.actions


def test_compute_delete_count_guard_holds_back_every_delete_with_message() -> None:
    dst = listing(*(vol(f"d{i}") for i in range(3)), *(vol(f"k{i}") for i in range(7)))
    src = listing(*(s3(f"k{i}") for i in range(7)))
    policy = Policy(delete=True, max_delete_count=2, max_delete_fraction=1.0)
    plan = compute(src, dst, {}, policy)
    assert plan.deletes == []
    assert plan.refused_deletes == "3 deletes exceed max_delete_count=2"
    assert [a for a in plan.actions if isinstance(a, Skip)] == [
        Skip(f"d{i}", Reason.DELETE_GUARD) for i in range(3)
    ]


def test_compute_delete_count_guard_allows_exactly_the_limit() -> None:
    dst = listing(*(vol(f"d{i}") for i in range(4)))
    policy = Policy(delete=True, max_delete_count=3, max_delete_fraction=1.0)
    plan = compute(listing(s3("d3")), dst, {}, policy)
    assert plan.refused_deletes is None
    assert len(plan.deletes) == 3


def test_compute_delete_fraction_guard_holds_back_every_delete_with_message() -> None:
    dst = listing(*(vol(f"f{i}") for i in range(4)))
    src = listing(s3("f0"))
    policy = Policy(delete=True, max_delete_count=1000, max_delete_fraction=0.5)
    plan = compute(src, dst, {}, policy)
    assert plan.deletes == []
    assert plan.refused_deletes is not None
    assert "3 of 4 files (75%)" in plan.refused_deletes
    assert "max_delete_fraction=0.5" in plan.refused_deletes
    assert sum(1 for a in plan.actions if a == Skip(a.key, Reason.DELETE_GUARD)) == 3


def test_compute_delete_fraction_guard_allows_exactly_the_fraction() -> None:
    dst = listing(*(vol(f"f{i}") for i in range(4)))
    src = listing(s3("f0"), s3("f1"))
    policy = Policy(delete=True, max_delete_fraction=0.5)
    plan = compute(src, dst, {}, policy)
    assert plan.refused_deletes is None
    assert keys_of(plan.deletes) == ["f2", "f3"]


def test_compute_zero_max_delete_count_refuses_any_delete() -> None:
    plan = compute(listing(s3("y")), listing(vol("x"), vol("y")), {},
                   Policy(delete=True, max_delete_count=0, max_delete_fraction=1.0))
    assert plan.deletes == []
    assert plan.refused_deletes == "1 deletes exceed max_delete_count=0"


def test_compute_near_empty_source_is_held_back_by_fraction_guard_with_default_policy() -> None:
    dst = listing(*(vol(f"model/{i}.bin") for i in range(5)))
    plan = compute(listing(s3("other")), dst, {}, Policy(delete=True))
    assert plan.deletes == []
    assert plan.refused_deletes is not None
    assert "5 of 5 files (100%)" in plan.refused_deletes
    assert "max_delete_fraction=0.5" in plan.refused_deletes


def test_compute_empty_source_of_a_filtered_mirror_is_held_back_by_fraction_guard() -> None:
    # The fraction is of the files this mirror owns: destination files its globs do not select
    # must not dilute it (100% of the mirrored files here, 10% of the whole destination).
    dst = listing(*(vol(f"w{i}.bin") for i in range(10)),
                  *(vol(f"unrelated{i}.txt") for i in range(90)))
    plan = compute(listing(), dst, {}, Policy(include=("*.bin",), delete=True))
    assert plan.deletes == []
    assert plan.refused_deletes is not None


def test_compute_does_not_delete_a_key_the_source_listed_but_refused() -> None:
    # A key in `src.refused` (e.g. a volume file replaced by a symlink, which the volume store
    # lists as refused) still exists in the source: refused, but not "absent", so not deleted.
    src = Listing.of([s3(f"k{i}") for i in range(9)])
    src.refused = {"model.bin": "symlink (not followed)"}
    dst = listing(vol("model.bin"), *(vol(f"k{i}") for i in range(9)))
    plan = compute(src, dst, {}, Policy(delete=True))
    assert Refuse("model.bin", Reason.UNSAFE_KEY, "symlink (not followed)") in plan.actions
    assert plan.deletes == []


def test_compute_lists_actions_in_key_order() -> None:
    src = listing(s3("c"), s3("a"), s3("b"))
    plan = compute(src, listing(), {}, Policy())
    assert keys_of(plan.actions) == ["a", "b", "c"]


# --- convergence and containment (issue 18) ------------------------------------------------

TREE = Policy(delete=True, max_delete_fraction=1.0, tree=True)


def _s3(*keys: str) -> Listing:
    return Listing.of(Entry(k, 1, etag="e") for k in keys)


def _vol(*keys: str, unreadable: dict[str, str] | None = None) -> Listing:
    listing = Listing.of(Entry(k, 1, mtime_ns=1, inode=1) for k in keys)
    listing.unreadable = dict(unreadable or {})
    return listing


@pytest.mark.parametrize(("src", "dst", "cleared"), [
    (("m/a", "k"), ("m/a/b.txt", "m/a/c/d", "k"), ["m/a/b.txt", "m/a/c/d"]),  # dir -> file
    (("m/a/b.txt", "k"), ("m/a", "k"), ["m/a"]),  # file -> dir
])
def test_a_path_that_changes_kind_is_cleared_by_deletes_that_run_first(
        src: tuple[str, ...], dst: tuple[str, ...], cleared: list[str]) -> None:
    plan = compute(_s3(*src), _vol(*dst), {}, TREE)
    assert sorted(d.key for d in plan.deletes if d.reason == Reason.PATH_REPLACED) == cleared
    assert [c.key for c in plan.copies] == [k for k in src if k != "k"]


@pytest.mark.parametrize("policy", [
    Policy(delete=False, tree=True),
    Policy(delete=True, max_delete_count=0, tree=True),  # the guard holds the deletes
])
def test_a_path_change_the_plan_may_not_clear_is_refused_with_what_is_in_the_way(
        policy: Policy) -> None:
    plan = compute(_s3("m/a", "k"), _vol("m/a/b.txt", "k"), {}, policy)
    [refused] = plan.refused
    assert (refused.key, refused.reason) == ("m/a", Reason.PATH_CONFLICT)
    assert "m/a/b.txt" in refused.detail
    assert not plan.copies and not plan.deletes


def test_a_bucket_destination_has_no_paths_to_clear() -> None:
    plan = compute(_vol("m/a"), _s3("m/a/b.txt"), {}, Policy(delete=True,
                                                             max_delete_fraction=1.0))
    assert [c.key for c in plan.copies] == ["m/a"]
    assert [(d.key, d.reason) for d in plan.deletes] == [("m/a/b.txt",
                                                          Reason.ABSENT_FROM_SOURCE)]


def test_keys_longer_than_the_destination_allows_are_refused_alone() -> None:
    policy = replace(TREE, max_key_bytes=10)
    plan = compute(_s3("short", "much/too/long/key"), _vol(), {}, policy)
    assert [c.key for c in plan.copies] == ["short"]
    assert [(r.key, r.reason) for r in plan.refused] == [("much/too/long/key",
                                                          Reason.PATH_TOO_LONG)]


@pytest.mark.parametrize("side", ["dst", "src"])
def test_only_deletes_under_an_unreadable_path_are_held(side: str) -> None:
    unreadable = {"locked": "Permission denied"}
    src, dst = _s3("keep"), _vol("keep", "locked/x", "gone")
    if side == "src":  # a push: the volume is the source, what it could not read stays
        src, dst = _vol("keep", unreadable=unreadable), _s3("keep", "locked/x", "gone")
    else:
        dst.unreadable = unreadable
    plan = compute(src, dst, {}, Policy(delete=True, max_delete_fraction=1.0))
    assert [d.key for d in plan.deletes] == ["gone"]
    assert [(s.key, s.reason) for s in plan.of_type(Skip) if s.key == "locked/x"] == [
        ("locked/x", Reason.UNREADABLE)]


def test_a_copy_into_a_path_the_volume_cannot_read_waits_there_alone() -> None:
    dst = _vol("ok")
    dst.unreadable = {"locked": "cannot list directory: Permission denied"}
    plan = compute(_s3("ok", "locked/w.bin", "new"), dst, {}, TREE)
    assert [c.key for c in plan.copies] == ["new"]
    assert [(s.key, s.reason) for s in plan.of_type(Skip) if s.key.startswith("locked")] == [
        ("locked/w.bin", Reason.UNREADABLE)]


def test_a_destination_that_moved_with_its_source_is_hashed_not_fetched_again() -> None:
    """A pass published the new bytes and died before saving its record: the record still
    names the old source and the old file. Adopt (hash, compare), copy only on a mismatch."""
    old_src, old_dst = Entry("k", 5, etag="old"), Entry("k", 5, mtime_ns=1, inode=1)
    record = {"k": Recorded(fingerprint(old_src), fingerprint(old_dst), "crc64nvme:x", 1)}
    new_src = Entry("k", 5, etag="new")
    moved = Entry("k", 5, mtime_ns=2, inode=2)
    [action] = compute(Listing.of([new_src]), Listing.of([moved]), record, Policy()).actions
    assert isinstance(action, Adopt) and action.reason == Reason.SOURCE_CHANGED
    [action] = compute(Listing.of([new_src]), Listing.of([old_dst]), record, Policy()).actions
    assert isinstance(action, Copy) and action.reason == Reason.SOURCE_CHANGED
