"""How source objects get into the bucket: the way users' tools upload them.

What a tool may verify a pull against depends on what the uploader sent (STYLE.md, Tests:
"seed objects the way users' tools do"), so W1/W3 are also pulled from copies uploaded as:

- ``plain``: today's rows: files laid on the server's disk (rclone) or boto3 with 64 MiB
  parts and no checksum (other servers): an MD5 ETag at most.
- ``boto3``: ``upload_file`` with boto3's defaults: TransferConfig() (multipart from 8 MiB,
  8 MiB parts) and request_checksum_calculation="when_supported": a composite CRC32.
- ``cli-v2``: as AWS CLI v2 uploads: from 8 MiB, a multipart upload with a full-object
  CRC64NVME (each part sends its own CRC64NVME, CompleteMultipartUpload the whole object's);
  below 8 MiB one PUT with the CRC64NVME.
- ``crc64-put``: one PUT per file with a full-object CRC64NVME (workload W1c).

A server that refuses a style gets :class:`NotApplicable`: its rows say why, nothing fails.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.workloads import Materialized

STYLES = ("plain", "boto3", "cli-v2")
CLI_PART_BYTES = 8 * 1024 * 1024  # AWS CLI multipart_threshold and multipart_chunksize
READ_BYTES = 8 * 1024 * 1024


class NotApplicable(Exception):
    """The server refused this way of uploading; the message says what it answered."""


def _crc64(data: bytes, crc: int = 0) -> int:
    from awscrt import checksums

    return int(checksums.crc64nvme(data, crc))


def _b64(crc: int) -> str:
    return base64.b64encode(crc.to_bytes(8, "big")).decode()


def file_crc64(path: Path) -> str:
    crc = 0
    with path.open("rb") as fh:
        while block := fh.read(READ_BYTES):
            crc = _crc64(block, crc)
    return _b64(crc)


def _refused(what: str, exc: Exception) -> NotApplicable:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
    return NotApplicable(f"the server refused {what}: {code}: {exc}")


def put_crc64(client: Any, bucket: str, key: str, path: Path) -> None:
    """One PUT with a full-object CRC64NVME."""
    from botocore.exceptions import ClientError

    try:
        with path.open("rb") as fh:
            client.put_object(Bucket=bucket, Key=key, Body=fh,
                              ChecksumCRC64NVME=file_crc64(path))
    except ClientError as exc:
        raise _refused("PutObject with a CRC64NVME", exc) from exc


def upload_cli_v2(client: Any, bucket: str, key: str, path: Path) -> None:
    """AWS CLI v2's upload: a full-object CRC64NVME multipart upload from 8 MiB."""
    from botocore.exceptions import ClientError

    size = path.stat().st_size
    if size < CLI_PART_BYTES:
        put_crc64(client, bucket, key, path)
        return
    try:
        upload_id = client.create_multipart_upload(
            Bucket=bucket, Key=key, ChecksumAlgorithm="CRC64NVME",
            ChecksumType="FULL_OBJECT")["UploadId"]
    except ClientError as exc:
        raise _refused("a FULL_OBJECT CRC64NVME multipart upload", exc) from exc
    parts = []
    whole = 0
    try:
        with path.open("rb") as fh:
            number = 1
            while data := fh.read(CLI_PART_BYTES):
                whole = _crc64(data, whole)
                crc = _b64(_crc64(data))
                got = client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id,
                                         PartNumber=number, Body=data, ChecksumCRC64NVME=crc)
                parts.append({"PartNumber": number, "ETag": got["ETag"],
                              "ChecksumCRC64NVME": crc})
                number += 1
        client.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts},
            ChecksumCRC64NVME=_b64(whole), ChecksumType="FULL_OBJECT")
    except ClientError as exc:
        client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        raise _refused("a FULL_OBJECT CRC64NVME multipart upload", exc) from exc


def uploader(style: str, endpoint_url: str, make_client: Callable[..., Any]) -> Callable[
        [str, str, Path], None]:
    """``upload(bucket, key, path)`` for a style; ``make_client(endpoint_url, **kw)`` is
    bench.server.s3_client with the credentials bound."""
    if style == "boto3":
        from boto3.s3.transfer import TransferConfig

        client = make_client(endpoint_url, checksums="when_supported")
        config = TransferConfig()  # boto3's defaults: 8 MiB threshold and parts, 10 threads

        def boto3_default(bucket: str, key: str, path: Path) -> None:
            client.upload_file(str(path), bucket, key, Config=config)

        return boto3_default
    client = make_client(endpoint_url)
    if style == "cli-v2":
        return lambda bucket, key, path: upload_cli_v2(client, bucket, key, path)
    if style == "crc64-put":
        return lambda bucket, key, path: put_crc64(client, bucket, key, path)
    raise ValueError(f"no uploader for style {style!r}")


def seed(upload: Callable[[str, str, Path], None], bucket: str, prefix: str,
         mat: Materialized) -> None:
    """Upload every file of the data set under ``prefix`` (ending in '/'), 4 at a time."""
    def one(item: tuple[str, Path]) -> None:
        rel, path = item
        upload(bucket, prefix + rel, path)

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(one, mat.paths()))


def vouches(client: Any, bucket: str, key: str) -> str:
    """What the server says it holds for an object: its checksum type and algorithm(s), as
    HEAD with ChecksumMode=ENABLED reports them."""
    head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    algos = [name.removeprefix("Checksum") for name in sorted(head)
             if name.startswith("Checksum") and name != "ChecksumType"]
    if not algos:
        etag = str(head.get("ETag", "")).strip('"')
        return "no checksum, ETag " + ("of parts" if "-" in etag else "MD5")
    kind = head.get("ChecksumType")
    return f"{kind} {'+'.join(algos)}" if kind else "+".join(algos)
