"""Named S3 endpoints with two real servers at once: moto is `[s3]`, `rclone serve s3` is
`[endpoints.rc]` with its keys in variables the endpoint names. The same bucket name exists on
both with different contents, so every file that lands proves which server it came from."""

from __future__ import annotations

import contextlib
import json
import signal
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import BotoCoreError, ClientError

from tests.daemons import FAST, Daemon, Setup
from tests.mirrors import MiB, bucket_tree, env, syncd, tree, wait_for
from tests.servers import ACCESS_KEY, SECRET_KEY, S3Server, empty_and_delete_bucket

# The process's default chain carries keys rclone refuses, so a mirror on the rclone endpoint
# works only if syncd reads the endpoint's own variables. moto accepts any keys.
WRONG = {"AWS_ACCESS_KEY_ID": "AKIAWRONGWRONGWRONG0", "AWS_SECRET_ACCESS_KEY": "wrong-secret"}
RIGHT = {"RC_KEY": ACCESS_KEY, "RC_SECRET": SECRET_KEY}


@dataclass
class Two:
    moto: S3Server
    rclone: S3Server
    bucket: str
    tmp: Path

    def seed(self, server: S3Server, files: dict[str, bytes], prefix: str = "models/") -> None:
        for key, data in files.items():
            server.client().put_object(Bucket=self.bucket, Key=f"{prefix}{key}", Body=data)

    def config(self, mirrors: str, *, endpoint_extra: str = "", lease: str = "") -> Path:
        path = self.tmp / "two.toml"
        path.write_text(f"""
{FAST}
{lease}
[s3]
endpoint_url = "{self.moto.endpoint_url}"
addressing_style = "path"
max_attempts = 2
connect_timeout_s = 2

[endpoints.rc]
endpoint_url = "{self.rclone.endpoint_url}"
addressing_style = "path"
max_attempts = 2
connect_timeout_s = 2
access_key_id_env = "RC_KEY"
secret_access_key_env = "RC_SECRET"
{endpoint_extra}

[endpoints.mo]
endpoint_url = "{self.moto.endpoint_url}"
addressing_style = "path"

[transfer]
part_size = "5MiB"
multipart_threshold = "5MiB"
min_free_bytes = 0

{mirrors}
""", encoding="utf-8")
        return path

    def volume(self, name: str) -> Path:
        root = self.tmp / name
        root.mkdir(parents=True, exist_ok=True)
        return root


@pytest.fixture
def two(moto_s3: S3Server, rclone_s3: S3Server, tmp_path: Path) -> Iterator[Two]:
    bucket = f"t-{uuid.uuid4().hex[:16]}"
    for server in (moto_s3, rclone_s3):
        server.client().create_bucket(Bucket=bucket)
    yield Two(moto_s3, rclone_s3, bucket, tmp_path)
    for server in (moto_s3, rclone_s3):
        with contextlib.suppress(ClientError, BotoCoreError):
            empty_and_delete_bucket(server.client(), bucket)


def mirror(name: str, bucket: str, direction: str, volumes: str, *, endpoint: str = "",
           prefix: str = "models", lease: str = "volume") -> str:
    return f"""
[[mirrors]]
name = "{name}"
bucket = "{bucket}"
prefix = "{prefix}"
direction = "{direction}"
lease = "{lease}"
{f"endpoint = {endpoint}" if endpoint else ""}
volumes = {volumes}
"""


