"""The lean S3 data path: signed GET/HEAD/PUT over one aiohttp session, retried with jitter.

botocore remains the control plane (credentials chain, listing, multipart create/complete,
batch delete); the per-object requests that dominate a sync go through here (see sigv4.py for
why). Errors come back as `S3HttpError(status, code, message)`, which the S3 store maps into
the SyncdError tree exactly as it maps botocore's ClientError.

A success that is not S3's is an error too, `NotS3Response`: a web server answers 200 to
anything, and its HTML page must not read as an empty listing, nor its PUT as a stored object
(issue 18). So an answer must be XML with the root S3 sends (`s3_xml`, also applied to the
control plane's answers), and a PUT or GET must carry the ETag S3 always returns.
Content types are not the test: moto answers a PUT with `text/html`, rclone lists as
`text/xml`; they only help the message say what came back.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus, urlsplit

import aiohttp
from yarl import URL

from syncd.backoff import next_delay
from syncd.stores.sigv4 import EMPTY_SHA256, Credentials, Signer, canonical_query, encode_path

# The one list of S3 answers worth another try, for the data path's own retries here and
# for the store's translation of botocore's errors (s3.py), so the two never disagree: 429
# (Too Many Requests) is transient on both.
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
RETRY_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError",
    "ServiceUnavailable", "RequestTimeTooSkewed", *(str(s) for s in RETRY_STATUS)})


def transient(status: int | None, code: str) -> bool:
    """An S3 error answer that another attempt may not get: throttling, a server failing.
    `code` is the error's Code, or the status as text when the answer had no body (HEAD)."""
    return status in RETRY_STATUS or code in RETRY_CODES


class S3HttpError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class NotS3Response(Exception):
    """A 2xx answer that S3 would never give; the store names the endpoint (`errors.NotS3`)."""

    def __init__(self, request: str, problem: str, *, status: int, content_type: str | None,
                 body: bytes = b"") -> None:
        self.request = request
        self.problem = problem
        self.status = status
        self.content_type = content_type
        self.body = body[:_SAMPLE + 1]  # one more: `sample` marks a cut
        super().__init__(self.describe())

    def describe(self) -> str:
        """What came back, in one line: status, content type, the problem, the first bytes."""
        got = f"{self.status} {self.content_type or '(no content type)'}"
        text = f"{self.request} got {got}, {self.problem}"
        return f"{text}: {sample(self.body)}" if self.body else text


_SAMPLE = 64


def sample(body: bytes) -> str:
    """The first bytes of a body, quoted, safe to print on one line: whitespace runs (line
    separators included) collapsed, control and bidi characters escaped by `repr`, cut at
    `_SAMPLE` bytes with a mark."""
    text = " ".join(body[:_SAMPLE].decode("utf-8", "replace").split())
    return repr(text) + ("..." if len(body) > _SAMPLE else "")


def local_name(tag: str) -> str:
    """An XML tag without its namespace: servers differ in (or omit) S3's namespace."""
    return tag.rpartition("}")[2]


def s3_xml(request: str, body: bytes, root: str, *, status: int = 200,
           content_type: str | None = None, also: tuple[str, ...] = ()) -> ET.Element:
    """The parsed answer, if it is XML whose root element is `root` (or one of `also`), in
    any namespace and with or without the "Result" suffix (rclone answers a
    CreateMultipartUpload with <InitiateMultipartUpload>); else `NotS3Response` saying what
    came back (HTML, JSON, an empty or cut-short body, another document)."""

    def refuse(problem: str) -> NotS3Response:
        return NotS3Response(request, problem, status=status, content_type=content_type,
                             body=body)

    if not body.strip():
        raise refuse(f"an empty body where S3 sends <{root}>")
    try:
        element = ET.fromstring(body)
    except ET.ParseError as exc:
        raise refuse(f"not well-formed XML ({exc})") from None
    if local_name(element.tag) not in (root, root.removesuffix("Result"), *also):
        raise refuse(f"<{local_name(element.tag)}> where S3 sends <{root}>")
    return element


