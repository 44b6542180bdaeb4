"""A volume too small for one object (issue 18, item 2): that object fails alone, before it
is downloaded, and everything that fits still arrives. The volume is a real small tmpfs
(mounting needs root, as the tests run); the real binary pulls from moto, rclone and
SeaweedFS."""

from __future__ import annotations

import json
import os
from typing import Any

from tests.lease.full_disk import small_tmpfs
from tests.mirrors import MiB, Run, syncd, tree, write_config


def _events(run: Run, name: str) -> list[dict[str, Any]]:
    return [e for line in run.stderr.splitlines() if line.startswith("{")
            if (e := json.loads(line)).get("event") == name]


def test_pull_object_larger_than_the_volume_fails_alone_and_the_rest_arrives(
        s3, bucket, tmp_path):
    client = s3.client()
    small = {f"small-{i}.bin": os.urandom(200_000 + i) for i in range(5)}
    small["sub/config.json"] = b'{"layers": 2}'
    for key, body in small.items():
        client.put_object(Bucket=bucket, Key=f"models/{key}", Body=body)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(12 * MiB))
    client.upload_file(str(big), bucket, "models/shards/big.bin")  # multipart, as users do

    with small_tmpfs(tmp_path / "vol", "8m") as vol:
        cfg = write_config(tmp_path / "c.toml", s3.endpoint_url, bucket, direction="pull",
                           root=vol, lease="volume")
        run = syncd("sync", "--once", "-c", str(cfg))

        assert run.code == 10, (run.code, run.stdout, run.stderr)
        assert "Traceback" not in run.stderr
        errors = [ln for ln in run.stderr.splitlines() if ln.startswith("syncd: error:")]
        assert len(errors) == 1 and "shards/big.bin" in errors[0], run.stderr
        failed = _events(run, "copy_failed")
        assert [(e["key"], e["kind"]) for e in failed] == [("shards/big.bin", "TooLarge")]
        assert "do not fit" in failed[0]["error"]
        assert tree(vol) == small
        assert list((vol / ".syncd" / "tmp").iterdir()) == []
