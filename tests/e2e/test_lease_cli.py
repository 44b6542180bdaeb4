"""Operator commands and bad input around leases: `lease status`, `lease break`, a held lease
refusing a one-shot sync, corrupt records, unwritable lease locations, a server that ignores
conditional writes, and a bucket policy that forbids the lease object."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import boto3
import pytest

from syncd.lease.record import LeaseRecord, encode, me
from tests.e2e.test_bad_input import _one_error_line, _read_only
from tests.fuse_mounts import SharedVolume
from tests.mirrors import SYNCD, env, syncd, tree, write_config
from tests.servers import HOST, REGION, S3Server, find_free_port, venv_binary

SLOW_TTL = "[lease]\nttl_s = 30.0\nrenew_interval_s = 1.0\nrenew_deadline_s = 20.0\n"


def _status(cfg: Path) -> dict[str, object]:
    run = syncd("lease", "status", "--json", "-c", str(cfg))
    assert run.code == 0, run.stderr
    return dict(json.loads(run.stdout.splitlines()[0]))


def _wait_held(cfg: Path) -> None:
    deadline = time.monotonic() + 30
    while _status(cfg)["state"] != "held":
        assert time.monotonic() < deadline, "the daemon never took the lease"
        time.sleep(0.2)


@pytest.fixture
def pull(moto_s3: S3Server, tmp_path: Path) -> tuple[Path, Path]:
    bucket = f"cli-{os.urandom(6).hex()}"
    client = moto_s3.client()
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="models/a.txt", Body=b"a")
    vol = tmp_path / "vol"
    vol.mkdir()
    cfg = write_config(tmp_path / "c.toml", moto_s3.endpoint_url, bucket, direction="pull",
                       root=vol, top=SLOW_TTL)
    return cfg, vol


def test_status_shows_free_held_and_released_and_sync_refuses_a_held_lease(
    pull: tuple[Path, Path],
) -> None:
    cfg, vol = pull
    assert _status(cfg)["state"] == "free"
    daemon = subprocess.Popen([SYNCD, "run", "-c", str(cfg)],
                              env=env(SYNCD_LEASE__INSTANCE_ID="holder-1"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_held(cfg)
        status = _status(cfg)
        assert status["holder"] == {"id": "holder-1", "host": socket.gethostname(),
                                    "pid": daemon.pid}
        assert status["gen"] == 1 and status["backend"] == "volume"
        assert status["target"] == str(vol) and status["mirrors"] == ["m"]
        assert str(status["arbiter"]).startswith("the filesystem (")  # a local disk's link()
        assert 0 < float(status["expires_in_s"]) <= 30  # type: ignore[arg-type]
        assert status["takeover_after_s"] == 45 and status["ttl_s"] == 30
        human = syncd("lease", "status", "-c", str(cfg)).stdout
        assert f"held by holder-1 (host {socket.gethostname()}, pid {daemon.pid}), " \
               "generation 1" in human
        assert "seen no renewal for 45s" in human

        run = syncd("sync", "--once", "-c", str(cfg))
        _one_error_line(run, 12, "held by holder-1", "generation 1", "taken over in")
    finally:
        daemon.terminate()
        assert daemon.wait(15) == 0
    status = _status(cfg)
    assert status["state"] == "released" and status["gen"] == 1
    run = syncd("sync", "--once", "-c", str(cfg))  # a released lease is free at once
    assert run.code == 0, run.stderr
    assert _status(cfg)["gen"] == 2
    assert tree(vol) == {"a.txt": b"a"}


def test_break_fences_a_live_holder_out_and_frees_the_lease(pull: tuple[Path, Path]) -> None:
    cfg, vol = pull
    daemon = subprocess.Popen([SYNCD, "run", "-c", str(cfg)],
                              env=env(SYNCD_LEASE__INSTANCE_ID="stuck"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_held(cfg)
        daemon.send_signal(signal.SIGSTOP)  # the holder hangs
        refused = syncd("lease", "break", "m", "-c", str(cfg))
        assert refused.code == 2 and "--yes" in refused.stderr
        broke = syncd("lease", "break", str(vol), "--yes", "-c", str(cfg))
        assert broke.code == 0, broke.stderr
        assert "broke generation 1 held by stuck" in broke.stdout
        assert "lease_broken" in broke.stderr
        assert _status(cfg)["state"] == "released" and _status(cfg)["gen"] == 2
        run = syncd("sync", "--once", "-c", str(cfg))  # no need to wait for the TTL
        assert run.code == 0, run.stderr
        assert _status(cfg)["gen"] == 3
        daemon.send_signal(signal.SIGCONT)
    finally:
        daemon.send_signal(signal.SIGCONT)
        time.sleep(1.5)
        daemon.terminate()
        _, err = daemon.communicate(timeout=15)
    assert b"lease_lost" in err  # the old holder noticed it was fenced out


@pytest.mark.parametrize("damage", [b"", b'{"gen": 1, "tru', b"\x00\xff garbage",
                                    b"EDITED"])
def test_a_corrupt_volume_lease_is_held_never_free(pull: tuple[Path, Path],
                                                   damage: bytes) -> None:
    cfg, vol = pull
    assert syncd("sync", "--once", "-c", str(cfg)).code == 0
    record = vol / ".syncd/leases/gen-0000000001.json"
    if damage == b"EDITED":  # a hand edit: valid JSON, but the checksum no longer matches
        data = json.loads(record.read_bytes())
        data["released"] = False
        data["holder"]["id"] = "someone-else"
        damage = json.dumps(data).encode()
    (vol / ".syncd/leases/gen-0000000001.hb").unlink()
    record.chmod(0o644)
    record.write_bytes(damage)
    status = _status(cfg)
    assert status["state"] == "corrupt" and "gen-0000000001.json" in str(status["detail"])
    run = syncd("sync", "--once", "-c", str(cfg))
    _one_error_line(run, 12, "unreadable", "treated as held")


def _push(server: S3Server, tmp_path: Path, lease: str = "auto") -> tuple[Path, str, Path]:
    """A push mirror of one checkpoint file into a fresh bucket: (config, bucket, volume)."""
    bucket = f"cli-{os.urandom(6).hex()}"
    server.client().create_bucket(Bucket=bucket)
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "ckpt.pt").write_bytes(b"1")
    cfg = write_config(tmp_path / "c.toml", server.endpoint_url, bucket, direction="push",
                       root=vol, lease=lease)
    return cfg, bucket, vol


def test_a_read_only_volume_cannot_hold_a_volume_lease(moto_s3: S3Server,
                                                       tmp_path: Path) -> None:
    cfg, bucket, vol = _push(moto_s3, tmp_path, lease="volume")
    with _read_only(vol):
        run = syncd("sync", "--once", "-c", str(cfg))
    _one_error_line(run, 6, f"{vol}/.syncd/volume.json", "Read-only file system")
    assert "Contents" not in moto_s3.client().list_objects_v2(Bucket=bucket)


@pytest.mark.parametrize("obstacle", ["file", "symlink"])
def test_a_lease_directory_that_cannot_be_created_is_one_error(
    pull: tuple[Path, Path], tmp_path: Path, obstacle: str
) -> None:
    cfg, vol = pull
    (vol / ".syncd").mkdir()
    if obstacle == "file":
        (vol / ".syncd/leases").write_bytes(b"not a directory")
    else:
        (tmp_path / "elsewhere").mkdir()
        (vol / ".syncd/leases").symlink_to(tmp_path / "elsewhere")
    run = syncd("sync", "--once", "-c", str(cfg))
    _one_error_line(run, 12, f"{vol}/.syncd/leases", "not a directory")
    assert tree(vol) == {}
    if obstacle == "symlink":
        assert list((tmp_path / "elsewhere").iterdir()) == []  # nothing written through it


def test_s3_lease_on_a_server_without_conditional_writes_is_refused(
    rclone_s3: S3Server, tmp_path: Path
) -> None:
    cfg, bucket, _ = _push(rclone_s3, tmp_path)  # lease "auto": the bucket prefix, on rclone
    for command in (["sync", "--once"], ["run"]):
        run = syncd(*command, "-c", str(cfg), timeout=60)
        _one_error_line(run, 12, rclone_s3.endpoint_url, "ignores S3 conditional writes",
                        'lease = "volume"')
    assert "Contents" not in rclone_s3.client().list_objects_v2(Bucket=bucket)


# --- a bucket policy that forbids the lease object: moto with IAM enforcement ----------------

@pytest.fixture
def moto_with_iam(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A moto server that enforces IAM after its first three (setup) requests, and the keys
    of a user allowed everything in S3 except writing under `models/.syncd/`."""
    port = find_free_port()
    log = (tmp_path / "moto-iam.log").open("wb")
    proc = subprocess.Popen([str(venv_binary("moto_server")), "-H", HOST, "-p", str(port)],
                            env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"},
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.2):
                break
            assert time.monotonic() < deadline, "moto did not start"
            time.sleep(0.1)
        iam = boto3.client("iam", endpoint_url=url, region_name=REGION,
                           aws_access_key_id="AKIAIOSFODNN7EXAMPLE",
                           aws_secret_access_key="s" * 40)
        iam.create_user(UserName="syncd")
        key = iam.create_access_key(UserName="syncd")["AccessKey"]
        policy = {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
            {"Effect": "Deny", "Action": "s3:PutObject",
             "Resource": "arn:aws:s3:::locked-bucket/models/.syncd/*"}]}
        iam.put_user_policy(UserName="syncd", PolicyName="no-lease",
                            PolicyDocument=json.dumps(policy))
        yield url, {"AWS_ACCESS_KEY_ID": key["AccessKeyId"],
                    "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
    finally:
        proc.kill()
        proc.wait(10)
        log.close()


def test_a_bucket_without_permission_for_the_lease_object_is_one_error(
    moto_with_iam: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    url, keys = moto_with_iam
    s3 = boto3.client("s3", endpoint_url=url, region_name=REGION,
                      aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"])
    s3.create_bucket(Bucket="locked-bucket")
    s3.put_object(Bucket="locked-bucket", Key="models/data-is-writable", Body=b"yes")
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "ckpt.pt").write_bytes(b"1")
    cfg = write_config(tmp_path / "c.toml", url, "locked-bucket", direction="push", root=vol)
    run = syncd("sync", "--once", "-c", str(cfg), environ=env(**keys))
    _one_error_line(run, 12, "cannot write the lease object",
                    "s3://locked-bucket/models/.syncd/lease.json", "access denied")
    keys_left = {o["Key"] for o in s3.list_objects_v2(Bucket="locked-bucket")["Contents"]}
    assert keys_left == {"models/data-is-writable"}  # nothing pushed without the lease


def test_an_unwritable_journal_is_one_config_error(pull: tuple[Path, Path],
                                                    tmp_path: Path) -> None:
    cfg, vol = pull
    run = syncd("sync", "--once", "-c", str(cfg),
                environ=env(SYNCD_LEASE__JOURNAL=str(tmp_path / "no-such-dir" / "j.jsonl")))
    _one_error_line(run, 3, "lease.journal", "No such file or directory")
    assert tree(vol) == {}


def _plant(vol: Path, renewed_ago: float) -> None:
    """A valid volume lease record of generation 1, last renewed `renewed_ago` s ago by the
    holder's wall clock (negative: its clock is ahead of ours)."""
    now = time.time()
    holder = replace(me("quiet"), id="quiet", host="elsewhere", pid=4242, boot="")
    record = LeaseRecord(target=str(vol), gen=1, holder=holder, ttl_s=30.0,
                         acquired_wall=now - max(renewed_ago, 0) - 60,
                         renewed_wall=now - renewed_ago, beat=7)
    leases = vol / ".syncd/leases"
    leases.mkdir(parents=True)
    (leases / "gen-0000000001.json").write_bytes(encode(record))


def _human(cfg: Path) -> str:
    run = syncd("lease", "status", "-c", str(cfg))
    assert run.code == 0, run.stderr
    return run.stdout


def test_status_shows_a_holder_that_stopped_renewing_as_silent_never_a_negative_expiry(
    pull: tuple[Path, Path],
) -> None:
    cfg, vol = pull
    _plant(vol, renewed_ago=100)
    status = _status(cfg)
    assert status["state"] == "silent" and status["gen"] == 1
    assert status["renewed_age_s"] == pytest.approx(100, abs=5)
    assert "expires_in_s" not in status and status["beat"] == 7
    assert status["takeover_after_s"] == 45  # max(ttl 30, ours 30) + the default margin 15
    assert all(v >= 0 for v in status.values() if isinstance(v, int | float))
    human = _human(cfg)
    assert re.search(r"silent: not renewed for 10\ds by its wall clock \(ttl 30s\)", human), \
        human
    assert "last held by quiet (host elsewhere, pid 4242), generation 1, heartbeat 7" in human
    assert "seen no renewal for 45s" in human
    assert "expires" not in human and "-" not in human.split("]", 1)[1]
    run = syncd("sync", "--once", "-c", str(cfg))  # silent is not free: a standby must watch
    _one_error_line(run, 12, "held by quiet", "taken over in 45s")


def test_status_of_a_holder_whose_wall_clock_is_ahead_shows_no_negative_age(
    pull: tuple[Path, Path],
) -> None:
    cfg, vol = pull
    _plant(vol, renewed_ago=-120)
    status = _status(cfg)
    assert status["state"] == "held"
    assert status["renewed_age_s"] == 0 and status["expires_in_s"] == 30
    assert status["clock_ahead_s"] == pytest.approx(120, abs=5)
    human = _human(cfg)
    assert "renewed 0s ago, expires in 30s unless renewed" in human, human
    assert re.search(r"its wall clock is 1[12]\ds ahead of ours", human), human
    assert "-" not in human.split("]", 1)[1]


def test_status_and_break_of_a_network_volume_lease_kept_in_s3_from_either_host(
        shared_volume: SharedVolume, seaweedfs_s3: S3Server, tmp_path: Path) -> None:
    bucket = f"cli-{os.urandom(6).hex()}"
    client = seaweedfs_s3.client()
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="models/a.txt", Body=b"a")
    cfg_a, cfg_b = (write_config(tmp_path / f"{host}.toml", seaweedfs_s3.endpoint_url, bucket,
                                 direction="pull", root=root, top=SLOW_TTL)
                    for host, root in (("a", shared_volume.a), ("b", shared_volume.b)))
    assert _status(cfg_b)["state"] == "free"
    assert not (shared_volume.b / ".syncd").exists()  # looking wrote nothing
    run = syncd("sync", "--once", "-c", str(cfg_a))
    assert run.code == 0, run.stderr
    status = _status(cfg_b)  # the other host finds the same lease, through the volume's id
    assert status["state"] == "released" and status["gen"] == 1
    assert status["target"] == str(shared_volume.b)
    assert str(status["arbiter"]).startswith(f"s3://{bucket} at {seaweedfs_s3.endpoint_url}")
    assert "fuse" in str(status["arbiter"])
    human = syncd("lease", "status", "-c", str(cfg_b)).stdout
    assert f"[volume lease via s3://{bucket}" in human
    volume_id = json.loads((shared_volume.b / ".syncd/volume.json").read_bytes())["id"]
    listed = client.list_objects_v2(Bucket=bucket, Prefix=f".syncd/volumes/{volume_id}/")
    assert {o["Key"].rsplit("/", 1)[1] for o in listed["Contents"]} == {"lease.json",
                                                                       "commit.json"}
    broke = syncd("lease", "break", str(shared_volume.b), "--yes", "-c", str(cfg_b))
    assert broke.code == 0, broke.stderr
    assert _status(cfg_a)["gen"] == 2
    assert tree(shared_volume.b) == {"a.txt": b"a"}