def test_each_mirror_syncs_against_its_own_endpoint(two: Two) -> None:
    """A per-datacenter map sends dc1 to rclone and dc2 to [s3]; a push mirror names rclone.
    The same bucket on both servers holds different files."""
    on_rclone = {"config.json": b'{"from": "rclone"}', "w.bin": b"r" * (6 * MiB + 3)}
    on_moto = {"config.json": b'{"from": "moto"}', "only-moto.txt": b"m"}
    two.seed(two.rclone, on_rclone)
    two.seed(two.moto, on_moto)
    dc1, dc2, ckpt = two.volume("dc1"), two.volume("dc2"), two.volume("ckpt")
    (ckpt / "step-1").mkdir()
    # Past the multipart threshold: botocore's control plane must use the named keys too.
    big = b"checkpoint" * (700 * 1024)
    (ckpt / "step-1" / "model.pt").write_bytes(big)
    cfg = two.config(
        mirror("models", two.bucket, "pull", f'{{ dc1 = "{dc1}", dc2 = "{dc2}" }}',
               endpoint='{ dc1 = "rc" }')
        + mirror("ckpt", two.bucket, "push", f'{{ dc1 = "{ckpt}" }}', endpoint='"rc"',
                 prefix="runs"))
    environ = env(**WRONG, **RIGHT)

    shown = syncd("config", "validate", str(cfg), environ=env(SYNCD_DATACENTER="dc1"))
    assert shown.code == 0, shown.stderr
    assert f"via endpoint rc ({two.rclone.endpoint_url}; credentials from $RC_KEY" in shown.stdout
    assert shown.stdout.count("via endpoint rc") == 2
    shown = syncd("config", "validate", str(cfg), environ=env(SYNCD_DATACENTER="dc2"))
    assert f"via endpoint default ({two.moto.endpoint_url}; credentials from the AWS chain" in (
        shown.stdout)

    first = syncd("sync", "--once", "-c", str(cfg), environ=env(**environ, SYNCD_DATACENTER="dc1"))
    assert first.code == 0, first.stderr
    assert tree(dc1) == on_rclone
    pushed = bucket_tree(two.rclone.client(), two.bucket, prefix="runs/")
    assert pushed == {"step-1/model.pt": big}
    assert bucket_tree(two.moto.client(), two.bucket, prefix="runs/") == {}
    logged = [json.loads(line) for line in first.stderr.splitlines() if line.startswith("{")]
    assert {e.get("endpoint") for e in logged if e.get("mirror") == "models"} == {"rc"}

    second = syncd("sync", "--once", "-c", str(cfg), environ=env(**WRONG, SYNCD_DATACENTER="dc2"))
    assert second.code == 0, second.stderr
    assert tree(dc2) == on_moto

    for dc in ("dc1", "dc2"):
        check = syncd("check", "-c", str(cfg), environ=env(**environ, SYNCD_DATACENTER=dc))
        assert (check.code, check.stdout.strip()) == (0, "in sync"), check.stdout + check.stderr
    # A change on the other server is not this datacenter's drift: dc1 follows rclone only.
    two.seed(two.moto, {"config.json": b'{"from": "moto, changed"}'})
    assert syncd("check", "-c", str(cfg), environ=env(**environ, SYNCD_DATACENTER="dc1")).code == 0
    drift = syncd("check", "-c", str(cfg), environ=env(**environ, SYNCD_DATACENTER="dc2"))
    assert drift.code == 4 and "differs  config.json" in drift.stdout


def test_an_s3_lease_lives_on_the_mirrors_endpoint(two: Two) -> None:
    """A push mirror on the named endpoint `mo` (moto) holds its S3 lease there, and `lease
    status` names the endpoint in the target."""
    vol = two.volume("push")
    (vol / "a.txt").write_bytes(b"a")
    cfg = two.config(mirror("out", two.bucket, "push", f'{{ dc1 = "{vol}" }}',
                            endpoint='"mo"', prefix="out", lease="s3"))
    run = syncd("sync", "--once", "-c", str(cfg), environ=env(**WRONG))
    assert run.code == 0, run.stderr
    keys = {o["Key"] for o in two.moto.client().list_objects_v2(
        Bucket=two.bucket, Prefix="out/.syncd/").get("Contents", [])}
    assert "out/.syncd/lease.json" in keys
    status = syncd("lease", "status", "--json", "-c", str(cfg), environ=env(**WRONG))
    assert status.code == 0, status.stderr
    row = json.loads(status.stdout.splitlines()[0])
    assert (row["target"], row["backend"], row["state"]) == (
        f"mo:s3://{two.bucket}/out/", "s3", "released")


def test_the_daemon_runs_each_mirror_on_its_endpoint_and_labels_its_metrics(two: Two) -> None:
    two.seed(two.rclone, {"from-rclone.txt": b"r"})
    two.seed(two.moto, {"from-moto.txt": b"m"}, prefix="other/")
    a, b = two.volume("a"), two.volume("b")
    cfg = two.config(
        mirror("on-rc", two.bucket, "pull", f'{{ dc1 = "{a}" }}', endpoint='"rc"')
        + mirror("on-default", two.bucket, "pull", f'{{ dc1 = "{b}" }}', prefix="other"))
    setup = Setup(two.moto, two.bucket, two.tmp)
    daemon: Daemon = setup.start(cfg, **WRONG, **RIGHT)
    try:
        wait_for(lambda: tree(a) == {"from-rclone.txt": b"r"}, 60, "the rclone mirror")
        wait_for(lambda: tree(b) == {"from-moto.txt": b"m"}, 60, "the moto mirror")
        metrics = _get(daemon.http() + "/metrics")
        assert (f'syncd_mirror_info{{bucket="{two.bucket}",direction="pull",endpoint="rc",'
                f'endpoint_url="{two.rclone.endpoint_url}",mirror="on-rc",prefix="models/"}} 1.0'
                ) in metrics
        assert 'endpoint="default",endpoint_url="' + two.moto.endpoint_url in metrics
    finally:
        assert daemon.stop() == 0
        for d in setup.daemons:
            if d.proc.poll() is None:
                d.proc.kill()


