"""The S3 endpoint: our own ``rclone serve s3`` on 127.0.0.1, or any endpoint given.

The local server serves a directory (one sub-directory per bucket). Source data is laid into
that directory as hard links *before* the server starts: rclone's directory cache would not
see files added behind its back later. The server is stopped by its own pid.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

HOST = "127.0.0.1"
ACCESS_KEY = "AKIASYNCDBENCH000001"
SECRET_KEY = "syncd-bench-secret-0123456789-abcdefghijklmn"
REGION = "us-east-1"
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Never inherited by anything we start: the operator's shell must not steer the benchmark.
SCRUBBED_PREFIXES = ("AWS_", "SYNCD_", "RCLONE_", "S3_", "MOTO_", "WEED_")
SCRUBBED_NAMES = frozenset({"http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY",
                            "HTTPS_PROXY", "ALL_PROXY", "no_proxy", "NO_PROXY"})


def find_binary(name: str) -> Path | None:
    """An executable next to the running interpreter (the venv's bin/) first, else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which(name)
    return Path(found) if found else None


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(SCRUBBED_PREFIXES) and k not in SCRUBBED_NAMES}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    if extra:
        env.update(extra)
    return env


@dataclass(frozen=True, slots=True)
class Credentials:
    access_key: str
    secret_key: str
    session_token: str | None = None
    region: str = REGION

    def aws_env(self, workdir: Path) -> dict[str, str]:
        """AWS_* for a child: these credentials and nothing from ~/.aws."""
        none = workdir / "no-aws-config"
        env = {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(none / "config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(none / "credentials"),
        }
        if self.session_token:
            env["AWS_SESSION_TOKEN"] = self.session_token
        return env

    @classmethod
    def from_environment(cls) -> Credentials:
        key = os.environ.get("AWS_ACCESS_KEY_ID")
        secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
        if not key or not secret:
            raise SystemExit("bench: --endpoint needs AWS_ACCESS_KEY_ID and "
                             "AWS_SECRET_ACCESS_KEY in the environment")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or REGION
        return cls(key, secret, os.environ.get("AWS_SESSION_TOKEN"), region)


def s3_client(endpoint_url: str, creds: Credentials, *, attempts: int = 3,
              pool: int = 32, checksums: str = "when_required") -> Any:
    """A hermetic boto3 S3 client: explicit credentials, path style, no ~/.aws, no proxies.

    ``checksums="when_supported"`` is boto3's own default: uploads carry a CRC32."""
    import boto3
    import botocore.session
    from botocore.config import Config

    core = botocore.session.Session()
    core.set_config_variable("config_file", os.devnull)
    core.set_config_variable("credentials_file", os.devnull)
    core.session_var_map["profile"] = (None, None, None, None)
    session = boto3.session.Session(botocore_session=core)
    return session.client(
        "s3", endpoint_url=endpoint_url, region_name=creds.region,
        aws_access_key_id=creds.access_key, aws_secret_access_key=creds.secret_key,
        aws_session_token=creds.session_token,
        config=Config(
            signature_version="s3v4", s3={"addressing_style": "path"},
            request_checksum_calculation=checksums,
            response_checksum_validation="when_required",
            retries={"total_max_attempts": attempts, "mode": "standard"},
            connect_timeout=5, read_timeout=120, proxies={}, max_pool_connections=pool,
        ),
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.hostname is None:
        raise ValueError(f"no host in endpoint {url!r}")
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


# --- /proc counters of the server ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcSample:
    cpu_s: float  # utime + stime (+ reaped children), seconds
    rchar: int  # bytes read by read-like syscalls (sockets and files)
    wchar: int  # bytes written by write-like syscalls (sockets and files)


def proc_sample(pid: int) -> ProcSample | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        io = Path(f"/proc/{pid}/io").read_text()
    except OSError:
        return None
    # Fields after the command name, which is in parentheses and may contain anything.
    rest = stat[stat.rindex(")") + 2:].split()
    utime, stime, cutime, cstime = (int(x) for x in rest[11:15])
    counters = dict(line.split(": ", 1) for line in io.splitlines() if ": " in line)
    return ProcSample(
        cpu_s=(utime + stime + cutime + cstime) / CLK_TCK,
        rchar=int(counters.get("rchar", "0")),
        wchar=int(counters.get("wchar", "0")),
    )


class BenchServer(Protocol):
    """A server the harness started and stops: rclone serve s3 or SeaweedFS (bench/weed.py)."""

    name: str
    creds: Credentials

    @property
    def endpoint_url(self) -> str: ...

    @property
    def backing_root(self) -> Path | None:
        """The directory holding one sub-directory per bucket, when objects are plain files
        there (data can be laid out before start); None: seed through S3."""

    def start(self) -> None: ...
    def sample(self) -> ProcSample | None: ...
    def housekeep(self) -> None: ...
    def stop(self) -> None: ...
    def version(self) -> str: ...


# --- our own rclone serve s3 ---------------------------------------------------------------


@dataclass(eq=False)
class LocalServer:
    binary: Path
    workdir: Path  # logs, config, cache
    root: Path  # one sub-directory per bucket
    creds: Credentials = field(default_factory=lambda: Credentials(ACCESS_KEY, SECRET_KEY))
    port: int = 0
    name: str = "rclone"
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path:
        return self.workdir / "rclone-serve.log"

    @property
    def backing_root(self) -> Path | None:
        return self.root

    def housekeep(self) -> None:
        """Nothing to reclaim: deleted objects are deleted files."""

    def sample(self) -> ProcSample | None:
        pid = self.pid
        return proc_sample(pid) if pid is not None else None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "rclone-serve.conf"
        conf.touch()
        last_error = "no attempt"
        for _ in range(3):  # a port free a moment ago may be taken before rclone binds it
            self.port = free_port()
            env = clean_env({"RCLONE_AUTH_KEY": f'"{self.creds.access_key},'
                                                f'{self.creds.secret_key}"'})
            argv = [str(self.binary), "serve", "s3", "--addr", f"{HOST}:{self.port}",
                    "--config", str(conf), "--cache-dir", str(self.workdir / "cache"),
                    "--log-level", "ERROR", "--stats", "0", str(self.root)]
            with self.log_path.open("ab") as log:
                log.write(f"\n=== {' '.join(argv)}\n".encode())
                log.flush()
                self._proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    env=env, cwd=self.workdir, start_new_session=True)
            try:
                if self._wait_ready():
                    return
                last_error = f"exited with code {self._proc.returncode}"
            except BaseException:
                self.stop()
                raise
            self.stop()
        raise RuntimeError(f"rclone serve s3 did not start ({last_error}); see {self.log_path}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT_S
        proc = self._proc
        assert proc is not None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            with contextlib.suppress(OSError), socket.create_connection(
                    (HOST, self.port), timeout=0.5) as sock:
                sock.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
                sock.settimeout(2)
                if sock.recv(5) == b"HTTP/":
                    return True
            time.sleep(0.05)
        raise TimeoutError(f"rclone serve s3 did not answer within {READY_TIMEOUT_S:.0f}s; "
                           f"see {self.log_path}")

    def stop(self) -> None:
        """SIGTERM our own process by pid, then SIGKILL if it lingers. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT_S)

    def version(self) -> str:
        return tool_version([str(self.binary), "version"])


def tool_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20,
                             env=clean_env(), check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


# --- bucket helpers ------------------------------------------------------------------------


def iter_objects(client: Any, bucket: str, prefix: str) -> Iterator[dict[str, Any]]:
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        yield from page.get("Contents", [])


def delete_prefix(client: Any, bucket: str, prefix: str) -> int:
    """Delete every object under ``prefix`` (which must end in '/'); returns the count."""
    if not prefix.endswith("/") or prefix == "/":
        raise ValueError(f"refusing to delete prefix {prefix!r}")
    keys = [o["Key"] for o in iter_objects(client, bucket, prefix)]
    for i in range(0, len(keys), 1000):
        batch = [{"Key": k} for k in keys[i:i + 1000]]
        client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
    return len(keys)


def ensure_bucket(client: Any, bucket: str) -> None:
    from botocore.exceptions import ClientError

    try:
        client.head_bucket(Bucket=bucket)
        return
    except ClientError:
        pass
    client.create_bucket(Bucket=bucket)
