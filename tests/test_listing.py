"""Identity without reading (listing.py): a weak ETag (issue 19) is no identity, so size and
Last-Modified stand in for it; a strong ETag's fingerprint is what it always was, so records
made before stay valid."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncd.listing import Entry, Listing, Recorded, epoch_s, fingerprint, weak_etag
from syncd.plan import Copy, Policy, Reason, Skip, compute
from syncd.stores.s3_http import parse_listing

WEAK = ["", None, "d41d8cd98f00b204e9800998ecf8427e-2", '"d41d8cd98f00b204e9800998ecf8427e-13"']
STRONG = ["6482395991b86883f7217fbfcf9d47d8", "a3f1c13db0ef6074a02ed6bee780b5b5-3"]
T0 = 1796448627  # 2026-12-05T05:30:27Z


@pytest.mark.parametrize("etag", WEAK)
def test_weak_etag_names_etags_that_do_not_depend_on_content(etag: str | None) -> None:
    assert weak_etag(etag)


@pytest.mark.parametrize("etag", STRONG)
def test_weak_etag_leaves_content_etags_strong(etag: str) -> None:
    assert not weak_etag(etag)


@pytest.mark.parametrize("text", ["2026-12-05T05:30:27Z", "2026-12-05T05:30:27.999Z",
                                  "Sat, 05 Dec 2026 05:30:27 GMT", "2026-12-05T06:30:27+01:00"])
def test_epoch_s_reads_listing_and_header_forms_to_the_same_second(text: str) -> None:
    assert epoch_s(text) == T0


@pytest.mark.parametrize("text", [None, "", "  ", "yesterday"])
def test_epoch_s_is_none_for_no_time(text: str | None) -> None:
    assert epoch_s(text) is None


@pytest.mark.parametrize("etag", [None, "d41d8cd98f00b204e9800998ecf8427e-2"])
def test_fingerprint_of_weak_etag_moves_with_last_modified(etag: str | None) -> None:
    before = Entry("a", 100, etag=etag, last_modified=T0)
    after = Entry("a", 100, etag=etag, last_modified=T0 + 1)
    assert fingerprint(before) != fingerprint(after)


@given(size=st.integers(0, 1 << 40), etag=st.sampled_from(STRONG),
       when=st.none() | st.integers(0, 1 << 34))
def test_fingerprint_of_strong_etag_ignores_last_modified(size: int, etag: str,
                                                          when: int | None) -> None:
    """The fingerprint records made before issue 19 hold: `size:etag`."""
    assert fingerprint(Entry("a", size, etag=etag, last_modified=when)) == f"{size}:{etag}"


def test_fingerprint_of_empty_object_ignores_last_modified() -> None:
    """No bytes have one content: touching an empty object is no change."""
    assert fingerprint(Entry("a", 0, last_modified=T0)) == fingerprint(
        Entry("a", 0, last_modified=T0 + 5))


def test_plan_copies_weak_etag_object_rewritten_at_same_size() -> None:
    """The record holds the fingerprint of the version pulled; a rewrite moves only the time."""
    pulled = Entry("m.bin", 100, etag=None, last_modified=T0)
    on_volume = Entry("m.bin", 100, mtime_ns=5, inode=7)
    record = {"m.bin": Recorded(fingerprint(pulled), fingerprint(on_volume))}
    same = compute(Listing.of([pulled]), Listing.of([on_volume]), record, Policy())
    assert same.actions == [Skip("m.bin", Reason.UNCHANGED)]
    rewritten = Entry("m.bin", 100, etag=None, last_modified=T0 + 2)
    plan = compute(Listing.of([rewritten]), Listing.of([on_volume]), record, Policy())
    assert plan.actions == [Copy("m.bin", Reason.SOURCE_CHANGED, rewritten)]


def test_parse_listing_carries_last_modified() -> None:
    body = (b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            b"<IsTruncated>false</IsTruncated><Contents><Key>copy/a.bin</Key>"
            b"<ETag>&#34;&#34;</ETag><Size>100</Size>"
            b"<LastModified>2026-12-05T05:30:27Z</LastModified></Contents>"
            b"</ListBucketResult>")
    assert parse_listing(body) == ([("copy/a.bin", 100, '""', "2026-12-05T05:30:27Z")], None)
