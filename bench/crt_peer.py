"""The ``boto3-crt`` peer: boto3's CRT transfer manager, used plainly, as a subprocess.

``python -m bench.crt_peer pull|push ENDPOINT BUCKET PREFIX DIR`` copies every object under
the prefix into DIR (pull) or every file under DIR to the prefix (push), one
``download_file`` / ``upload_file`` per object, all submitted at once, with the transfer
manager's defaults. Credentials and region come from AWS_* in the environment.

Why not ``boto3.s3.transfer.create_transfer_manager(client, TransferConfig(
preferred_transfer_client="crt"))`` as is: boto3 builds its CRT client for AWS only (TLS on,
request serializer with ``endpoint_url=None``), so it cannot reach a plain-http endpoint on
127.0.0.1. This wires the same two pieces, s3transfer's ``create_s3_crt_client`` and
``BotocoreCRTRequestSerializer``, to the bench endpoint; ``CRTTransferManager`` and the
native S3 client do the rest exactly as under boto3.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

# Exit code for "this server cannot serve the CRT at all" (the harness marks the row n/a):
# rclone serve s3 answers CreateMultipartUpload with an <InitiateMultipartUpload> root element
# where S3 has <InitiateMultipartUploadResult>, and the CRT finds no UploadId in it.
NOT_APPLICABLE = 3
INCOMPATIBLE = {"AWS_ERROR_S3_MISSING_UPLOAD_ID":
                "the CRT found no UploadId in the server's CreateMultipartUpload answer"}


def transfer_manager(endpoint_url: str) -> Any:
    """A ``CRTTransferManager`` on ``endpoint_url``, path-style, default settings."""
    import botocore.session
    from awscrt.auth import AwsCredentialsProvider
    from botocore.config import Config
    from s3transfer.crt import (  # type: ignore[import-untyped]
        BotocoreCRTRequestSerializer,
        CRTTransferManager,
        create_s3_crt_client,
    )

    region = os.environ.get("AWS_REGION", "us-east-1")
    creds = AwsCredentialsProvider.new_static(
        os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"],
        os.environ.get("AWS_SESSION_TOKEN"))
    crt = create_s3_crt_client(region, crt_credentials_provider=creds,
                               use_ssl=endpoint_url.startswith("https://"))
    serializer = BotocoreCRTRequestSerializer(
        botocore.session.Session(),
        {"region_name": region, "endpoint_url": endpoint_url,
         "config": Config(s3={"addressing_style": "path"})})
    return CRTTransferManager(crt, serializer)


def _keys(endpoint_url: str, bucket: str, prefix: str) -> list[str]:
    import boto3
    from botocore.config import Config

    client = boto3.session.Session().client(
        "s3", endpoint_url=endpoint_url, config=Config(s3={"addressing_style": "path"}))
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def copy(direction: str, endpoint_url: str, bucket: str, prefix: str, root: Path) -> int:
    """Pull or push every object; returns how many. Any failed transfer raises."""
    slash = prefix.rstrip("/") + "/"
    futures = []
    with transfer_manager(endpoint_url) as manager:
        if direction == "pull":
            for key in _keys(endpoint_url, bucket, slash):
                target = root / key[len(slash):]
                target.parent.mkdir(parents=True, exist_ok=True)
                futures.append(manager.download(bucket, key, str(target)))
        else:
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                key = slash + path.relative_to(root).as_posix()
                futures.append(manager.upload(str(path), bucket, key))
        for future in futures:
            future.result()
    return len(futures)


def main(argv: list[str]) -> int:
    if len(argv) != 5 or argv[0] not in ("pull", "push"):
        sys.stderr.write("usage: python -m bench.crt_peer pull|push ENDPOINT BUCKET PREFIX DIR\n")
        return 2
    from awscrt.exceptions import AwsCrtError

    direction, endpoint_url, bucket, prefix, root = argv
    try:
        n = copy(direction, endpoint_url, bucket, prefix, Path(root))
    except AwsCrtError as exc:
        if exc.name not in INCOMPATIBLE:
            raise
        sys.stderr.write(f"not applicable: {INCOMPATIBLE[exc.name]} ({exc.name})\n")
        return NOT_APPLICABLE
    sys.stdout.write(f"{n} objects\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