async def required_etag(resp: aiohttp.ClientResponse, request: str) -> str:
    """The ETag header S3 sends with every PUT and GET of an object: a 200 without one is
    not S3 (a web server accepting anything), never an object stored or read. The caller
    releases `resp`."""
    etag = resp.headers.get("ETag")
    if etag and etag.strip('" '):
        return etag
    body = b""
    if resp.method != "HEAD":
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            body = await resp.content.read(_SAMPLE + 1)
    raise NotS3Response(request, "no ETag header", status=resp.status,
                        content_type=resp.headers.get("Content-Type"), body=body)


# The control plane's successful answers: the root element S3 sends, and the field without
# which the answer means nothing (a CreateMultipartUpload without an UploadId).
_CONTROL_ANSWERS: dict[str, tuple[str, str | None]] = {
    "CreateMultipartUpload": ("InitiateMultipartUploadResult", "UploadId"),
    "CompleteMultipartUpload": ("CompleteMultipartUploadResult", "ETag"),
    "ListParts": ("ListPartsResult", None),
    "ListMultipartUploads": ("ListMultipartUploadsResult", None),
    "DeleteObjects": ("DeleteResult", None),
}
# What a web server, never S3, sends on a HEAD of the bucket (S3: none, or XML).
_PAGE_TYPES = {"text/html", "application/xhtml+xml", "application/json"}


def refuse_page(request: str, status: int, content_type: str | None) -> None:
    """A bodiless answer (HEAD) says what it is only by its content type: S3 sends none or
    XML; a web page's type is `NotS3Response`. Anything else passes: the listing decides."""
    if (content_type or "").partition(";")[0].strip().lower() in _PAGE_TYPES:
        raise NotS3Response(request, "a web page where S3 sends no body", status=status,
                            content_type=content_type)


def expect_control_answer(response_dict: dict[str, Any] | None = None, **_: Any) -> None:
    """botocore's `response-received` hook, given each attempt's raw answer: a 2xx
    control-plane answer must be the XML S3 sends, else `NotS3Response`. botocore alone
    parses an HTML page into an answer without an UploadId (KeyError), and takes a 200 that
    is not XML for a cut-short answer: a 500, retried, then "server error 500". An <Error>
    document is S3's 200-with-an-error, which botocore raises as a ClientError."""
    if not response_dict:
        return
    name = str((response_dict.get("context") or {}).get("operation_name", ""))
    expected = _CONTROL_ANSWERS.get(name)
    status = int(response_dict.get("status_code") or 0)
    body = response_dict.get("body")
    if expected is None or not 200 <= status < 300 or not isinstance(body, bytes):
        return
    root_name, field = expected
    content_type = (response_dict.get("headers") or {}).get("content-type")
    root = s3_xml(name, body, root_name, status=status, content_type=content_type,
                  also=("Error",))
    if local_name(root.tag) == "Error":
        return
    if field and not any(local_name(c.tag) == field and (c.text or "").strip() for c in root):
        raise NotS3Response(name, f"<{root_name}> without {field}", status=status,
                            content_type=content_type, body=body)


_SLICE = 1 << 20


async def _slices(
    view: memoryview, guard: Callable[[], None] | None
) -> AsyncIterator[memoryview]:
    """The body in 1 MiB views; aiohttp awaits the socket between them (backpressure).
    `guard` runs before each slice: a writer that lost its lease while paused mid-upload
    breaks the request instead of letting the server complete it."""
    for start in range(0, len(view), _SLICE):
        if guard is not None:
            guard()
        yield view[start:start + _SLICE]


def _error_of(status: int, body: bytes) -> S3HttpError:
    code, message = str(status), ""
    if body:
        try:
            root = ET.fromstring(body)
            code = root.findtext("Code") or code
            message = root.findtext("Message") or ""
        except ET.ParseError:
            message = body[:200].decode("utf-8", "replace")
    return S3HttpError(status, code, message)


