"""A plain web server that is not S3, for the tests of issue 18 ("a web server that is not S3
counts as success"): Python's http.server in a thread on 127.0.0.1, answering every request
with a page (200 text/html) unless a test gives an operation another answer.

Requests are sorted into S3 operations by method, path and query, the way S3 would read
them, so a test can answer the listing as S3 does and only a PUT as a web page, and can
check that the request it means to test was actually sent.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from tests.servers import HOST

PAGE = b"<!DOCTYPE html>\n<html><head><title>Welcome</title></head><body>It works!</body></html>\n"
S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"


@dataclass(frozen=True)
class Answer:
    status: int = 200
    content_type: str | None = "text/html; charset=utf-8"
    body: bytes = PAGE
    headers: tuple[tuple[str, str], ...] = ()


def xml(body: str, *, headers: tuple[tuple[str, str], ...] = ()) -> Answer:
    return Answer(200, "application/xml",
                  b'<?xml version="1.0" encoding="UTF-8"?>\n' + body.encode(), headers)


HTML = Answer()
JSON = Answer(200, "application/json", b'{"status": "ok", "items": []}')
EMPTY = Answer(200, None, b"")
OTHER_XML = xml(f'<ListAllMyBucketsResult xmlns="{S3_NS}"><Buckets/></ListAllMyBucketsResult>')
CUT_XML = xml(f'<ListBucketResult xmlns="{S3_NS}"><Name>bkt</Name><Contents><Key>a.bin</Key>')
NO_SIZE = xml(f'<ListBucketResult xmlns="{S3_NS}"><IsTruncated>false</IsTruncated>'
              '<Contents><Key>a.bin</Key><ETag>"x"</ETag></Contents></ListBucketResult>')

ETAG = (("ETag", '"0123456789abcdef0123456789abcdef"'),)
# What S3 answers, for the operations a test does not make a web page of.
S3_LIKE: dict[str, Answer] = {
    "HeadBucket": Answer(200, None, b""),
    "ListObjectsV2": xml(f'<ListBucketResult xmlns="{S3_NS}"><Name>bkt</Name>'
                         '<KeyCount>0</KeyCount><IsTruncated>false</IsTruncated>'
                         '</ListBucketResult>'),
    "ListMultipartUploads": xml(f'<ListMultipartUploadsResult xmlns="{S3_NS}">'
                                '<IsTruncated>false</IsTruncated></ListMultipartUploadsResult>'),
    "PutObject": Answer(200, None, b"", ETAG),
    "CreateMultipartUpload": xml(f'<InitiateMultipartUploadResult xmlns="{S3_NS}">'
                                 '<Bucket>bkt</Bucket><Key>k</Key><UploadId>up-1</UploadId>'
                                 '</InitiateMultipartUploadResult>'),
    "UploadPart": Answer(200, None, b"", ETAG),
    "CompleteMultipartUpload": xml(f'<CompleteMultipartUploadResult xmlns="{S3_NS}">'
                                   '<Bucket>bkt</Bucket><Key>k</Key><ETag>"abc-2"</ETag>'
                                   '</CompleteMultipartUploadResult>'),
    "AbortMultipartUpload": Answer(204, None, b""),
}


def operation(method: str, path: str, query: dict[str, list[str]]) -> str:
    """The S3 operation a path-style request names."""
    on_key = len(path.strip("/").split("/", 1)) > 1
    if method == "HEAD":
        return "HeadObject" if on_key else "HeadBucket"
    if method == "GET":
        if not on_key:
            return "ListMultipartUploads" if "uploads" in query else "ListObjectsV2"
        return "ListParts" if "uploadId" in query else "GetObject"
    if method == "PUT":
        return "UploadPart" if "partNumber" in query else "PutObject"
    if method == "POST":
        if "delete" in query:
            return "DeleteObjects"
        return "CreateMultipartUpload" if "uploads" in query else "CompleteMultipartUpload"
    if method == "DELETE":
        return "AbortMultipartUpload" if "uploadId" in query else "DeleteObject"
    return method


@dataclass
class WebServer:
    """Answers `answers[operation]`, else `default`; `seen` lists the operations asked."""

    default: Answer = HTML
    answers: dict[str, Answer] = field(default_factory=dict)
    seen: list[str] = field(default_factory=list)
    port: int = 0

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"


def _handler(web: WebServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            self._drain()
            parts = urlsplit(self.path)
            op = operation(self.command, parts.path, parse_qs(parts.query,
                                                              keep_blank_values=True))
            web.seen.append(op)
            answer = web.answers.get(op, web.default)
            self.send_response(answer.status)
            if answer.content_type:
                self.send_header("Content-Type", answer.content_type)
            for name, value in answer.headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(answer.body)

        def _drain(self) -> None:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    self.rfile.read(size + 2)
                self.rfile.readline()
                return
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining > 0:
                remaining -= len(self.rfile.read(min(remaining, 1 << 20)))

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _answer

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


class _Quiet(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that hung up mid-answer is not the test's story


@contextlib.contextmanager
def web_server(default: Answer = HTML, answers: dict[str, Answer] | None = None
               ) -> Iterator[WebServer]:
    web = WebServer(default, dict(answers or {}))
    server = _Quiet((HOST, 0), _handler(web))
    web.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, name="web-server", daemon=True)
    thread.start()
    try:
        yield web
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
