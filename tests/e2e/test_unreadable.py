"""A directory on the volume that syncd cannot read (issue 18, item 3) stops nothing: the rest
of the volume is pushed or pulled, nothing under that directory is deleted, and the pass is
not "cannot write <root>" (exit 6); how each such path is reported is the planner's. syncd
runs as root without the capabilities that bypass file modes (as in
tests/e2e/test_reports.py), as it would as any other user; the real binary, against moto,
rclone and SeaweedFS."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mirrors import SYNCD, Run, bucket_tree, env, lease_for, tree, write_config

LOCKED = {"nosearch": 0o600, "closed": 0o000}


def _unprivileged(*args: str) -> Run:
    setpriv = shutil.which("setpriv")
    assert setpriv is not None
    done = subprocess.run(
        [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--", SYNCD, *args],
        capture_output=True, text=True, timeout=180, env=env(), check=False)
    return Run(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def vol(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "vol"
    for rel, data in [("ok.txt", b"ok"), ("sub/deep.bin", b"deep"),
                      ("nosearch/hidden.bin", b"x"), ("closed/hidden.bin", b"y")]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    for rel, mode in LOCKED.items():
        (root / rel).chmod(mode)
    yield root
    for rel in LOCKED:
        (root / rel).chmod(0o755)


def _no_root_failure(run: Run, root: Path) -> None:
    assert run.code not in (1, 6), (run.code, run.stdout, run.stderr)
    assert "Traceback" not in run.stderr
    assert f"cannot write {root}:" not in run.stderr, run.stderr
    assert f"cannot read {root}:" not in run.stderr, run.stderr


def _reported(run: Run, paths: set[str]) -> None:
    """Each path the volume could not read is named once, with its reason."""
    events = [json.loads(line) for line in run.stderr.splitlines() if line.startswith("{")]
    named = [e["path"] for e in events if e.get("event") == "path_unreadable"]
    assert sorted(named) == sorted(paths), run.stderr
    assert all(e.get("reason") for e in events if e.get("event") == "path_unreadable")


def test_push_goes_on_past_unreadable_directories_and_holds_their_deletes(
        s3, bucket, tmp_path, vol):
    client = s3.client()
    for key in ("nosearch/hidden.bin", "closed/hidden.bin", "gone.txt"):
        client.put_object(Bucket=bucket, Key=f"models/{key}", Body=b"in the bucket")
    cfg = write_config(tmp_path / "c.toml", s3.endpoint_url, bucket, direction="push",
                       root=vol, lease=lease_for(s3.name), extra="delete = true")

    run = _unprivileged("sync", "--once", "-c", str(cfg))

    _no_root_failure(run, vol)
    assert run.code == 0, run.stderr
    _reported(run, {"nosearch", "closed"})
    pushed = bucket_tree(client, bucket)  # gone.txt is deleted: only locked paths hold deletes
    assert pushed == {
        "ok.txt": b"ok", "sub/deep.bin": b"deep",  # the rest is pushed
        "nosearch/hidden.bin": b"in the bucket",  # unknown on the volume: never deleted
        "closed/hidden.bin": b"in the bucket",
    }


def test_pull_goes_on_past_unreadable_directories_on_the_volume(s3, bucket, tmp_path, vol):
    client = s3.client()
    for key, body in [("ok.txt", b"new ok"), ("fresh/new.bin", b"new"),
                      ("closed/hidden.bin", b"from the bucket")]:
        client.put_object(Bucket=bucket, Key=f"models/{key}", Body=body)
    cfg = write_config(tmp_path / "c.toml", s3.endpoint_url, bucket, direction="pull",
                       root=vol, lease="volume", extra="delete = true")

    run = _unprivileged("sync", "--once", "-c", str(cfg))

    _no_root_failure(run, vol)
    assert run.code == 0, run.stderr
    _reported(run, {"nosearch", "closed"})
    for rel in LOCKED:
        (vol / rel).chmod(0o755)
    pulled = tree(vol)  # sub/deep.bin is deleted: only locked paths hold deletes
    assert pulled == {
        "ok.txt": b"new ok", "fresh/new.bin": b"new",  # the rest is pulled
        "nosearch/hidden.bin": b"x", "closed/hidden.bin": b"y",  # never touched
    }
    assert list((vol / ".syncd" / "tmp").iterdir()) == []
