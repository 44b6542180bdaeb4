"""Exit codes and reports that mean what the README says (issue 18, item 6).

A file that fails on its own while the rest is synced exits 10, whatever went wrong with it;
every name syncd will not sync (a special file, a misleading name) is one logged line and
one count in the summary; console logs never hand a key's control bytes to the operator's
terminal. Each claim runs the real binary, against moto, rclone and SeaweedFS.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.mirrors import SYNCD, MiB, Run, bucket_tree, env, lease_for, syncd, tree, write_config
from tests.servers import ThrottleProxy

ProxyFactory = Callable[..., ThrottleProxy]

# Names that display as something they are not: C1 controls (NEL, CSI), a right-to-left
# override ("evil\u202etxt.exe" shows as "evilexe.txt"), a mark, an isolate, a line separator.
MISLEADING = ["evil\u202etxt.exe", "nel\x85line.txt", "csi\x9b2J.txt", "rlm\u200f.txt",
              "iso\u2066x\u2069.txt", "ls\u2028line.txt"]


def _events(stderr: str, name: str) -> list[dict[str, Any]]:
    return [e for line in stderr.splitlines() if line.startswith("{")
            if (e := json.loads(line)).get("event") == name]


def _one_error_line(run: Run, code: int, *needles: str) -> str:
    assert run.code == code, (run.code, run.stdout, run.stderr)
    assert "Traceback" not in run.stderr
    errors = [ln for ln in run.stderr.splitlines() if ln.startswith("syncd: error:")]
    assert len(errors) == 1, run.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def _start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([SYNCD, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env())


def _finish(proc: subprocess.Popen[str]) -> Run:
    out, err = proc.communicate(timeout=180)
    return Run(proc.returncode, out, err)


def _poll(check: Callable[[], bool], what: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while not check():
        if proc.poll() is not None:
            run = _finish(proc)
            raise AssertionError(f"syncd ended before {what}: {run}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


# --- one file fails, the rest is synced: exit 10 ------------------------------------------------


def test_sync_pull_key_deleted_after_the_listing_fails_alone_with_exit_10(
        s3, bucket, tmp_path, throttle_proxy: ProxyFactory):
    """Not "bucket or volume root missing" (7). Deterministic: one transfer at a time, and
    the proxy slows what the server sends, so a-slow.bin is still arriving (the listing is
    done, b-gone.txt not yet asked for) when another client deletes b-gone.txt; the proxy is
    paused meanwhile, so b-gone.txt's GET can only come after the delete."""
    client = s3.client()
    slow = os.urandom(4 * MiB)  # under the multipart threshold: one GET
    client.put_object(Bucket=bucket, Key="models/a-slow.bin", Body=slow)
    client.put_object(Bucket=bucket, Key="models/b-gone.txt", Body=b"deleted after listing")
    client.put_object(Bucket=bucket, Key="models/c.txt", Body=b"stays")
    proxy = throttle_proxy(s3.port, rate_bytes_per_s=256 * 1024)
    vol = tmp_path / "vol"
    vol.mkdir()
    cfg = write_config(tmp_path / "c.toml", proxy.endpoint_url, bucket, direction="pull",
                       root=vol, transfer="concurrency = 1")

    proc = _start("sync", "--once", "-c", str(cfg))
    _poll(lambda: proxy.bytes_to_client > 128 * 1024, "a-slow.bin to be arriving", proc)
    proxy.pause()
    client.delete_object(Bucket=bucket, Key="models/b-gone.txt")
    proxy.set_rate(None)
    proxy.resume()
    run = _finish(proc)

    _one_error_line(run, 10, "1 file(s) of mirror m failed", "b-gone.txt")
    assert [e["key"] for e in _events(run.stderr, "copy_failed")] == ["b-gone.txt"]
    assert "2 files" in run.summary and "1 failed" in run.summary
    assert tree(vol) == {"a-slow.bin": slow, "c.txt": b"stays"}


