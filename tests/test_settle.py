"""syncd.settle.Quiet: a file is pushed only after the daemon itself saw it hold still.

Time is an argument, so these tests step the daemon's monotonic clock by hand: a checkpoint
still being written (size, mtime or inode moving) must never be judged settled.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.listing import Entry, Listing
from syncd.settle import Quiet

PROPERTY = settings(max_examples=150, deadline=None)
QUIET_S = 5.0


def seen(*entries: Entry) -> Listing:
    return Listing.of(entries)


def file(key: str = "w.bin", size: int = 10, mtime_ns: int = 1, inode: int = 7) -> Entry:
    return Entry(key, size, mtime_ns=mtime_ns, inode=inode)


def test_quiet_new_file_is_unsettled_until_quiet_s_have_passed() -> None:
    quiet = Quiet(QUIET_S)
    assert quiet.unsettled(seen(file()), 100.0) == ({"w.bin"}, 105.0)
    assert quiet.unsettled(seen(file()), 104.9) == ({"w.bin"}, 105.0)
    assert quiet.unsettled(seen(file()), 105.0) == (set(), None)
    assert quiet.unsettled(seen(file()), 200.0) == (set(), None)


def test_quiet_judges_by_its_own_clock_not_the_file_mtime() -> None:
    """Another host's old mtime must not make a file just written look settled."""
    old = file(mtime_ns=1)  # an mtime from 1970
    assert Quiet(QUIET_S).unsettled(seen(old), 1e6) == ({"w.bin"}, 1e6 + QUIET_S)


@pytest.mark.parametrize(
    "changed",
    [file(size=11), file(mtime_ns=2), file(inode=8)],
    ids=["size", "mtime", "inode"],
)
def test_quiet_any_stat_change_restarts_the_clock(changed: Entry) -> None:
    quiet = Quiet(QUIET_S)
    quiet.unsettled(seen(file()), 100.0)
    assert quiet.unsettled(seen(changed), 104.0) == ({"w.bin"}, 109.0)
    assert quiet.unsettled(seen(changed), 108.0) == ({"w.bin"}, 109.0)
    assert quiet.unsettled(seen(changed), 109.0) == (set(), None)


def test_quiet_a_settled_file_that_changes_is_unsettled_again() -> None:
    quiet = Quiet(QUIET_S)
    quiet.unsettled(seen(file()), 0.0)
    assert quiet.unsettled(seen(file()), 10.0) == (set(), None)
    assert quiet.unsettled(seen(file(size=99)), 11.0) == ({"w.bin"}, 16.0)


def test_quiet_due_is_the_earliest_settle_time() -> None:
    quiet = Quiet(QUIET_S)
    quiet.unsettled(seen(file("a")), 100.0)
    waiting, due = quiet.unsettled(seen(file("a"), file("b")), 102.0)
    assert waiting == {"a", "b"}
    assert due == 105.0
    waiting, due = quiet.unsettled(seen(file("a"), file("b")), 105.0)
    assert waiting == {"b"}
    assert due == 107.0


def test_quiet_forgets_removed_keys() -> None:
    """A file deleted and written again is new: its earlier calm does not count."""
    quiet = Quiet(QUIET_S)
    quiet.unsettled(seen(file("a"), file("b")), 0.0)
    assert quiet.unsettled(seen(file("b")), 10.0) == (set(), None)
    assert quiet.unsettled(seen(file("a"), file("b")), 11.0) == ({"a"}, 16.0)


def test_quiet_zero_settles_at_once() -> None:
    quiet = Quiet(0.0)
    assert quiet.unsettled(seen(file("a"), file("b")), 3.0) == (set(), None)
    assert quiet.unsettled(seen(file("a", size=1), file("b")), 3.0) == (set(), None)


def test_quiet_empty_listing_has_nothing_waiting() -> None:
    assert Quiet(QUIET_S).unsettled(Listing(), 0.0) == (set(), None)


# One key observed repeatedly: (seconds since the previous pass, signature changed?)
STEPS = st.lists(st.tuples(st.floats(0.0, 4.0), st.booleans()), min_size=1, max_size=20)


@PROPERTY
@given(steps=STEPS, quiet_s=st.sampled_from([0.0, 0.5, 3.0, 10.0]))
def test_quiet_settled_exactly_when_unchanged_for_quiet_s(
    steps: list[tuple[float, bool]], quiet_s: float
) -> None:
    """The invariant the push side relies on, over any sequence of observations."""
    quiet = Quiet(quiet_s)
    now, size, since = 0.0, 0, 0.0
    for i, (dt, changed) in enumerate(steps):
        now += dt
        if i == 0 or changed:
            size, since = size + 1, now
        waiting, due = quiet.unsettled(seen(file(size=size)), now)
        settled = now - since >= quiet_s
        assert waiting == (set() if settled else {"w.bin"})
        assert due == (None if settled else since + quiet_s)