def test_an_unknown_endpoint_name_exits_3_with_one_line(two: Two) -> None:
    cfg = two.config(mirror("m", two.bucket, "pull", f'{{ dc1 = "{two.volume("v")}" }}',
                            endpoint='"r2"'))
    for args in (("sync", "--once", "-c", str(cfg)), ("run", "-c", str(cfg)),
                 ("config", "validate", str(cfg))):
        run = syncd(*args, timeout=30)
        assert run.code == 3, (args, run.stderr)
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("syncd: error: "), run.stderr
        assert "mirrors[0].endpoint: no endpoint named 'r2' in mirror 'm'" in lines[0]


def test_an_endpoints_missing_credential_variable_is_one_line_naming_it(two: Two) -> None:
    cfg = two.config(mirror("m", two.bucket, "pull", f'{{ dc1 = "{two.volume("v")}" }}',
                            endpoint='"rc"'))
    run = syncd("sync", "--once", "-c", str(cfg), environ=env(RC_KEY=ACCESS_KEY))
    assert run.code == 6, run.stderr
    line = run.stderr.strip().splitlines()[-1]
    assert line.startswith("syncd: error: ") and "RC_SECRET is not set" in line
    assert f"endpoint rc ({two.rclone.endpoint_url})" in line
    assert SECRET_KEY not in run.stderr and ACCESS_KEY not in run.stderr


def test_wrong_keys_in_an_endpoints_variables_are_refused_by_that_server(two: Two) -> None:
    cfg = two.config(mirror("m", two.bucket, "pull", f'{{ dc1 = "{two.volume("v")}" }}',
                            endpoint='"rc"'))
    # The default chain holds the right keys this time: they must not be used for `rc`.
    run = syncd("sync", "--once", "-c", str(cfg),
                environ=env(RC_KEY="AKIAWRONGWRONGWRONG0", RC_SECRET="nope"))
    assert run.code == 6, run.stderr
    assert "access denied" in run.stderr and "endpoint rc" in run.stderr


def _get(url: str) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as resp:
        body: Any = resp.read()
    return str(body.decode())


def test_a_reload_that_moves_an_endpoint_takes_the_lease_on_the_new_server(
        two: Two, seaweedfs_s3: S3Server) -> None:
    """SIGHUP with `[endpoints.mo]` pointed from moto to SeaweedFS: the old lease is released
    on moto and the new one taken on SeaweedFS, never kept through the old connection."""
    seaweedfs_s3.client().create_bucket(Bucket=two.bucket)
    try:
        vol = two.volume("push")
        (vol / "a.txt").write_bytes(b"a")
        out = mirror("out", two.bucket, "push", f'{{ dc1 = "{vol}" }}', endpoint='"mo"',
                     prefix="out", lease="s3")
        cfg = two.config(out)
        setup = Setup(two.moto, two.bucket, two.tmp)
        daemon = setup.start(cfg)  # the test keys: SeaweedFS checks them
        try:
            wait_for(lambda: bucket_tree(two.moto.client(), two.bucket, "out/") == {
                "a.txt": b"a"}, 60, "the push to moto")
            text = cfg.read_text(encoding="utf-8")
            moved = text.replace(f'[endpoints.mo]\nendpoint_url = "{two.moto.endpoint_url}"',
                                 f'[endpoints.mo]\nendpoint_url = "{seaweedfs_s3.endpoint_url}"')
            assert moved != text
            cfg.write_text(moved, encoding="utf-8")
            daemon.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: bucket_tree(seaweedfs_s3.client(), two.bucket, "out/") == {
                "a.txt": b"a"}, 60, "the push to SeaweedFS after the reload")
            lease = json.loads(two.moto.client().get_object(
                Bucket=two.bucket, Key="out/.syncd/lease.json")["Body"].read())
            assert lease["released"] is True
            new = json.loads(seaweedfs_s3.client().get_object(
                Bucket=two.bucket, Key="out/.syncd/lease.json")["Body"].read())
            assert new["released"] is False and new["holder"]["pid"] == daemon.proc.pid
            assert [e["target"] for e in daemon.events("lease_acquired")] == [
                f"mo:s3://{two.bucket}/out/"] * 2
        finally:
            assert daemon.stop() == 0
    finally:
        with contextlib.suppress(ClientError, BotoCoreError):
            empty_and_delete_bucket(seaweedfs_s3.client(), two.bucket)
