"""Helpers for tests that run syncd for real: write a config, run the CLI as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.servers import ACCESS_KEY, SECRET_KEY

SYNCD = str(Path(sys.executable).with_name("syncd"))
MiB = 1 << 20


def write_config(
    path: Path, endpoint_url: str, bucket: str, *, direction: str, root: Path,
    prefix: str = "models", name: str = "m", extra: str = "", transfer: str = "",
    lease: str = "auto", top: str = "",
) -> Path:
    path.write_text(
        f"""
{top}
[s3]
endpoint_url = "{endpoint_url}"
addressing_style = "path"
max_attempts = 2
connect_timeout_s = 2

[transfer]
part_size = "5MiB"
multipart_threshold = "5MiB"
min_free_bytes = 0
{transfer}

[[mirrors]]
name = "{name}"
bucket = "{bucket}"
prefix = "{prefix}"
direction = "{direction}"
lease = "{lease}"
volumes = {{ dc1 = "{root}" }}
{extra}
""",
        encoding="utf-8",
    )
    return path


def lease_for(server_name: str) -> str:
    """The lease backend a push mirror can use on this server: rclone ignores conditional
    writes, so it cannot hold an S3 lease (syncd refuses; see tests/lease)."""
    return "s3" if server_name == "moto" else "volume"


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def summary(self) -> str:
        lines = [ln for ln in self.stdout.splitlines() if " files, " in ln]
        return lines[-1] if lines else ""

    def copied(self) -> int:
        return int(self.summary.split("] ", 1)[1].split(" files", 1)[0])


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SYNCD_"))}
    out.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY,
               AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE="/nonexistent",
               AWS_SHARED_CREDENTIALS_FILE="/nonexistent", SYNCD_LOG_FORMAT="json",
               SYNCD_HTTP__LISTEN="127.0.0.1:0")
    out.update(extra)
    return out


def syncd(*args: str, timeout: float = 180, environ: dict[str, str] | None = None,
          **popen: Any) -> Run:
    proc = subprocess.run([SYNCD, *args], capture_output=True, text=True, timeout=timeout,
                          env=environ or env(), check=False, **popen)
    return Run(proc.returncode, proc.stdout, proc.stderr)


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` except syncd's own `.syncd/`."""
    out: dict[str, bytes] = {}
    for p in root.rglob("*"):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not rel.startswith(".syncd/"):
            out[rel] = p.read_bytes()
    return out


def bucket_tree(client: Any, bucket: str, prefix: str = "models/") -> dict[str, bytes]:
    """Every object under `prefix` except syncd's own `.syncd/` ones."""
    out: dict[str, bytes] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", ()):
            if obj["Key"][len(prefix):].startswith(".syncd/"):
                continue  # syncd's own lease and commit objects
            body = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            out[obj["Key"][len(prefix):]] = body
    return out


def sample_files() -> dict[str, bytes]:
    """Nested tree, empty file, unicode and spaces, and one file past the multipart threshold."""
    return {
        "config.json": b'{"hidden_size": 64}',
        "empty.txt": b"",
        "sub dir/t\u00f6kenizer \u6a21\u578b.json": "{\"v\": \"\u00e9\"}".encode(),
        "deep/a/b/c/weights.bin": os.urandom(3 * MiB + 17),
        "shards/model-00001.safetensors": os.urandom(11 * MiB + 5),
    }


def wait_for(check: Callable[[], Any], timeout: float = 60, what: str = "") -> Any:
    """Poll `check` until it returns something true; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or check}")