class S3Http:
    """One endpoint; `virtual` addressing puts the bucket in the host name."""

    def __init__(
        self, endpoint_url: str, region: str, *, virtual: bool,
        credentials: Callable[[], Awaitable[Credentials]], connections: int,
        connect_timeout_s: float, read_timeout_s: float, max_attempts: int,
    ) -> None:
        parts = urlsplit(endpoint_url)
        self._scheme = parts.scheme
        self._netloc = parts.netloc
        self._base_path = parts.path.rstrip("/")
        self._virtual = virtual
        self._signer = Signer(region)
        self._credentials = credentials
        self._max_attempts = max_attempts
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections, keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(sock_connect=connect_timeout_s,
                                          sock_read=read_timeout_s),
            auto_decompress=False,
            read_bufsize=256 << 10,  # larger chunks for the hashing loop, bounded per connection
            skip_auto_headers=("Content-Type", "Accept-Encoding", "User-Agent"),
        )
        self.requests = 0

    async def close(self) -> None:
        await self._session.close()

    def target(self, bucket: str, key: str) -> tuple[str, str]:
        """Host and encoded path; an empty key addresses the bucket itself."""
        if self._virtual:
            return f"{bucket}.{self._netloc}", encode_path(f"{self._base_path}/{key}")
        path = f"{self._base_path}/{bucket}/{key}" if key else f"{self._base_path}/{bucket}"
        return self._netloc, encode_path(path)

    async def list_page(
        self, bucket: str, prefix: str, token: str | None
    ) -> tuple[list[Listed], str | None]:
        """One ListObjectsV2 page: its entries and the next token, if any."""
        query = [("list-type", "2"), ("prefix", prefix), ("encoding-type", "url"),
                 ("max-keys", "1000")]
        if token:
            query.append(("continuation-token", token))
        resp = await self.send("GET", bucket, "", query=query, payload_hash=EMPTY_SHA256,
                               ok=(200,))
        try:
            body = await resp.read()
        finally:
            resp.release()
        return parse_listing(body, status=resp.status,
                             content_type=resp.headers.get("Content-Type"))

    async def send(
        self, method: str, bucket: str, key: str, *, query: Iterable[tuple[str, str]] = (),
        headers: Mapping[str, str] | None = None, body: bytes | bytearray | memoryview = b"",
        payload_hash: str, ok: Iterable[int] = (200, 206),
        guard: Callable[[], None] | None = None,
    ) -> aiohttp.ClientResponse:
        """The response, status checked, body unread (the caller releases it)."""
        host, path = self.target(bucket, key)
        query = list(query)
        qs = canonical_query(query)
        url = URL(f"{self._scheme}://{host}{path}{'?' + qs if qs else ''}", encoded=True)
        allowed = set(ok)
        attempt = 0
        while True:
            creds = await self._credentials()
            signed = self._signer.sign(method, host, path, query, headers or {}, payload_hash,
                                       creds, datetime.now(UTC))
            del signed["host"]  # aiohttp sets it from the URL
            self.requests += 1
            data: Any = body
            if len(body) > _SLICE:  # bounded sends: no payload copy, no big transport buffer
                signed["content-length"] = str(len(body))
                data = _slices(memoryview(body), guard)
            if guard is not None:
                guard()  # every attempt, retries included: a stale writer sends nothing
            try:
                resp = await self._session.request(method, url, headers=signed, data=data)
            except (aiohttp.ClientConnectionError, TimeoutError):
                if guard is not None:
                    guard()  # a broken body may be the guard's doing: never retry that
                if attempt + 1 >= self._max_attempts:
                    raise
            else:
                if resp.status in allowed:
                    return resp
                error = _error_of(resp.status, await resp.read())
                resp.release()
                if not transient(resp.status, error.code) or attempt + 1 >= self._max_attempts:
                    raise error
            await asyncio.sleep(next_delay(attempt, base=0.1, cap=5.0, rand=random.random()))
            attempt += 1


