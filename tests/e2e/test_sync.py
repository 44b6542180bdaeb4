"""`syncd sync --once` and `syncd check` as real subprocesses against moto and rclone."""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.exceptions import ClientError

from syncd.keys import syncd_object
from tests.mirrors import MiB, bucket_tree, lease_for, sample_files, syncd, tree, write_config


def _seed_bucket(client, bucket: str, files: dict[str, bytes], prefix: str = "models/") -> None:
    for key, data in files.items():
        client.put_object(Bucket=bucket, Key=f"{prefix}{key}", Body=data)


def _events(stderr: str, name: str) -> list[dict[str, Any]]:
    out = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("event") == name:
                out.append(event)
    return out


def test_sync_pull_mirrors_nested_tree_verified_then_is_idempotent(s3, bucket, tmp_path):
    files = sample_files()
    client = s3.client()
    _seed_bucket(client, bucket, files)
    vol = tmp_path / "vol"
    vol.mkdir()
    cfg = write_config(tmp_path / "c.toml", s3.endpoint_url, bucket, direction="pull", root=vol)

    first = syncd("sync", "--once", "-c", str(cfg))
    assert first.code == 0, first.stderr
    assert tree(vol) == files
    assert first.copied() == len(files)
    assert f"{len(files)} verified" in first.summary
    assert not list((vol / ".syncd" / "tmp").iterdir())

    second = syncd("sync", "--once", "-c", str(cfg))
    assert second.code == 0, second.stderr
    assert second.copied() == 0
    assert _events(second.stderr, "copy_published") == []
    assert syncd("check", "-c", str(cfg)).code == 0


def test_sync_push_uploads_tree_with_own_checksum_then_is_idempotent(s3, bucket, tmp_path):
    files = sample_files()
    vol = tmp_path / "vol"
    for key, data in files.items():
        (vol / key).parent.mkdir(parents=True, exist_ok=True)
        (vol / key).write_bytes(data)
    cfg = write_config(tmp_path / "c.toml", s3.endpoint_url, bucket, direction="push", root=vol,
                       lease=lease_for(s3.name))

    first = syncd("sync", "--once", "-c", str(cfg))
    assert first.code == 0, first.stderr
    client = s3.client()
    assert bucket_tree(client, bucket) == files
    head = client.head_object(Bucket=bucket, Key="models/shards/model-00001.safetensors")
    assert any(k.lower() == "syncd-crc64nvme" for k in head["Metadata"])

    second = syncd("sync", "--once", "-c", str(cfg))
    assert second.code == 0, second.stderr
    assert second.copied() == 0
    assert syncd("check", "-c", str(cfg)).code == 0


def test_sync_push_writes_each_manifest_once_stamped_and_deletes_it_with_its_artifact(
        s3, bucket, tmp_path):
    vol = tmp_path / "vol"
    files = {"ckpt-1/w.bin": b"w1", "ckpt-1/c.json": b"{}", "ckpt-2/w.bin": b"w2",
             "notes.txt": b"n"}
    for key, data in files.items():
        (vol / key).parent.mkdir(parents=True, exist_ok=True)
        (vol / key).write_bytes(data)
    cfg = write_config(tmp_path / "c.toml", s3.endpoint_url, bucket, direction="push", root=vol,
                       lease=lease_for(s3.name),
                       extra='artifacts = ["ckpt-*"]\ndelete = true\nmax_delete_fraction = 1.0')
    client = s3.client()
    manifests = {"ckpt-1/.syncd-manifest.json", "ckpt-2/.syncd-manifest.json"}

    first = syncd("sync", "--once", "-c", str(cfg))
    assert first.code == 0, first.stderr
    assert set(bucket_tree(client, bucket)) == set(files) | manifests
    assert len(_events(first.stderr, "manifest_published")) == 2
    head = client.head_object(Bucket=bucket, Key="models/ckpt-1/.syncd-manifest.json")
    stamped = {k.lower(): v for k, v in head["Metadata"].items()}
    assert int(stamped["syncd-gen"]) >= 1  # the writer's lease generation, as on every object

    again = syncd("sync", "--once", "-c", str(cfg))  # nothing changed: nothing is written
    assert again.code == 0, again.stderr
    assert _events(again.stderr, "manifest_published") == []
    assert _events(again.stderr, "copy_published") == []
    assert client.head_object(Bucket=bucket, Key="models/ckpt-1/.syncd-manifest.json")[
        "ETag"] == head["ETag"]

    for name in ("w.bin", "c.json"):
        (vol / "ckpt-1" / name).unlink()
    (vol / "ckpt-1").rmdir()
    gone = syncd("sync", "--once", "-c", str(cfg))
    assert gone.code == 0, gone.stderr
    assert set(bucket_tree(client, bucket)) == {"ckpt-2/w.bin", "notes.txt",
                                                "ckpt-2/.syncd-manifest.json"}
    assert [e["artifact"] for e in _events(gone.stderr, "manifest_deleted")] == ["ckpt-1"]


