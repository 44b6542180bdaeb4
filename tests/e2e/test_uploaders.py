"""Objects uploaded the way people upload models (boto3 `upload_file` defaults: 8 MiB parts,
a checksum per part) are pulled verified with the algorithm they carry, on moto, rclone and
SeaweedFS; a corrupted part is refused (issue 19)."""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from syncd.listing import Algo
from syncd.verify import combine_parts, hash_bytes
from tests.mirrors import MiB, syncd, tree, write_config
from tests.servers import ACCESS_KEY, SECRET_KEY, server_env, venv_binary

SIZE = 20 * MiB  # boto3's default TransferConfig: multipart above 8 MiB, 8 MiB parts
ALGOS = ["CRC32", "CRC32C", "SHA1", "SHA256", "CRC64NVME"]


def _data(seed: int, size: int = SIZE) -> bytes:
    return random.Random(seed).randbytes(size)


def _published(stderr: str) -> dict[str, dict[str, Any]]:
    out = {}
    for line in stderr.splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("event") == "copy_published":
                out[event["key"]] = event
    return out


def _upload(client: Any, bucket: str, key: str, path: Path, **extra: Any) -> None:
    client.upload_file(str(path), bucket, f"models/{key}", ExtraArgs=extra or None,
                       Config=TransferConfig())


def _pull(s3: Any, bucket: str, tmp_path: Path) -> tuple[Any, Path]:
    vol = tmp_path / "vol"
    vol.mkdir(exist_ok=True)
    cfg = write_config(tmp_path / "c.toml", s3.endpoint_url, bucket, direction="pull", root=vol)
    return syncd("--log-level", "debug", "sync", "--once", "-c", str(cfg)), vol


def _algo_seen(client: Any, bucket: str, key: str, algo: str, data: bytes) -> tuple[str, bool]:
    """The checksum algorithm the server keeps for `key`, as syncd names it (the one asked
    for when the server stored it, else the ETag's MD5: rclone keeps no checksums), and
    whether the server's value is true of `data`, whole or as the composite of its 8 MiB
    parts. moto files a CRC32 under CRC32C: that claim is false, and must be refused."""
    head = client.head_object(Bucket=bucket, Key=f"models/{key}", ChecksumMode="ENABLED")
    value = head.get(f"Checksum{algo}")
    if not value:
        return "md5", True
    a = Algo(algo.lower())
    parts = [hash_bytes(data[i:i + 8 * MiB], (a,))[a] for i in range(0, len(data), 8 * MiB)]
    bare = value.split("-")[0]
    return a.value, bare in (hash_bytes(data, (a,))[a], combine_parts(a, parts))


def _check(run: Any, vol: Path, key: str, data: bytes, algo: str, true: bool) -> None:
    if not true:  # a server whose claim is false: never published
        assert run.code == 9, run.stderr
        assert tree(vol) == {}
        return
    assert run.code == 0, run.stderr
    assert tree(vol) == {key: data}
    event = _published(run.stderr)[key]
    assert event["verified"] is True, run.stderr
    assert event["algo"] == algo
    assert "1 verified" in run.summary


@pytest.mark.parametrize("algo", [None, *ALGOS])
def test_uploaders_boto3_multipart_checksums_pull_verified(s3, bucket, tmp_path, algo):
    client = s3.client(request_checksum_calculation="when_supported")
    src = tmp_path / "shard.bin"
    src.write_bytes(_data(1))
    extra = {"ChecksumAlgorithm": algo} if algo else {}
    try:
        _upload(client, bucket, "shard.bin", src, **extra)
    except ClientError as exc:  # a server that does not know the algorithm refuses it
        assert algo == "CRC64NVME", exc
        return
    data = src.read_bytes()
    seen, true = _algo_seen(client, bucket, "shard.bin", algo or "CRC32", data)

    run, vol = _pull(s3, bucket, tmp_path)

    _check(run, vol, "shard.bin", data, seen, true)


