"""Issue 18: a web server that is not S3 never counts as success. Through the real CLI, against
a plain web server on 127.0.0.1 (tests/web_server.py): its page read leniently was an empty
listing (pull exit 0, "0 files"), its PUT "1 verified", its multipart answer a KeyError.
Each run must end with one `syncd: error:` line naming the endpoint and what came back, exit
5 (the S3 endpoint is not reached at that URL), no traceback, nothing written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.mirrors import MiB, Run, syncd, tree, write_config
from tests.web_server import (
    CUT_XML,
    EMPTY,
    HTML,
    JSON,
    NO_SIZE,
    OTHER_XML,
    S3_LIKE,
    Answer,
    WebServer,
    web_server,
    xml,
)

BUCKET = "models-bkt"
# The listing's variants: what a web server (or a wrong S3 path) answers a ListObjectsV2 with.
NOT_A_LISTING = {"html": HTML, "json": JSON, "empty": EMPTY, "other-root": OTHER_XML,
                 "cut-short": CUT_XML, "entry-without-size": NO_SIZE}


def run_once(web: WebServer, root: Path, tmp: Path, direction: str, *,
             lease: str = "volume") -> Run:
    cfg = write_config(tmp / "c.toml", web.endpoint_url, BUCKET, direction=direction,
                       root=root, lease=lease)
    return syncd("sync", "--once", "-c", str(cfg), timeout=120)


def error_line(run: Run, web: WebServer) -> str:
    """The run's one error line; it names the endpoint. No traceback anywhere."""
    assert run.code == 5, (run.code, run.stdout, run.stderr)
    assert "Traceback" not in run.stderr + run.stdout
    assert "KeyError" not in run.stderr
    errors = [ln for ln in run.stderr.splitlines() if ln.startswith("syncd: error:")]
    assert len(errors) == 1, run.stderr
    assert web.endpoint_url in errors[0], errors[0]
    assert "does not answer as S3" in errors[0], errors[0]
    assert " verified" not in run.stdout and " files, " not in run.stdout, run.stdout
    return errors[0]


def volume(tmp: Path, files: dict[str, bytes]) -> Path:
    root = tmp / "vol"
    root.mkdir()
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


@pytest.mark.parametrize("direction", ["pull", "push"])
@pytest.mark.parametrize("variant", NOT_A_LISTING)
def test_sync_fails_naming_endpoint_when_listing_is_not_s3(
        variant: str, direction: str, tmp_path: Path) -> None:
    """The bucket's HEAD looks right, the listing does not: an error, never an empty bucket.
    A pull keeps the volume as it was (an empty listing would be grounds to delete)."""
    local = {"keep.txt": b"already here"}
    root = volume(tmp_path, local)
    with web_server(NOT_A_LISTING[variant], {"HeadBucket": S3_LIKE["HeadBucket"]}) as web:
        line = error_line(run_once(web, root, tmp_path, direction), web)
    assert "ListObjectsV2" in line, line
    assert tree(root) == local
    assert not [op for op in web.seen if op in ("PutObject", "CreateMultipartUpload")]


@pytest.mark.parametrize("direction", ["pull", "push"])
@pytest.mark.parametrize("page", [HTML, JSON], ids=["html", "json"])
def test_sync_fails_at_bucket_check_when_endpoint_serves_pages(
        page: Answer, direction: str, tmp_path: Path) -> None:
    """A server that answers everything with a page is caught at the bucket's HEAD."""
    root = volume(tmp_path, {"a.txt": b"a"})
    with web_server(page) as web:
        line = error_line(run_once(web, root, tmp_path, direction), web)
    assert "HeadBucket" in line and (page.content_type or "") in line, line
    assert tree(root) == {"a.txt": b"a"}


def test_push_fails_when_put_answers_without_etag(tmp_path: Path) -> None:
    """S3 answers every PUT with an ETag; a 200 page is not a stored object, never
    "1 verified"."""
    root = volume(tmp_path, {"a.txt": b"small file"})
    with web_server(HTML, {**S3_LIKE, "PutObject": HTML}) as web:
        line = error_line(run_once(web, root, tmp_path, "push"), web)
    assert "PutObject" in line and "no ETag" in line and "<!DOCTYPE html>" in line, line
    assert f"s3://{BUCKET}/models/a.txt" in line, line


BIG = 6 * MiB + 1  # past the 5 MiB multipart threshold of write_config


@pytest.mark.parametrize(("op", "answer", "what"), [
    ("CreateMultipartUpload", HTML, "<html> where S3 sends <InitiateMultipartUploadResult>"),
    ("CreateMultipartUpload", JSON, "not well-formed XML"),
    ("CreateMultipartUpload", xml("<InitiateMultipartUploadResult><Bucket>b</Bucket>"
                                  "</InitiateMultipartUploadResult>"), "without UploadId"),
    ("UploadPart", HTML, "no ETag"),
    ("CompleteMultipartUpload", HTML, "<html> where S3 sends <CompleteMultipartUploadResult>"),
    ("CompleteMultipartUpload", EMPTY, "an empty body"),
    ("CompleteMultipartUpload", xml("<CompleteMultipartUploadResult><Key>k</Key>"
                                    "</CompleteMultipartUploadResult>"), "without ETag"),
], ids=["create-html", "create-json", "create-no-id", "part-html", "complete-html",
        "complete-empty", "complete-no-etag"])
def test_multipart_push_fails_when_an_answer_is_not_s3(
        op: str, answer: Answer, what: str, tmp_path: Path) -> None:
    root = volume(tmp_path, {"big.bin": os.urandom(BIG)})
    with web_server(HTML, {**S3_LIKE, op: answer}) as web:
        line = error_line(run_once(web, root, tmp_path, "push"), web)
    assert op in web.seen
    assert op in line and what in line and f"s3://{BUCKET}/models/big.bin" in line, line


def test_push_with_s3_lease_fails_as_not_s3_not_as_lease_unsupported(tmp_path: Path) -> None:
    """The S3 lease's probe PUTs answered by a page: the endpoint is not S3 (exit 5), not an
    S3 server that ignores conditional writes (exit 12)."""
    root = volume(tmp_path, {"a.txt": b"a"})
    with web_server(HTML, {"HeadBucket": S3_LIKE["HeadBucket"],
                           "ListObjectsV2": S3_LIKE["ListObjectsV2"]}) as web:
        line = error_line(run_once(web, root, tmp_path, "push", lease="s3"), web)
    assert "PutObject" in line and "no ETag" in line, line


def test_complete_answered_200_with_an_s3_error_stays_a_server_error(tmp_path: Path) -> None:
    """S3 may answer CompleteMultipartUpload 200 with an <Error> document: that is S3 speaking
    (botocore retries it as a 500), not a web page."""
    root = volume(tmp_path, {"big.bin": os.urandom(BIG)})
    error = xml("<Error><Code>InternalError</Code><Message>try again</Message></Error>")
    with web_server(HTML, {**S3_LIKE, "CompleteMultipartUpload": error}) as web:
        run = run_once(web, root, tmp_path, "push")
    assert run.code == 5 and "Traceback" not in run.stderr, run.stderr
    assert "server error InternalError" in run.stderr and "not answer as S3" not in run.stderr
    assert web.seen.count("CompleteMultipartUpload") == 2  # max_attempts = 2: retried
