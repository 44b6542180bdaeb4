"""Progress survives a crash (issue 18): a pass killed with SIGKILL halfway keeps what it
published, and the next pass moves only the rest.

`syncd sync --once` runs through a throttling proxy, one file at a time, so the kill lands
mid-pass: once some files are published the proxy is paused (the file in flight stalls), the
record on the volume is given its checkpoint interval to catch up, and the process is killed.
The next pass goes through a fresh proxy that counts the bytes it carries. Objects are
multipart uploads without a full-object checksum, as many users' tools make them: nothing
can prove such a file equal to its copy but the record, so without checkpoints everything
published before the kill crosses the wire again.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from syncd import checkpoint, published
from tests.daemons import FAST
from tests.mirrors import SYNCD, MiB, env, syncd, write_config
from tests.servers import S3Server, ThrottleProxy

FILES = 8
SIZE = 5 * MiB + 64 * 1024  # past the 5 MiB multipart threshold: two parts each
OVERHEAD = 512 * 1024  # listings, HEADs, lease objects: everything but file bodies
PULL_RATE = 6 * MiB  # bytes/s to the client: a pull of 8 files takes ~7 s
PUSH_RATE = 3000  # bytes/s of answers: each upload's few small answers take ~1 s
ART = "llm"  # the artifact of the "build" case: pulled into a version directory, switched in


def _data(i: int) -> bytes:
    return i.to_bytes(4, "big") + os.urandom(SIZE - 4)


def _seed_multipart(client: Any, bucket: str, key: str, data: bytes) -> None:
    """Two parts, no checksum asked for: the object's ETag is not an MD5 of its bytes."""
    up = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    parts = []
    for n, chunk in enumerate((data[:5 * MiB], data[5 * MiB:]), 1):
        etag = client.upload_part(Bucket=bucket, Key=key, UploadId=up, PartNumber=n,
                                  Body=chunk)["ETag"]
        parts.append({"PartNumber": n, "ETag": etag})
    client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=up,
                                     MultipartUpload={"Parts": parts})


def _volume_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*.bin") if p.is_file()
            and not p.relative_to(root).as_posix().startswith(".syncd/")}


def _built_files(root: Path) -> set[str]:
    """The files in the artifact's version directories (built, or being built)."""
    return {p.name for p in (root / ".syncd" / "artifacts" / ART).glob(f"*/{ART}/*.bin")}


def _bucket_files(client: Any, bucket: str) -> set[str]:
    listed = client.list_objects_v2(Bucket=bucket, Prefix="models/").get("Contents", ())
    return {o["Key"].removeprefix("models/") for o in listed if o["Key"].endswith(".bin")}


def _recorded(root: Path) -> set[str]:
    return {k.removeprefix(f"{ART}/") for k in asyncio.run(published.load(root, "m"))}


def _poll(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


@pytest.mark.parametrize("case", ["pull", "build", "push"])
def test_sync_killed_mid_pass_then_next_pass_moves_only_what_was_not_recorded(
    s3: S3Server, bucket: str, tmp_path: Path, case: str,
    throttle_proxy: Callable[..., ThrottleProxy],
) -> None:
    """`build`: a pull of an artifact, killed while its version directory fills."""
    client = s3.client()
    vol = tmp_path / "vol"
    vol.mkdir()
    direction = "push" if case == "push" else "pull"
    files = {f"shard-{i:02d}.bin": _data(i) for i in range(FILES)}
    under = f"{ART}/" if case == "build" else ""
    for key, data in files.items():
        if direction == "pull":
            _seed_multipart(client, bucket, f"models/{under}{key}", data)
        else:
            (vol / key).write_bytes(data)
    published: Callable[[], set[str]] = {
        "pull": lambda: _volume_files(vol), "build": lambda: _built_files(vol),
        "push": lambda: _bucket_files(client, bucket)}[case]
    extra = 'artifacts = ["*"]' if case == "build" else ""

    slow = throttle_proxy(s3.port, PULL_RATE if direction == "pull" else PUSH_RATE)
    cfg = write_config(tmp_path / "slow.toml", slow.endpoint_url, bucket, direction=direction,
                       root=vol, lease="volume", top=FAST, transfer="concurrency = 1",
                       extra=extra)
    log = tmp_path / "first.log"
    with log.open("wb") as err:
        first = subprocess.Popen([SYNCD, "--log-level", "debug", "sync", "--once", "-c",
                                  str(cfg)], env=env(), stdout=subprocess.DEVNULL, stderr=err)
    try:
        assert _poll(lambda: len(published()) >= FILES // 2, 120), log.read_text()
        slow.pause()  # the file in flight stalls; the pass is still under way
        done = published()
        assert len(done) < FILES, "the pass ended before the kill"
        # the record catches up within its checkpoint interval (never, without checkpoints);
        # a push's stalled upload may be complete in the bucket without syncd knowing it
        unknown = 0 if direction == "pull" else 1
        _poll(lambda: len(done - _recorded(vol)) <= unknown, 4 * checkpoint.EVERY_S)
        first.send_signal(signal.SIGKILL)
        assert first.wait(30) == -signal.SIGKILL
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(30)
        slow.resume()

    at_kill, recorded = published(), _recorded(vol)
    assert FILES // 2 <= len(at_kill) < FILES
    assert recorded <= at_kill  # the record never says more than the destination holds

    counting = throttle_proxy(s3.port)
    cfg2 = write_config(tmp_path / "counted.toml", counting.endpoint_url, bucket,
                        direction=direction, root=vol, lease="volume", top=FAST, extra=extra)
    second = syncd("--log-level", "debug", "sync", "--once", "--wait-lease", "30", "-c",
                   str(cfg2), timeout=120)
    assert second.code == 0, second.stderr
    assert published() == set(files)

    # what was not published at the kill crosses the wire again, and at most the one file in
    # flight (a push's upload can be complete before syncd hears of it); nothing published
    # earlier is moved or even re-read
    wire = counting.bytes_to_client if direction == "pull" else counting.bytes_to_server
    assert wire <= SIZE * (FILES - len(at_kill) + 1) + OVERHEAD, (wire, sorted(at_kill))
    touched = {e["key"].removeprefix(under) for e in _events(second.stderr)
               if e.get("event") in ("copy_published", "copy_adopted")}
    assert len(touched & at_kill) <= 1, sorted(touched & at_kill)
    assert touched == set(files) - recorded  # the record was all it needed


def _events(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