def test_uploaders_boto3_multipart_without_checksums_pulls_verified_by_etag(s3, bucket,
                                                                           tmp_path):
    client = s3.client(request_checksum_calculation="when_required")
    src = tmp_path / "shard.bin"
    src.write_bytes(_data(2))
    _upload(client, bucket, "shard.bin", src)
    head = client.head_object(Bucket=bucket, Key="models/shard.bin", ChecksumMode="ENABLED")
    checksums = [k for k in head if k.startswith("Checksum") and k != "ChecksumType"]

    run, vol = _pull(s3, bucket, tmp_path)

    assert run.code == 0, run.stderr
    assert tree(vol) == {"shard.bin": src.read_bytes()}
    event = _published(run.stderr)["shard.bin"]
    assert event["verified"] is True, run.stderr
    assert event["algo"] == (checksums[0][len("Checksum"):].lower() if checksums else "md5")


@pytest.mark.parametrize("algo", ["CRC32", "CRC32C", "CRC64NVME"])
def test_uploaders_full_object_multipart_pulls_verified(s3, bucket, tmp_path, algo):
    client = s3.client(request_checksum_calculation="when_supported")
    data = _data(3)
    key = "models/full.bin"
    try:
        upload = client.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm=algo,
                                                ChecksumType="FULL_OBJECT")
    except ClientError as exc:
        assert algo == "CRC64NVME", exc
        return
    parts = []
    for n, start in enumerate(range(0, SIZE, 8 * MiB), 1):
        resp = client.upload_part(Bucket=bucket, Key=key, UploadId=upload["UploadId"],
                                  PartNumber=n, Body=data[start:start + 8 * MiB],
                                  ChecksumAlgorithm=algo)
        parts.append({"PartNumber": n, "ETag": resp["ETag"],
                      f"Checksum{algo}": resp.get(f"Checksum{algo}")})
    parts = [{k: v for k, v in p.items() if v is not None} for p in parts]
    client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload["UploadId"],
                                     MultipartUpload={"Parts": parts})
    seen, true = _algo_seen(client, bucket, "full.bin", algo, data)

    run, vol = _pull(s3, bucket, tmp_path)

    _check(run, vol, "full.bin", data, seen, true)


def test_uploaders_corrupted_part_is_refused(rclone_s3, tmp_path):
    """rclone keeps each object as a plain file: a byte flipped in the middle of part 2 is
    what a bit rot or a torn write on the server looks like, and its stored ETag stays."""
    s3 = rclone_s3
    bucket = f"t-corrupt-{random.Random().randrange(1 << 32):08x}"
    client = s3.client(request_checksum_calculation="when_supported")
    client.create_bucket(Bucket=bucket)
    src = tmp_path / "shard.bin"
    src.write_bytes(_data(4))
    _upload(client, bucket, "shard.bin", src)
    before = client.head_object(Bucket=bucket, Key="models/shard.bin")["ETag"]
    assert s3.root is not None
    stored = s3.root / bucket / "models" / "shard.bin"
    was = stored.stat()
    with stored.open("r+b") as f:
        f.seek(8 * MiB + 4 * MiB)
        byte = f.read(1)
        f.seek(8 * MiB + 4 * MiB)
        f.write(bytes([byte[0] ^ 0xFF]))
    # rot leaves the times as they were; rclone keys what it knows of a file on size and time
    os.utime(stored, ns=(was.st_atime_ns, was.st_mtime_ns))
    assert client.head_object(Bucket=bucket, Key="models/shard.bin")["ETag"] == before

    run, vol = _pull(s3, bucket, tmp_path)

    assert run.code == 9, run.stderr
    assert tree(vol) == {}