# One ListObjectsV2 entry: key, size, ETag, LastModified (as sent; the store parses it only
# where the ETag is weak, issue 19).
Listed = tuple[str, int, str | None, str | None]


def parse_listing(
    body: bytes, *, status: int = 200, content_type: str | None = None
) -> tuple[list[Listed], str | None]:
    """ListObjectsV2 XML -> entries and continuation token. Keys arrive URL-encoded
    (`encoding-type=url`), so keys with characters XML cannot carry survive the trip.
    Anything but a ListBucketResult whose entries have a Key and a Size is `NotS3Response`:
    an HTML page read leniently would be an empty bucket, and a pull would delete on it."""
    root = s3_xml("ListObjectsV2", body, "ListBucketResult", status=status,
                  content_type=content_type)
    ns = root.tag[:root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    encoded = (root.findtext(f"{ns}EncodingType") or "").lower() == "url"
    contents, key_tag, size_tag, etag_tag = f"{ns}Contents", f"{ns}Key", f"{ns}Size", f"{ns}ETag"
    modified_tag = f"{ns}LastModified"
    entries: list[Listed] = []
    for item in root:  # one pass over each entry's children: ~3x faster than findtext
        if item.tag != contents:
            continue
        key: str | None = None
        size: str | None = None
        etag: str | None = None
        modified: str | None = None
        for child in item:
            tag = child.tag
            if tag == key_tag:
                key = child.text or ""
            elif tag == size_tag:
                size = child.text
            elif tag == etag_tag:
                etag = child.text
            elif tag == modified_tag:
                modified = child.text
        if not key or size is None or not size.strip().isdigit():
            raise NotS3Response(
                "ListObjectsV2", f"an entry without a {'Key' if not key else 'Size'}",
                status=status, content_type=content_type, body=body)
        entries.append((unquote_plus(key) if encoded else key, int(size), etag, modified))
    truncated = (root.findtext(f"{ns}IsTruncated") or "").lower() == "true"
    token = root.findtext(f"{ns}NextContinuationToken") if truncated else None
    if truncated and not token:  # e.g. a server that ignored list-type=2: never guess
        raise S3HttpError(200, "IncompleteListing",
                          "listing truncated without a continuation token")
    return entries, token


def head_fields(headers: Mapping[str, str]) -> dict[str, Any]:
    """The subset of a HEAD/GET response syncd reads, named as botocore names them."""
    out: dict[str, Any] = {"Metadata": {}}
    for name, value in headers.items():
        lower = name.lower()
        if lower.startswith("x-amz-meta-"):
            out["Metadata"][lower[len("x-amz-meta-"):]] = value
        elif lower.startswith("x-amz-checksum-"):
            algo = lower[len("x-amz-checksum-"):]
            if algo == "type":
                out["ChecksumType"] = value
            elif algo != "mode":
                out[f"Checksum{algo.upper()}"] = value
    for header, field_name in (("ETag", "ETag"), ("Content-Range", "ContentRange"),
                               ("x-amz-server-side-encryption", "ServerSideEncryption"),
                               ("x-amz-server-side-encryption-customer-algorithm",
                                "SSECustomerAlgorithm"), ("Last-Modified", "LastModified")):
        if header in headers:
            out[field_name] = headers[header]
    if headers.get("x-amz-mp-parts-count", "").isdigit():  # a HEAD/GET with partNumber
        out["PartsCount"] = int(headers["x-amz-mp-parts-count"])
    if "Content-Length" in headers and "Content-Range" not in headers:
        out["ContentLength"] = int(headers["Content-Length"])
    elif "Content-Range" in headers:
        total = headers["Content-Range"].rpartition("/")[2]
        if total.isdigit():
            out["ContentLength"] = int(total)
    return out
