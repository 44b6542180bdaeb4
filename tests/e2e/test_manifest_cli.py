"""`syncd manifest write` on every test server (issue 19, item 3): an artifact uploaded by
boto3 (upload_file defaults: a multipart shard, single PUTs), its manifest written by the
command, then a pull builds exactly the version the manifest names, at once, without waiting
for settling or a marker, and ignores what is uploaded after it."""

from __future__ import annotations

import os
from pathlib import Path

from syncd.artifacts import Manifest
from syncd.verify import OWN_ALGO, hash_bytes
from tests.mirrors import MiB, syncd, tree, write_config
from tests.servers import S3Server

FILES = {"model-00000.safetensors": os.urandom(9 * MiB),  # multipart under boto3 defaults
         "tokenizer.json": b'{"tok": 1}', "config.json": b'{"layers": 2}'}
# a marker that is never written: without the manifest, nothing would be built
EXTRA = 'artifacts = ["*"]\nmarker = "_COMPLETE"'


def test_manifest_write_describes_a_boto3_upload_and_a_pull_builds_exactly_it(
        s3: S3Server, bucket: str, tmp_path: Path) -> None:
    client = s3.client()
    for rel, data in FILES.items():
        path = tmp_path / rel
        path.write_bytes(data)
        client.upload_file(str(path), bucket, f"models/tiny/{rel}")
    vol = tmp_path / "vol"
    vol.mkdir()
    cfg = str(write_config(tmp_path / "c.toml", s3.endpoint_url, bucket, direction="pull",
                           root=vol, lease="volume", extra=EXTRA))

    held = syncd("sync", "--once", "-c", cfg)
    assert held.code == 0 and not (vol / "tiny").exists(), held.stdout + held.stderr

    wrote = syncd("manifest", "write", "tiny", "-c", cfg)
    assert wrote.code == 0, wrote.stderr
    assert f"s3://{bucket}/models/tiny/.syncd-manifest.json: written, 3 file(s)" in wrote.stdout
    body = client.get_object(Bucket=bucket, Key="models/tiny/.syncd-manifest.json")["Body"]
    manifest = Manifest.from_bytes(body.read())
    assert manifest.artifact == "tiny" and manifest.files.keys() == FILES.keys()
    for rel, data in FILES.items():
        crc = hash_bytes(data, [OWN_ALGO])[OWN_ALGO]
        assert (manifest.files[rel].size, manifest.files[rel].checksum) == (
            len(data), f"{OWN_ALGO}:{crc}")
    again = syncd("manifest", "write", "tiny", "-c", cfg)
    assert again.code == 0 and "unchanged" in again.stdout, again.stdout + again.stderr

    client.put_object(Bucket=bucket, Key="models/tiny/late.bin", Body=b"after the manifest")
    pulled = syncd("sync", "--once", "-c", cfg)
    assert pulled.code == 0, pulled.stdout + pulled.stderr
    assert tree(vol / "tiny") == FILES
    assert os.listdir(vol / ".syncd" / "artifacts" / "tiny") == [manifest.version]


def test_manifest_write_refuses_an_artifact_no_mirror_has(
        s3: S3Server, bucket: str, tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    cfg = str(write_config(tmp_path / "c.toml", s3.endpoint_url, bucket, direction="pull",
                           root=vol, lease="volume", extra='artifacts = ["models-*"]'))
    got = syncd("manifest", "write", "tiny", "-c", cfg)
    assert got.code == 3 and got.stderr.count("\n") == 1, got.stderr
    assert "'tiny' must be an artifact of exactly one mirror" in got.stderr
    empty = syncd("manifest", "write", "models-x", "-c", cfg)
    assert empty.code != 0 and "no object under models-x/" in empty.stderr, empty.stderr