@pytest.mark.parametrize("algo", [None, "CRC32"])
def test_uploaders_unequal_parts_pull_verified(s3, bucket, tmp_path, algo):
    """An uploader free with its part sizes (5, 9 and 6 MiB): the boundaries come from the
    server (GetObjectAttributes, or one HEAD per part), not from the equal-parts guess,
    so the correct object is verified, not refused."""
    client = s3.client(request_checksum_calculation="when_required")
    data = _data(5)
    key = "models/odd.bin"
    extra = {"ChecksumAlgorithm": algo} if algo else {}
    upload = client.create_multipart_upload(Bucket=bucket, Key=key, **extra)
    parts, start = [], 0
    for n, size in enumerate((5 * MiB, 9 * MiB, 6 * MiB), 1):
        resp = client.upload_part(Bucket=bucket, Key=key, UploadId=upload["UploadId"],
                                  PartNumber=n, Body=data[start:start + size], **extra)
        start += size
        sums = {f"Checksum{algo}": resp.get(f"Checksum{algo}")} if algo else {}
        parts.append({"PartNumber": n, "ETag": resp["ETag"],
                      **{k: v for k, v in sums.items() if v}})
    client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload["UploadId"],
                                     MultipartUpload={"Parts": parts})
    head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    kept = [k for k in head if k.startswith("Checksum") and k != "ChecksumType"]

    run, vol = _pull(s3, bucket, tmp_path)

    assert run.code == 0, run.stderr
    assert tree(vol) == {"odd.bin": data}
    event = _published(run.stderr)["odd.bin"]
    assert event["verified"] is True, run.stderr
    assert event["algo"] == (kept[0][len("Checksum"):].lower() if kept else "md5")


@pytest.mark.parametrize("algo", [None, "SHA256"])
def test_uploaders_aws_cli_sync_pulls_verified(s3, bucket, tmp_path, algo):
    """`aws s3 sync` of a model directory (a 20 MiB shard goes multipart, a small config
    does not), with the CLI's default checksum or the one asked for."""
    upload = tmp_path / "upload"
    upload.mkdir()
    files = {"shard.bin": _data(6), "config.json": b'{"layers": 2}\n' * 64}
    for name, body in files.items():
        (upload / name).write_bytes(body)
    env = server_env({"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                      "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": os.devnull,
                      "AWS_SHARED_CREDENTIALS_FILE": os.devnull})
    command = [str(venv_binary("aws")), "--endpoint-url", s3.endpoint_url, "s3", "sync",
               str(upload), f"s3://{bucket}/models/", "--only-show-errors"]
    done = subprocess.run([*command, *(["--checksum-algorithm", algo] if algo else [])],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    client = s3.client()
    seen = {name: _algo_seen(client, bucket, name, algo or "CRC32", body)
            for name, body in files.items()}

    run, vol = _pull(s3, bucket, tmp_path)

    assert run.code == 0, run.stderr
    assert tree(vol) == files
    published = _published(run.stderr)
    for name, (expected, true) in seen.items():
        assert true, f"{s3.name} keeps a false claim for {name}"
        assert published[name]["verified"] is True, run.stderr
        assert published[name]["algo"] == expected


def test_uploaders_rclone_copy_pulls_verified(s3, bucket, tmp_path):
    """`rclone copy` to an S3 remote: small files in one PUT, a large one as a multipart
    upload in 5 MiB chunks (forced here; rclone's own cut-off is 200 MiB), which rclone
    sends without checksums: its md5-of-part-md5s ETag is what vouches for it."""
    upload = tmp_path / "upload"
    upload.mkdir()
    files = {"shard.bin": _data(7, 12 * MiB), "config.json": b'{"layers": 2}\n' * 64}
    for name, body in files.items():
        (upload / name).write_bytes(body)
    remote = {"TYPE": "s3", "PROVIDER": "Other", "ENDPOINT": s3.endpoint_url,
              "ACCESS_KEY_ID": ACCESS_KEY, "SECRET_ACCESS_KEY": SECRET_KEY,
              "REGION": "us-east-1", "FORCE_PATH_STYLE": "true"}
    env = server_env({f"RCLONE_CONFIG_UP_{k}": v for k, v in remote.items()})
    done = subprocess.run([str(venv_binary("rclone")), "copy", "--config", os.devnull,
                           "--s3-upload-cutoff", "5M", "--s3-chunk-size", "5M",
                           str(upload), f"up:{bucket}/models"],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    head = s3.client().head_object(Bucket=bucket, Key="models/shard.bin")
    assert head["ETag"].strip('"').endswith("-3") or s3.name == "rclone", head["ETag"]

    run, vol = _pull(s3, bucket, tmp_path)

    assert run.code == 0, run.stderr
    assert tree(vol) == files
    published = _published(run.stderr)
    assert all(published[name]["verified"] is True for name in files), run.stderr
    assert published["shard.bin"]["algo"] == "md5"