def test_sync_pull_propagates_modification_and_deletes_only_when_enabled(s3, bucket, tmp_path):
    client = s3.client()
    _seed_bucket(client, bucket, {"a.txt": b"one", "b.txt": b"two", "c.txt": b"three"})
    vol = tmp_path / "vol"
    vol.mkdir()
    cfg = write_config(tmp_path / "c.toml", s3.endpoint_url, bucket, direction="pull", root=vol)
    assert syncd("sync", "--once", "-c", str(cfg)).code == 0

    client.put_object(Bucket=bucket, Key="models/a.txt", Body=b"one, changed")
    client.delete_object(Bucket=bucket, Key="models/b.txt")
    run = syncd("sync", "--once", "-c", str(cfg))
    assert run.code == 0, run.stderr
    assert (vol / "a.txt").read_bytes() == b"one, changed"
    assert (vol / "b.txt").exists(), "deleted without delete = true"
    assert syncd("check", "-c", str(cfg)).code == 4  # the extra file is drift

    cfg = write_config(tmp_path / "c.toml", s3.endpoint_url, bucket, direction="pull", root=vol,
                       extra="delete = true")
    run = syncd("sync", "--once", "-c", str(cfg))
    assert run.code == 0, run.stderr
    assert tree(vol) == {"a.txt": b"one, changed", "c.txt": b"three"}
    assert syncd("check", "-c", str(cfg)).code == 0


def test_sync_push_propagates_modification_and_delete(s3, bucket, tmp_path):
    vol = tmp_path / "vol"
    (vol / "ckpt").mkdir(parents=True)
    (vol / "ckpt" / "step-1.pt").write_bytes(b"1" * 1000)
    (vol / "ckpt" / "step-2.pt").write_bytes(b"2" * 1000)
    cfg = write_config(tmp_path / "c.toml", s3.endpoint_url, bucket, direction="push", root=vol,
                       extra="delete = true\nmax_delete_fraction = 1.0", lease=lease_for(s3.name))
    assert syncd("sync", "--once", "-c", str(cfg)).code == 0
    (vol / "ckpt" / "step-1.pt").write_bytes(b"one" * 500)
    (vol / "ckpt" / "step-2.pt").unlink()
    run = syncd("sync", "--once", "-c", str(cfg))
    assert run.code == 0, run.stderr
    assert bucket_tree(s3.client(), bucket) == {"ckpt/step-1.pt": b"one" * 500}


def test_sync_max_delete_guard_holds_deletes_but_copies_go_ahead(s3, bucket, tmp_path):
    client = s3.client()
    _seed_bucket(client, bucket, {f"f{i}": b"x" for i in range(4)})
    vol = tmp_path / "vol"
    vol.mkdir()
    cfg = write_config(tmp_path / "c.toml", s3.endpoint_url, bucket, direction="pull", root=vol,
                       extra="delete = true\nmax_delete_count = 2")
    assert syncd("sync", "--once", "-c", str(cfg)).code == 0
    for i in range(3):
        client.delete_object(Bucket=bucket, Key=f"models/f{i}")
    client.put_object(Bucket=bucket, Key="models/new", Body=b"n")

    run = syncd("sync", "--once", "-c", str(cfg))
    assert run.code == 11
    assert "max_delete_count=2" in run.stderr
    assert len(run.stderr.strip().splitlines()[-1].splitlines()) == 1
    assert (vol / "new").read_bytes() == b"n"
    assert sorted(p.name for p in vol.iterdir() if p.name != ".syncd") == [
        "f0", "f1", "f2", "f3", "new"]


