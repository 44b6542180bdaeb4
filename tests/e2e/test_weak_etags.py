"""Objects whose ETag does not depend on their content (issue 19, item 2): a rewrite at the same
size is seen by size and Last-Modified, reported by `check` and pulled by the next pass.

SeaweedFS only: it is the one test server whose own tools write such ETags. `weed filer.copy`
(weed 4.48) lists a file stored in one chunk with ETag `""` and a chunked one with
`"d41d8cd98f00b204e9800998ecf8427e-N"` (the MD5 of no bytes, N chunks); its filer's HTTP
API (PUT, or a multipart-form POST) and `weed mount` store an MD5 of the content, as S3 PUTs
do on every server.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.mirrors import MiB, syncd, tree, wait_for, write_config
from tests.servers import S3Server, venv_binary

SIZES = {"config.json": 100, "shards/model.safetensors": 3 * MiB // 2}  # one chunk; two of 1 MiB


def _filer_copy(server: S3Server, bucket: str, files: dict[str, bytes], scratch: Path) -> None:
    """Each file written as `weed filer.copy` writes it, in chunks of at most 1 MiB."""
    for key, body in files.items():
        local = scratch / key
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(body)
        folder = f"/buckets/{bucket}/models/{key}".rpartition("/")[0]
        subprocess.run(
            [str(venv_binary("weed")), "filer.copy", "-maxMB=1", str(local),
             f"http://127.0.0.1:{server.ports['filer']}{folder}/"],
            check=True, capture_output=True, timeout=60)


def _listed(server: S3Server, bucket: str) -> dict[str, tuple[int, str, float]]:
    page = server.client().list_objects_v2(Bucket=bucket, Prefix="models/")
    return {o["Key"].removeprefix("models/"): (o["Size"], o["ETag"],
                                               o["LastModified"].timestamp())
            for o in page.get("Contents", ())}


@pytest.mark.parametrize("s3", ["seaweedfs"], indirect=True)
def test_weak_etag_object_rewritten_at_same_size_is_pulled_again(
        s3: S3Server, bucket: str, tmp_path: Path) -> None:
    first = {key: os.urandom(size) for key, size in SIZES.items()}
    _filer_copy(s3, bucket, first, tmp_path / "v1")
    listed = _listed(s3, bucket)
    assert {k: etag for k, (_, etag, _) in listed.items()} == {
        "config.json": '""', "shards/model.safetensors": '"d41d8cd98f00b204e9800998ecf8427e-2"'}

    vol = tmp_path / "vol"
    vol.mkdir()
    cfg = write_config(tmp_path / "c.toml", s3.endpoint_url, bucket, direction="pull", root=vol)
    run = syncd("sync", "--once", "-c", str(cfg))
    assert run.code == 0, run.stderr
    assert tree(vol) == first
    assert syncd("check", "-c", str(cfg)).code == 0  # what was pulled is recorded as pulled

    # Last-Modified has whole seconds: rewrite once the listed second has passed
    latest = max(when for _, _, when in listed.values())
    wait_for(lambda: time.time() >= latest + 1.05, 5, "the next second")
    second = {key: os.urandom(size) for key, size in SIZES.items()}
    _filer_copy(s3, bucket, second, tmp_path / "v2")
    relisted = _listed(s3, bucket)
    assert {k: v[:2] for k, v in relisted.items()} == {k: v[:2] for k, v in listed.items()}

    check = syncd("check", "-c", str(cfg))
    assert check.code == 4, check.stdout + check.stderr
    run = syncd("sync", "--once", "-c", str(cfg))
    assert run.code == 0, run.stderr
    assert run.copied() == len(SIZES), run.stdout
    assert tree(vol) == second
    assert syncd("check", "-c", str(cfg)).code == 0
    again = syncd("sync", "--once", "-c", str(cfg))
    assert again.code == 0 and again.copied() == 0, again.stdout