@pytest.mark.parametrize("change", ["rewritten", "removed"])
def test_sync_push_file_changed_or_gone_after_the_listing_fails_alone_with_exit_10(
        s3, bucket, tmp_path, throttle_proxy: ProxyFactory, change: str):
    """Not "unexpected failure" (1). Deterministic: one transfer at a time, its parts one at
    a time, each waiting for the server's answer, which the proxy slows to a trickle; once
    a-big.bin's bytes flow to the server (the listing is done, b.txt not yet opened) the
    proxy is paused, so a-big.bin cannot complete and b.txt is opened only after it changed."""
    vol = tmp_path / "vol"
    vol.mkdir()
    big = os.urandom(24 * MiB)
    (vol / "a-big.bin").write_bytes(big)
    (vol / "b.txt").write_bytes(b"as listed")
    (vol / "c.txt").write_bytes(b"stays")
    proxy = throttle_proxy(s3.port, rate_bytes_per_s=4096)  # a part's answer: ~0.1 s
    cfg = write_config(tmp_path / "c.toml", proxy.endpoint_url, bucket, direction="push",
                       root=vol, lease=lease_for(s3.name), transfer="concurrency = 1")

    proc = _start("sync", "--once", "-c", str(cfg))
    _poll(lambda: proxy.bytes_to_server > MiB, "a-big.bin to be uploading", proc)
    proxy.pause()
    if change == "rewritten":
        (vol / "b.txt").write_bytes(b"rewritten after the listing")
    else:
        (vol / "b.txt").unlink()
    proxy.set_rate(None)
    proxy.resume()
    run = _finish(proc)

    _one_error_line(run, 10, "1 file(s) of mirror m failed", "b.txt")
    assert [e["key"] for e in _events(run.stderr, "copy_failed")] == ["b.txt"]
    assert bucket_tree(s3.client(), bucket) == {"a-big.bin": big, "c.txt": b"stays"}


def test_sync_push_unreadable_file_says_cannot_read_and_fails_alone_with_exit_10(
        s3, bucket, tmp_path):
    """A mode-000 file is a read that failed, not "cannot write" (and not exit 6, which
    names credentials or a volume that cannot be written). syncd runs as root without the
    capabilities that bypass file modes, as it would as any other user."""
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "locked.bin").write_bytes(b"mode 000")
    (vol / "locked.bin").chmod(0)
    (vol / "ok.txt").write_bytes(b"readable")
    cfg = write_config(tmp_path / "c.toml", s3.endpoint_url, bucket, direction="push",
                       root=vol, lease=lease_for(s3.name))
    setpriv = shutil.which("setpriv")
    assert setpriv is not None
    done = subprocess.run(
        [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--", SYNCD, "sync",
         "--once", "-c", str(cfg)],
        capture_output=True, text=True, timeout=180, env=env(), check=False)
    run = Run(done.returncode, done.stdout, done.stderr)

    line = _one_error_line(run, 10, "cannot read", str(vol / "locked.bin"))
    assert "cannot write" not in line
    assert [e["key"] for e in _events(run.stderr, "copy_failed")] == ["locked.bin"]
    assert bucket_tree(s3.client(), bucket) == {"ok.txt": b"readable"}


# --- what syncd does not sync is logged and counted ---------------------------------------------