def test_sync_dry_run_prints_plan_and_changes_nothing(s3, bucket, tmp_path):
    _seed_bucket(s3.client(), bucket, {"a.txt": b"a"})
    vol = tmp_path / "vol"
    vol.mkdir()
    cfg = write_config(tmp_path / "c.toml", s3.endpoint_url, bucket, direction="pull", root=vol)
    run = syncd("sync", "--once", "--dry-run", "-c", str(cfg))
    assert run.code == 0, run.stderr
    assert "copy    a.txt  (new, 1 bytes)" in run.stdout
    assert tree(vol) == {}


def test_sync_refuses_malicious_keys_and_writes_nothing_outside_root(s3, bucket, tmp_path):
    client = s3.client()
    bad = ["models/../escape.txt", "models/a/../../escape2.txt", "models//abs.txt",
           "models/back\\slash.txt", "models/.syncd/state/m.json", "models/" + "x" * 300,
           "models/./dot.txt", "models/bell\x07.txt"]
    accepted = []
    for key in bad:
        try:
            client.put_object(Bucket=bucket, Key=key, Body=b"evil")
            accepted.append(key)
        except Exception:  # the server itself refused to store it: nothing to test there
            continue
    assert accepted, "the server accepted none of the malicious keys"
    client.put_object(Bucket=bucket, Key="models/good.txt", Body=b"good")
    vol = tmp_path / "root" / "vol"
    vol.mkdir(parents=True)
    cfg = write_config(tmp_path / "c.toml", s3.endpoint_url, bucket, direction="pull", root=vol)

    run = syncd("sync", "--once", "-c", str(cfg))
    assert run.code == 0, run.stderr
    listed = {k["Key"] for k in client.list_objects_v2(Bucket=bucket)["Contents"]}
    refused = _events(run.stderr, "key_refused")
    own = {k for k in listed if syncd_object(k.removeprefix("models/"))}  # its lease objects:
    # A server that stores keys as paths (SeaweedFS) rewrites some into plain keys
    # ("models//abs.txt" -> "models/abs.txt"): those are ordinary data now. Every key listed
    # as it was sent is still malicious and must be refused.
    verbatim = (listed & set(bad)) - own  # (rclone may store a key whose PUT it failed)
    rewritten = listed - verbatim - own - {"models/good.txt"}
    assert len(refused) == len(verbatim) >= 1  # the control character survives everywhere
    assert f"{len(refused)} refused" in run.summary
    assert tree(vol) == {"good.txt": b"good",
                         **{k.removeprefix("models/"): b"evil" for k in rewritten}}
    state = (vol / ".syncd" / "state" / "m.json").read_bytes()
    assert state != b"evil" and b"good.txt" in state
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == ["vol"]
    assert not (tmp_path / "escape.txt").exists()


