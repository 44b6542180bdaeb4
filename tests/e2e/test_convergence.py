"""Passes that converge (issue 18, item 2): a path that changes between file and directory in
the bucket is replaced on the volume when deletes are allowed, refused with its reason (and
counted, exit 0) when not; a key too long for the volume's real absolute path is refused on
its own. Real `syncd sync --once` and `syncd check` subprocesses, on moto, rclone and SeaweedFS.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.mirrors import Run, syncd, tree, write_config


def _events(run: Run, name: str) -> list[dict[str, Any]]:
    return [e for line in run.stderr.splitlines() if line.startswith("{")
            if (e := json.loads(line)).get("event") == name]


def _pull(tmp_path: Path, s3: Any, bucket: str, *, delete: bool) -> tuple[Path, Path]:
    vol = tmp_path / "vol"
    vol.mkdir()
    cfg = write_config(tmp_path / "c.toml", s3.endpoint_url, bucket, direction="pull",
                       root=vol, extra=f"delete = {'true' if delete else 'false'}")
    return vol, cfg


def _replace(client: Any, bucket: str, gone: list[str], new: dict[str, bytes]) -> None:
    for key in gone:
        client.delete_object(Bucket=bucket, Key=f"models/{key}")
    for key, body in new.items():
        client.put_object(Bucket=bucket, Key=f"models/{key}", Body=body)


def test_file_and_directory_swap_places_and_every_pass_converges(s3, bucket, tmp_path):
    client = s3.client()
    _replace(client, bucket, [], {"m/a/b.txt": b"inside", "keep.txt": b"k"})
    vol, cfg = _pull(tmp_path, s3, bucket, delete=True)
    assert syncd("sync", "--once", "-c", str(cfg)).code == 0

    _replace(client, bucket, ["m/a/b.txt"], {"m/a": b"now a file"})  # directory -> file
    run = syncd("sync", "--once", "-c", str(cfg))
    assert run.code == 0, run.stderr
    assert tree(vol) == {"m/a": b"now a file", "keep.txt": b"k"}
    assert [e["key"] for e in _events(run, "delete_done")] == ["m/a/b.txt"]
    assert syncd("check", "-c", str(cfg)).code == 0

    _replace(client, bucket, ["m/a"], {"m/a/c/d.txt": b"a directory again"})  # and back
    run = syncd("sync", "--once", "-c", str(cfg))
    assert run.code == 0, run.stderr
    assert tree(vol) == {"m/a/c/d.txt": b"a directory again", "keep.txt": b"k"}
    assert syncd("check", "-c", str(cfg)).code == 0
    again = syncd("sync", "--once", "-c", str(cfg))
    assert again.code == 0 and again.copied() == 0, again.stderr


def test_a_path_change_without_deletes_is_refused_with_its_reason_not_failed(
        s3, bucket, tmp_path):
    client = s3.client()
    _replace(client, bucket, [], {"m/a/b.txt": b"inside", "other.txt": b"o"})
    vol, cfg = _pull(tmp_path, s3, bucket, delete=False)
    assert syncd("sync", "--once", "-c", str(cfg)).code == 0
    _replace(client, bucket, ["m/a/b.txt"], {"m/a": b"a file now", "new.txt": b"n"})

    for _ in range(2):  # the same answer every pass, never a failure
        run = syncd("sync", "--once", "-c", str(cfg))
        assert run.code == 0, run.stderr
        refused = _events(run, "key_refused")
        assert [(e["key"], e["reason"]) for e in refused] == [("m/a", "path_conflict")]
        assert "m/a/b.txt" in refused[0]["detail"]
        assert "delete_disabled" in refused[0]["detail"]
        assert "1 refused, 0 failed" in run.summary
    assert tree(vol) == {"m/a/b.txt": b"inside", "other.txt": b"o", "new.txt": b"n"}

    check = syncd("check", "-c", str(cfg))
    assert check.code == 4
    assert "refused  'm/a' (" in check.stdout
    assert "extra    m/a/b.txt" in check.stdout


def test_a_key_too_long_for_the_volume_path_is_refused_alone(s3, bucket, tmp_path):
    deep = tmp_path
    while len(str(deep)) < 3800:  # a volume mounted deep: little of PATH_MAX is left for keys
        deep = deep / ("d" * 200)
    deep.mkdir(parents=True)
    long_key = "/".join(["k" * 100] * 3)  # 302 bytes: fine alone, too long under this root
    client = s3.client()
    _replace(client, bucket, [], {long_key: b"far", "short.txt": b"s"})
    cfg = write_config(tmp_path / "c.toml", s3.endpoint_url, bucket, direction="pull",
                       root=deep)

    for _ in range(2):
        run = syncd("sync", "--once", "-c", str(cfg))
        assert run.code == 0, run.stderr
        refused = _events(run, "key_refused")
        assert [(e["key"], e["reason"]) for e in refused] == [(long_key, "path_too_long")]
    assert (deep / "short.txt").read_bytes() == b"s"
    check = syncd("check", "-c", str(cfg))
    assert check.code == 4, check.stderr
    assert f"refused  {long_key!r}" in check.stdout
    assert "Traceback" not in check.stderr