def test_sync_push_logs_and_counts_each_special_file_it_does_not_sync(s3, bucket, tmp_path):
    vol = tmp_path / "vol"
    (vol / "sub").mkdir(parents=True)
    (vol / "data.bin").write_bytes(b"data")
    os.mkfifo(vol / "pipe")
    os.mknod(vol / "sub" / "chr", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.mknod(vol / "sub" / "blk", stat.S_IFBLK | 0o600, os.makedev(7, 0))
    with tempfile.TemporaryDirectory(dir="/tmp") as short:  # AF_UNIX paths are short
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(f"{short}/s")
            os.rename(f"{short}/s", vol / "sub" / "sock")
    cfg = write_config(tmp_path / "c.toml", s3.endpoint_url, bucket, direction="push",
                       root=vol, lease=lease_for(s3.name), extra="delete = true")

    run = syncd("sync", "--once", "-c", str(cfg), timeout=60)

    assert run.code == 0, run.stderr
    refused = {e["key"]: e["detail"] for e in _events(run.stderr, "key_refused")}
    assert set(refused) == {"pipe", "sub/chr", "sub/blk", "sub/sock"}
    for key, kind in [("pipe", "FIFO"), ("sub/chr", "character device"),
                      ("sub/blk", "block device"), ("sub/sock", "socket")]:
        assert kind in refused[key] and "not synced" in refused[key], refused
    assert "4 refused" in run.summary
    assert bucket_tree(s3.client(), bucket) == {"data.bin": b"data"}


def test_sync_pull_refuses_c1_bidi_and_separator_names_logged_and_counted(
        s3, bucket, tmp_path):
    client = s3.client()
    for name in MISLEADING:
        client.put_object(Bucket=bucket, Key=f"models/{name}", Body=b"misleading")
    client.put_object(Bucket=bucket, Key="models/good.txt", Body=b"good")
    listed = {o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    kept = listed & {f"models/{n}" for n in MISLEADING}
    assert kept, "the server kept none of the names"
    vol = tmp_path / "vol"
    vol.mkdir()
    cfg = write_config(tmp_path / "c.toml", s3.endpoint_url, bucket, direction="pull", root=vol)

    run = syncd("sync", "--once", "-c", str(cfg))

    assert run.code == 0, run.stderr
    refused = {e["key"] for e in _events(run.stderr, "key_refused")}
    assert refused == {k.removeprefix("models/") for k in kept}
    assert f"{len(kept)} refused" in run.summary
    assert tree(vol) == {"good.txt": b"good"}


def test_sync_push_refuses_c1_bidi_and_separator_names_logged_and_counted(
        s3, bucket, tmp_path):
    vol = tmp_path / "vol"
    vol.mkdir()
    for name in MISLEADING:
        (vol / name).write_bytes(b"misleading")
    (vol / "good.txt").write_bytes(b"good")
    cfg = write_config(tmp_path / "c.toml", s3.endpoint_url, bucket, direction="push",
                       root=vol, lease=lease_for(s3.name))

    run = syncd("sync", "--once", "-c", str(cfg))

    assert run.code == 0, run.stderr
    assert {e["key"] for e in _events(run.stderr, "key_refused")} == set(MISLEADING)
    assert f"{len(MISLEADING)} refused" in run.summary
    assert bucket_tree(s3.client(), bucket) == {"good.txt": b"good"}


# --- console output -----------------------------------------------------------------------------


def test_sync_console_log_shows_control_bytes_of_a_key_escaped(s3, bucket, tmp_path):
    """An ESC sequence in a key (clear the screen, set the window title) and an override
    reach the operator's terminal as text, never as bytes it acts on."""
    client = s3.client()
    hostile = "models/esc\x1b[2J\x1b]0;owned\x07-\u202e.txt"
    client.put_object(Bucket=bucket, Key=hostile, Body=b"x")
    assert hostile in {o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    vol = tmp_path / "vol"
    vol.mkdir()
    cfg = write_config(tmp_path / "c.toml", s3.endpoint_url, bucket, direction="pull", root=vol)

    run = syncd("sync", "--once", "-c", str(cfg), environ=env(SYNCD_LOG_FORMAT="console"))

    assert run.code == 0, run.stderr
    assert "key_refused" in run.stderr
    assert "\\x1b[2J\\x1b]0;owned\\x07-\\u202e.txt" in run.stderr
    for raw in ("\x1b", "\x07", "\u202e"):
        assert raw not in run.stderr + run.stdout
    assert tree(vol) == {}



def test_sync_pull_artifact_file_unlike_its_manifest_is_a_checksum_failure_exit_9(
        s3, bucket, tmp_path):
    """The bytes match what the object vouches for, not the checksum the manifest names:
    the build is not switched in, and the run says which file, with exit 9 (it used to end
    in "unexpected IndexError", exit 1: the failure was counted with no error to name)."""
    client = s3.client()
    put = client.put_object(Bucket=bucket, Key="models/ckpt-1/weights.bin", Body=b"weights")
    manifest = {"syncd_manifest": 1, "artifact": "ckpt-1", "files": {"weights.bin": {
        "size": 7, "etag": put["ETag"].strip('"'), "checksum": "crc64nvme:AAAAAAAAAAA="}}}
    client.put_object(Bucket=bucket, Key="models/ckpt-1/.syncd-manifest.json",
                      Body=json.dumps(manifest).encode())
    vol = tmp_path / "vol"
    vol.mkdir()
    cfg = write_config(tmp_path / "c.toml", s3.endpoint_url, bucket, direction="pull",
                       root=vol, extra='artifacts = ["ckpt-*"]')

    run = syncd("sync", "--once", "-c", str(cfg))

    _one_error_line(run, 9, "ckpt-1/weights.bin", "differs from the manifest")
    assert not (vol / "ckpt-1").exists()
