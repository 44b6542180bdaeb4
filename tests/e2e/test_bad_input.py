"""Bad input gets one clear error line and an exit code, never a traceback, never damage."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from tests.fuse_mounts import SharedVolume
from tests.lease.full_disk import fill
from tests.mirrors import SYNCD, MiB, Run, env, syncd, tree, write_config
from tests.servers import (
    S3Server,
    find_free_port,
    make_s3_client,
    new_moto_server,
    s3_client_config,
)


def _one_error_line(run: Run, code: int, *needles: str) -> None:
    assert run.code == code, (run.code, run.stderr)
    assert "Traceback" not in run.stderr
    errors = [ln for ln in run.stderr.splitlines() if ln.startswith("syncd: error:")]
    assert len(errors) == 1, run.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


@contextlib.contextmanager
def _mounted(args: list[str], target: Path) -> Iterator[Path]:
    subprocess.run(["mount", *args, str(target)], check=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


def test_sync_unreachable_endpoint_is_one_line_exit_5(tmp_path):
    vol = tmp_path / "vol"
    vol.mkdir()
    url = f"http://127.0.0.1:{find_free_port()}"
    cfg = write_config(tmp_path / "c.toml", url, "some-bucket", direction="pull", root=vol)
    _one_error_line(syncd("sync", "--once", "-c", str(cfg)), 5, "cannot reach", url)
    assert tree(vol) == {}


def test_sync_wrong_credentials_is_one_line_exit_6(rclone_s3, tmp_path):
    """rclone checks signatures (moto accepts any key, so it cannot show this)."""
    bucket = "creds-check"
    rclone_s3.client().create_bucket(Bucket=bucket)
    vol = tmp_path / "vol"
    vol.mkdir()
    cfg = write_config(tmp_path / "c.toml", rclone_s3.endpoint_url, bucket, direction="pull",
                       root=vol)
    run = syncd("sync", "--once", "-c", str(cfg),
                environ=env(AWS_SECRET_ACCESS_KEY="wrong-secret-wrong-secret-wrong"))
    _one_error_line(run, 6, "access denied")
    assert "wrong-secret" not in run.stderr + run.stdout


def test_sync_missing_bucket_is_one_line_exit_7(s3, tmp_path):
    vol = tmp_path / "vol"
    vol.mkdir()
    cfg = write_config(tmp_path / "c.toml", s3.endpoint_url, "no-such-bucket-here",
                       direction="pull", root=vol)
    _one_error_line(syncd("sync", "--once", "-c", str(cfg)), 7, "no-such-bucket-here")


def test_sync_missing_volume_root_is_one_line_exit_7(s3, bucket, tmp_path):
    cfg = write_config(tmp_path / "c.toml", s3.endpoint_url, bucket, direction="pull",
                       root=tmp_path / "not-mounted")
    _one_error_line(syncd("sync", "--once", "-c", str(cfg)), 7, "not-mounted", "mounted")
    assert not (tmp_path / "not-mounted").exists()


def test_sync_read_only_volume_is_one_line_exit_6(s3, bucket, tmp_path):
    s3.client().put_object(Bucket=bucket, Key="models/a.txt", Body=b"a")
    vol = tmp_path / "vol"
    vol.mkdir()
    with _read_only(vol):
        cfg = write_config(tmp_path / "c.toml", s3.endpoint_url, bucket, direction="pull",
                           root=vol)
        _one_error_line(syncd("sync", "--once", "-c", str(cfg)), 6, str(vol))
    assert tree(vol) == {}


@contextlib.contextmanager
def _read_only(path: Path) -> Iterator[None]:
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(path)], check=True)
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_sync_full_disk_is_one_line_exit_8_and_leaves_nothing(s3, bucket, tmp_path):
    """A volume another writer filled: nothing fits, so the pass stops with exit 8 (one object
    larger than the free space alone is exit 10, tests/e2e/test_volume_limits.py)."""
    client = s3.client()
    client.put_object(Bucket=bucket, Key="models/small.txt", Body=b"fits")
    client.put_object(Bucket=bucket, Key="models/big.bin", Body=os.urandom(2 * MiB))
    vol = tmp_path / "vol"
    vol.mkdir()
    with _mounted(["-t", "tmpfs", "-o", "size=4m", "tmpfs"], vol):
        (vol / ".syncd" / "tmp").mkdir(parents=True)
        fill(vol)
        cfg = write_config(tmp_path / "c.toml", s3.endpoint_url, bucket, direction="pull",
                           root=vol, transfer="concurrency = 1")
        run = syncd("sync", "--once", "-c", str(cfg))
        _one_error_line(run, 8, "full")
        assert not {"small.txt", "big.bin"} & set(tree(vol))
        assert not list((vol / ".syncd" / "tmp").iterdir())


def test_sync_killed_mid_download_leaves_no_partial_file_and_recovers(
    s3, bucket, tmp_path, throttle_proxy
):
    data = os.urandom(8 * MiB)
    s3.client().put_object(Bucket=bucket, Key="models/big.bin", Body=data)
    vol = tmp_path / "vol"
    vol.mkdir()
    proxy = throttle_proxy(s3.port, rate_bytes_per_s=1 * MiB)
    cfg = write_config(tmp_path / "slow.toml", proxy.endpoint_url, bucket, direction="pull",
                       root=vol)
    proc = subprocess.Popen([SYNCD, "sync", "--once", "-c", str(cfg)], env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        tmp = vol / ".syncd" / "tmp"
        while not (tmp.is_dir() and any(tmp.iterdir())):
            assert proc.poll() is None, "finished before it could be interrupted"
            assert time.monotonic() < deadline, "no staging file appeared"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (vol / "big.bin").exists()
    assert tree(vol) == {}

    cfg = write_config(tmp_path / "c.toml", s3.endpoint_url, bucket, direction="pull", root=vol)
    run = syncd("sync", "--once", "-c", str(cfg))
    assert run.code == 0, run.stderr
    assert tree(vol) == {"big.bin": data}
    assert not list((vol / ".syncd" / "tmp").iterdir())


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('[[mirrors]]\nname = "m"\nbucket = "b_b"\ndirection = "pull"\nvolumes = {a = "/v"}',
         "mirrors[0].bucket"),
        ('[[mirrors]]\nname = "m"\nbucket = "bkt"\ndirection = "up"\nvolumes = {a = "/v"}',
         "mirrors[0].direction"),
        ('[[mirrors]]\nname = "m"\nbucket = "bkt"\ndirection = "pull"\nvolumes = {a = "v"}',
         "mirrors[0].volumes"),
        ('[transfer]\nconcurrency = 0\n[[mirrors]]\nname = "m"\nbucket = "bkt"\n'
         'direction = "pull"\nvolumes = {a = "/v"}', "transfer.concurrency"),
        ("this is = = not toml", "not valid TOML"),
    ],
)
def test_cli_invalid_config_names_file_and_field_exit_3(tmp_path, body, field):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(body)
    for args in (["sync", "--once", "-c", str(cfg)], ["config", "validate", str(cfg)],
                 ["check", "-c", str(cfg)]):
        _one_error_line(syncd(*args), 3, str(cfg), field)


def test_cli_env_override_error_names_the_variable(tmp_path):
    cfg = tmp_path / "ok.toml"
    cfg.write_text('[[mirrors]]\nname = "m"\nbucket = "bkt"\ndirection = "pull"\n'
                   'volumes = {a = "/v"}')
    run = syncd("config", "validate", str(cfg),
                environ=env(SYNCD_TRANSFER__CONCURRENCY="lots"))
    _one_error_line(run, 3, "SYNCD_TRANSFER__CONCURRENCY", "transfer.concurrency")


def test_cli_no_config_is_one_line_exit_3(tmp_path):
    _one_error_line(syncd("sync", "--once"), 3, "SYNCD_CONFIG")


@pytest.fixture
def read_only_keys(tmp_path: Path) -> Iterator[tuple[S3Server, str, str, str]]:
    """A moto server of its own that enforces IAM, with a bucket holding one object and a
    user allowed only to read: (server, bucket, access key, secret key). moto lets the first
    INITIAL_NO_AUTH_ACTION_COUNT requests through unchecked: its readiness probe and the
    five set-up calls below."""
    server = new_moto_server(find_free_port(), tmp_path / "iam-moto")
    server.env = {"INITIAL_NO_AUTH_ACTION_COUNT": "6"}
    server.start()
    try:
        bucket = "read-only-models"
        admin = server.client()
        admin.create_bucket(Bucket=bucket)
        admin.put_object(Bucket=bucket, Key="models/config.json", Body=b"{}")
        iam = boto3.client("iam", endpoint_url=server.endpoint_url, region_name="us-east-1",
                           aws_access_key_id=server.access_key,
                           aws_secret_access_key=server.secret_key,
                           config=s3_client_config())
        iam.create_user(UserName="reader")
        iam.put_user_policy(UserName="reader", PolicyName="read", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Resource": "*",
                "Action": ["s3:GetObject", "s3:ListBucket", "s3:HeadBucket"]}]}))
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        yield server, bucket, key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        server.stop()


def test_pull_onto_a_network_volume_with_read_only_keys_names_the_missing_permission(
        read_only_keys: tuple[S3Server, str, str, str], shared_volume: SharedVolume,
        tmp_path: Path) -> None:
    """A FUSE volume's lease is kept in S3; pull credentials that may only read get one line
    naming the permission and the way out, and the volume is left untouched."""
    server, bucket, access_key, secret_key = read_only_keys
    reader = make_s3_client(server.endpoint_url, access_key=access_key, secret_key=secret_key)
    assert reader.get_object(Bucket=bucket, Key="models/config.json")["Body"].read() == b"{}"
    cfg = write_config(tmp_path / "c.toml", server.endpoint_url, bucket, direction="pull",
                       root=shared_volume.a)
    run = syncd("sync", "--once", "-c", str(cfg),
                environ=env(AWS_ACCESS_KEY_ID=access_key, AWS_SECRET_ACCESS_KEY=secret_key))
    _one_error_line(run, 12, "s3:PutObject is missing",
                    f"s3://{bucket}/.syncd/volumes/", "[lease] bucket")
    assert secret_key not in run.stderr + run.stdout
    assert sorted(os.listdir(shared_volume.a)) == []  # no data, and no volume id recorded