@pytest.mark.parametrize("override", ["checksum", "metadata"])
def test_sync_pull_never_publishes_bytes_that_fail_the_vouched_checksum(
    s3, bucket, tmp_path, override
):
    client = s3.client()
    wrong = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="  # a SHA-256 of other bytes
    kwargs = ({"ChecksumSHA256": wrong} if override == "checksum"
              else {"Metadata": {"syncd-crc64nvme": "AAAAAAAAAAA="}})
    try:
        client.put_object(Bucket=bucket, Key="models/bad.bin", Body=b"not what was promised",
                          **kwargs)
    except ClientError as exc:  # AWS and SeaweedFS check a PUT's checksum themselves
        assert override == "checksum", exc
        assert exc.response["Error"]["Code"] == "BadDigest", exc
    client.put_object(Bucket=bucket, Key="models/ok.bin", Body=b"fine")
    listed = {o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    head = (client.head_object(Bucket=bucket, Key="models/bad.bin", ChecksumMode="ENABLED")
            if "models/bad.bin" in listed else None)
    vol = tmp_path / "vol"
    vol.mkdir()
    cfg = write_config(tmp_path / "c.toml", s3.endpoint_url, bucket, direction="pull", root=vol)

    run = syncd("sync", "--once", "-c", str(cfg))
    if head is None:  # refused at the PUT: the bucket never held the bad bytes
        assert run.code == 0, run.stderr
        assert tree(vol) == {"ok.bin": b"fine"}
    elif override == "metadata" or "ChecksumSHA256" in head:
        assert run.code == 9, run.stderr
        assert "does not match" in run.stderr
        assert tree(vol) == {"ok.bin": b"fine"}
    else:  # the server dropped the wrong checksum: the MD5 ETag vouches for the real bytes
        assert run.code == 0, run.stderr
        assert tree(vol) == {"bad.bin": b"not what was promised", "ok.bin": b"fine"}
    assert not list((vol / ".syncd" / "tmp").iterdir())


def test_sync_multipart_pull_uses_parallel_ranges_and_verifies(s3, bucket, tmp_path):
    client = s3.client()
    data = bytes(range(256)) * (4 * 4096) * 5  # 20 MiB, patterned so misplaced parts show
    upload = client.create_multipart_upload(Bucket=bucket, Key="models/big.bin")
    parts = []
    for i, start in enumerate(range(0, len(data), 5 * MiB)):
        r = client.upload_part(Bucket=bucket, Key="models/big.bin", UploadId=upload["UploadId"],
                               PartNumber=i + 1, Body=data[start:start + 5 * MiB])
        parts.append({"PartNumber": i + 1, "ETag": r["ETag"]})
    client.complete_multipart_upload(Bucket=bucket, Key="models/big.bin",
                                     UploadId=upload["UploadId"],
                                     MultipartUpload={"Parts": parts})
    vol = tmp_path / "vol"
    vol.mkdir()
    cfg = write_config(tmp_path / "c.toml", s3.endpoint_url, bucket, direction="pull", root=vol)
    run = syncd("sync", "--once", "-c", str(cfg))
    assert run.code == 0, run.stderr
    assert (vol / "big.bin").read_bytes() == data


def test_sync_holds_deletes_when_a_copy_failed(s3, bucket, tmp_path):
    """A rename at the source is a copy plus a delete: if the copy fails, keep the old name."""
    client = s3.client()
    client.put_object(Bucket=bucket, Key="models/old-name.bin", Body=b"weights")
    vol = tmp_path / "vol"
    vol.mkdir()
    cfg = write_config(tmp_path / "c.toml", s3.endpoint_url, bucket, direction="pull", root=vol,
                       extra="delete = true\nmax_delete_fraction = 1.0")
    assert syncd("sync", "--once", "-c", str(cfg)).code == 0
    client.delete_object(Bucket=bucket, Key="models/old-name.bin")
    client.put_object(Bucket=bucket, Key="models/new-name.bin", Body=b"weights",
                      Metadata={"syncd-crc64nvme": "AAAAAAAAAAA="})

    run = syncd("sync", "--once", "-c", str(cfg))
    assert run.code == 9, run.stderr
    assert _events(run.stderr, "deletes_held")
    assert tree(vol) == {"old-name.bin": b"weights"}


def test_dry_run_prints_what_the_run_then_does_for_an_artifact_without_its_marker(
        s3, bucket, tmp_path):
    """Issue 18: the dry run printed `copy ckpt-1/weights.bin (new)` for an artifact whose
    marker was missing, and the run then uploaded only the loose file."""
    vol = tmp_path / "vol"
    (vol / "ckpt-1").mkdir(parents=True)
    (vol / "ckpt-1" / "weights.bin").write_bytes(b"w" * 1000)
    (vol / "loose.txt").write_bytes(b"l")
    cfg = write_config(tmp_path / "c.toml", s3.endpoint_url, bucket, direction="push",
                       root=vol, lease=lease_for(s3.name),
                       extra='artifacts = ["ckpt-*"]\nmarker = "_COMPLETE"')

    dry = syncd("sync", "--once", "--dry-run", "-c", str(cfg))
    assert dry.code == 0, dry.stderr
    assert "copy    loose.txt  (new, 1 bytes)" in dry.stdout
    assert "copy    ckpt-1/weights.bin" not in dry.stdout
    assert "keep    ckpt-1/weights.bin  (artifact_incomplete)" in dry.stdout
    assert "artifact ckpt-1: hold (waiting for its marker file _COMPLETE)" in dry.stdout
    run = syncd("sync", "--once", "-c", str(cfg))
    assert run.code == 0, run.stderr
    assert bucket_tree(s3.client(), bucket) == {"loose.txt": b"l"}

    (vol / "ckpt-1" / "_COMPLETE").write_bytes(b"")
    dry = syncd("sync", "--once", "--dry-run", "-c", str(cfg))
    assert "copy    ckpt-1/weights.bin  (new, 1000 bytes)" in dry.stdout
    assert "artifact ckpt-1: publish" in dry.stdout
    assert syncd("sync", "--once", "-c", str(cfg)).code == 0
    assert set(bucket_tree(s3.client(), bucket)) == {
        "loose.txt", "ckpt-1/weights.bin", "ckpt-1/_COMPLETE", "ckpt-1/.syncd-manifest.json"}
