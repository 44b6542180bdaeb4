"""Issue 18: an answer that is not S3 is an error naming the endpoint, never an empty listing or
a stored object. The parsing rules on their own, then the store against a plain web server
(tests/web_server.py); the CLI runs are in tests/e2e/test_not_s3.py."""

from __future__ import annotations

import pytest

from syncd.config import S3Config, TransferConfig
from syncd.errors import NotS3, Unreachable
from syncd.stores.s3 import S3Store
from syncd.stores.s3_http import NotS3Response, parse_listing, sample
from tests.mirrors import MiB
from tests.web_server import (
    CUT_XML,
    EMPTY,
    HTML,
    JSON,
    NO_SIZE,
    OTHER_XML,
    S3_LIKE,
    Answer,
    web_server,
)

TRANSFER = TransferConfig(part_size=5 * MiB, multipart_threshold=5 * MiB, concurrency=4)
ENTRY = "<Contents><Key>a%20b.bin</Key><Size>7</Size><ETag>\"e1\"</ETag></Contents>"


@pytest.mark.parametrize("ns", [' xmlns="http://s3.amazonaws.com/doc/2006-03-01/"', "",
                                ' xmlns="urn:some-other-s3"'], ids=["s3", "none", "other"])
def test_parse_listing_reads_entries_in_any_namespace(ns: str) -> None:
    body = (f"<ListBucketResult{ns}><EncodingType>url</EncodingType>"
            f"<IsTruncated>false</IsTruncated>{ENTRY}</ListBucketResult>").encode()
    assert parse_listing(body) == ([("a b.bin", 7, '"e1"', None)], None)


@pytest.mark.parametrize(("answer", "problem"), [
    (HTML, "<html> where S3 sends <ListBucketResult>"),
    (JSON, "not well-formed XML"),
    (EMPTY, "an empty body"),
    (OTHER_XML, "<ListAllMyBucketsResult> where S3 sends <ListBucketResult>"),
    (CUT_XML, "not well-formed XML"),
    (NO_SIZE, "an entry without a Size"),
], ids=["html", "json", "empty", "other-root", "cut-short", "no-size"])
def test_parse_listing_refuses_what_is_not_a_listing(answer: Answer, problem: str) -> None:
    with pytest.raises(NotS3Response) as info:
        parse_listing(answer.body, content_type=answer.content_type)
    text = info.value.describe()
    assert text.startswith(
        f"ListObjectsV2 got 200 {answer.content_type or '(no content type)'}")
    assert problem in text


@pytest.mark.parametrize("entry", [
    "<Contents><Size>1</Size></Contents>",
    "<Contents><Key></Key><Size>1</Size></Contents>",
    "<Contents><Key>k</Key><Size>many</Size></Contents>",
], ids=["no-key", "empty-key", "size-not-a-number"])
def test_parse_listing_refuses_entries_without_key_or_size(entry: str) -> None:
    with pytest.raises(NotS3Response):
        parse_listing(f"<ListBucketResult>{entry}</ListBucketResult>".encode())


def test_sample_is_one_quoted_line_with_controls_escaped_and_a_cut_marked() -> None:
    body = "<p>\n\x1b[31mred\u202e\u2028x</p>".encode() + b"y" * 100
    shown = sample(body)
    assert "\n" not in shown and "\x1b" not in shown and "\u202e" not in shown
    assert shown.startswith("'<p> \\x1b[31mred\\u202e x</p>yyy") and shown.endswith("'...")
    assert sample(b"short") == "'short'"


def _store(url: str, endpoint: str = "default") -> S3Store:
    cfg = S3Config(endpoint_url=url, addressing_style="path", max_attempts=2)
    return S3Store(cfg, TRANSFER, "bkt-1", "p/", endpoint=endpoint)


async def test_store_read_of_a_page_is_not_s3_naming_the_named_endpoint() -> None:
    """A lease read (get_small) answered 200 by a page without an ETag: not a record."""
    with web_server(HTML, {"HeadBucket": S3_LIKE["HeadBucket"]}) as web:
        async with _store(web.endpoint_url, endpoint="east") as store:
            with pytest.raises(NotS3) as info:
                await store.get_small("lease.json")
            with pytest.raises(NotS3) as listed:
                await store.list()
    for exc in (info.value, listed.value):
        assert f"endpoint east ({web.endpoint_url}) does not answer as S3" in str(exc)
        assert exc.exit_code == 5 and exc.retryable
    assert "s3://bkt-1/p/lease.json: GetObject got 200 text/html" in str(info.value)
    assert "<!DOCTYPE html>" in str(info.value)


async def test_store_check_accepts_a_bare_200_head_and_refuses_a_page() -> None:
    with web_server(HTML, {"HeadBucket": S3_LIKE["HeadBucket"]}) as web:
        async with _store(web.endpoint_url) as store:
            await store.check()
    with web_server(JSON) as web, pytest.raises(NotS3) as info:
        async with _store(web.endpoint_url) as store:
            await store.check()
    assert "HeadBucket got 200 application/json" in str(info.value)


async def test_store_lists_a_namespace_free_listing_and_pages_on() -> None:
    """Servers that omit S3's namespace are still S3: their listings are read, not refused."""
    page = Answer(
        200, "text/xml", b"<ListBucketResult><IsTruncated>false</IsTruncated>"
        b"<Contents><Key>p/x.bin</Key><Size>3</Size><ETag>\"abc\"</ETag></Contents>"
        b"</ListBucketResult>")
    with web_server(HTML, {"HeadBucket": S3_LIKE["HeadBucket"], "ListObjectsV2": page}) as web:
        async with _store(web.endpoint_url) as store:
            listing = await store.list()
    assert [(e.key, e.size, e.etag) for e in listing] == [("x.bin", 3, "abc")]


def test_not_s3_is_an_unreachable_endpoint() -> None:
    """Exit 5 and retried by the daemon, like an endpoint that is down (README exit codes)."""
    assert issubclass(NotS3, Unreachable)
