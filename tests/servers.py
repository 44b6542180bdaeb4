"""Real S3-compatible servers and a throttling TCP proxy for the test-suite.

Everything here binds to 127.0.0.1 only.  Servers are separate processes (``moto_server``,
``rclone serve s3`` and SeaweedFS's ``weed server``) started from the binaries that live next
to ``sys.executable``; each is stopped by its own pid.  Nothing here is a mock: tests talk
real HTTP to them.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import boto3
import botocore.session
from botocore.config import Config
from botocore.exceptions import ClientError

HOST = "127.0.0.1"
ACCESS_KEY = "AKIASYNCDTESTKEY0001"
SECRET_KEY = "syncd-test-secret-0123456789abcdefghij"
REGION = "us-east-1"

READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
_POLL_INTERVAL_S = 0.05

_T = TypeVar("_T")

# Environment prefixes that must not leak from the developer's shell into server processes.
_SCRUBBED_ENV_PREFIXES = ("AWS_", "SYNCD_", "RCLONE_", "MOTO_", "WEED_")


def find_free_port(host: str = HOST) -> int:
    """Return a TCP port on ``host`` that was free a moment ago (bind to port 0, then release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_bindable(port: int, host: str = HOST) -> bool:
    """True if a listener could bind ``host:port`` now (TIME_WAIT leftovers do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def venv_binary(name: str) -> Path:
    """Locate an executable installed next to the running interpreter (the virtualenv's bin/)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return candidate
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name!r} not found next to {sys.executable} nor on PATH")
    return Path(found)


def s3_client_config(**overrides: Any) -> Config:
    """botocore config matching what the S3-compatible servers under test need."""
    settings: dict[str, Any] = {
        "region_name": REGION,
        "signature_version": "s3v4",
        "s3": {"addressing_style": "path"},
        "request_checksum_calculation": "when_required",
        "response_checksum_validation": "when_required",
        "retries": {"total_max_attempts": 3, "mode": "standard"},
        "connect_timeout": 5,
        "read_timeout": 30,
        # An explicit (empty) mapping stops botocore from picking up HTTP(S)_PROXY from the
        # environment: everything here is loopback.
        "proxies": {},
    }
    settings.update(overrides)
    return Config(**settings)


_session_lock = threading.Lock()
_shared_session: boto3.session.Session | None = None


def _boto3_session() -> boto3.session.Session:
    """One hermetic boto3 session for all test clients (creating clients from it is ~50x
    cheaper than from fresh sessions, which reload the service model every time).

    It ignores the developer's ~/.aws files and AWS_PROFILE; credentials and region are
    always passed explicitly per client.
    """
    global _shared_session
    if _shared_session is None:
        core = botocore.session.Session()
        core.set_config_variable("config_file", os.devnull)
        core.set_config_variable("credentials_file", os.devnull)
        # No AWS_PROFILE lookup: a missing named profile would raise ProfileNotFound.
        core.session_var_map["profile"] = (None, None, None, None)
        _shared_session = boto3.session.Session(botocore_session=core)
    return _shared_session


def make_s3_client(
    endpoint_url: str,
    *,
    access_key: str = ACCESS_KEY,
    secret_key: str = SECRET_KEY,
    config: Config | None = None,
) -> Any:
    """A boto3 S3 client with explicit credentials, region and config (thread-safe)."""
    with _session_lock:  # client creation from a shared session is not thread-safe
        return _boto3_session().client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=REGION,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=config if config is not None else s3_client_config(),
        )


def server_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_ENV_PREFIXES)}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(extra or {})
    return env


def log_tail(path: Path, limit: int = 4000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return "<no log>"
    return data[-limit:].decode("utf-8", errors="replace")


_live_servers: weakref.WeakSet[S3Server] = weakref.WeakSet()


@dataclass(eq=False)
class S3Server:
    """One S3-compatible server process on a fixed loopback port.

    ``stop()`` and ``start()`` may be called any number of times; ``start()`` always
    reuses the same ports (and, for rclone and SeaweedFS, the same on-disk data), so
    endpoint URLs handed out earlier stay valid across a restart.
    """

    name: str
    port: int
    command: list[str]
    log_path: Path
    root: Path | None = None
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    host: str = HOST
    # Every other port the process listens on, by role (SeaweedFS: "master", "filer", ... and
    # "filer.grpc", ...); ``start()`` refuses to run while any of them is taken.
    ports: dict[str, int] = field(default_factory=dict)
    # Extra environment for the process (on top of the scrubbed parent environment).
    env: dict[str, str] = field(default_factory=dict)
    # How long ``stop()`` waits after SIGTERM before it sends SIGKILL.
    term_grace: float = STOP_TIMEOUT_S
    # Files a killed process leaves behind (e.g. Unix sockets at fixed paths); removed by stop().
    leftovers: tuple[Path, ...] = ()
    # What else must hold, after ListBuckets answers, before the server counts as ready.
    ready_check: Callable[[], bool] | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """True if the process we started is still alive (says nothing about readiness)."""
        return self._proc is not None and self._proc.poll() is None

    def client(self, endpoint_url: str | None = None, **config_overrides: Any) -> Any:
        """boto3 S3 client for this server (or for ``endpoint_url``, e.g. a proxy in front)."""
        return make_s3_client(
            endpoint_url or self.endpoint_url,
            access_key=self.access_key,
            secret_key=self.secret_key,
            config=s3_client_config(**config_overrides),
        )

    def start(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Start the process (no-op if it is running) and wait until it answers S3 calls."""
        if self.running:
            self.wait_ready(timeout)
            return
        for port in (self.port, *self.ports.values()):
            if not port_is_bindable(port, self.host):
                # Otherwise the readiness probe could be answered by whoever holds it now.
                raise RuntimeError(f"cannot start {self.name}: {self.host}:{port} is in use")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"\n=== starting {self.name}: {' '.join(self.command)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=server_env(self.env),
                cwd=self.log_path.parent,
            )
        _live_servers.add(self)
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def ensure_running(self, timeout: float = READY_TIMEOUT_S) -> None:
        self.start(timeout)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Terminate our process by pid (SIGTERM, wait up to ``term_grace``, then SIGKILL).
        Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(min(timeout, self.term_grace))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        for path in self.leftovers:
            path.unlink(missing_ok=True)

    def restart(self, timeout: float = READY_TIMEOUT_S) -> None:
        self.stop()
        self.start(timeout)

    def answers(self, probe: Any | None = None) -> bool:
        """One quick ListBuckets round trip; True if the server answered it."""
        client = probe if probe is not None else self._probe_client()
        try:
            client.list_buckets()
        except Exception:
            return False
        return True

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Poll ListBuckets until it succeeds; fail fast if the process died."""
        deadline = time.monotonic() + timeout
        probe = self._probe_client()
        while True:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = None if proc is None else proc.returncode
                raise RuntimeError(
                    f"{self.name} server exited (code {code}) before answering on "
                    f"{self.endpoint_url}; log tail:\n{log_tail(self.log_path)}"
                )
            if self.answers(probe) and (self.ready_check is None or self.ready_check()):
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{self.name} server did not answer on {self.endpoint_url} within "
                    f"{timeout:.0f}s; log tail:\n{log_tail(self.log_path)}"
                )
            time.sleep(_POLL_INTERVAL_S)

    def _probe_client(self) -> Any:
        return self.client(
            connect_timeout=0.5,
            read_timeout=2,
            retries={"total_max_attempts": 1},
        )


def new_moto_server(port: int, workdir: Path) -> S3Server:
    """An (unstarted) in-memory moto server; all data is lost when it stops."""
    return S3Server(
        name="moto",
        port=port,
        # moto itself, with conditional writes atomic as on S3 (tests/moto_atomic.py)
        command=[sys.executable, str(Path(__file__).with_name("moto_atomic.py")),
                 "-H", HOST, "-p", str(port)],
        log_path=workdir / "moto.log",
    )


def new_rclone_server(port: int, root: Path, workdir: Path) -> S3Server:
    """An (unstarted) ``rclone serve s3`` over local directory ``root`` (buckets = subdirs)."""
    root.mkdir(parents=True, exist_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "rclone.conf"
    config.touch()  # an empty config: no "config file not found" notice, no user remotes
    command = [
        str(venv_binary("rclone")),
        "serve",
        "s3",
        "--addr",
        f"{HOST}:{port}",
        "--auth-key",
        f"{ACCESS_KEY},{SECRET_KEY}",
        "--config",
        str(config),
        "--cache-dir",
        str(workdir / "cache"),
        "--log-level",
        "ERROR",
        "--stats",
        "0",
        str(root),
    ]
    return S3Server(
        name="rclone",
        port=port,
        command=command,
        log_path=workdir / "rclone.log",
        root=root,
    )


@atexit.register
def _stop_leftover_servers() -> None:
    # Safety net only: fixtures stop their servers at session teardown.
    for server in list(_live_servers):
        with contextlib.suppress(Exception):
            server.stop()


def empty_and_delete_bucket(client: Any, bucket: str) -> None:
    """Best-effort removal of a bucket and everything in it (objects, pending uploads)."""
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=obj["Key"])
    try:
        uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    except ClientError:
        uploads = []  # rclone answers NoSuchUpload when a bucket has no pending uploads
    for upload in uploads:
        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    client.delete_bucket(Bucket=bucket)


# --------------------------------------------------------------------------------------
# Throttling / pausable TCP proxy
# --------------------------------------------------------------------------------------

_MAX_CHUNK = 64 * 1024
_CONTROL_TIMEOUT_S = 10.0


class _RateLimiter:
    """Shared pacing for all connections of one proxy: at most ``rate`` bytes per second.

    Callers pay for a chunk before it is forwarded; there is no burst credit, so an idle
    period never lets a later transfer exceed the rate.
    """

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self._next_free = 0.0

    def set_rate(self, rate: float | None) -> None:
        self.rate = rate
        self._next_free = 0.0

    def chunk_size(self) -> int:
        if self.rate is None:
            return _MAX_CHUNK
        # ~50 ms of data per chunk, so rate changes and pauses take effect quickly.
        return max(1, min(_MAX_CHUNK, int(self.rate / 20)))

    async def acquire(self, nbytes: int) -> None:
        rate = self.rate
        if rate is None:
            return
        now = asyncio.get_running_loop().time()
        self._next_free = max(now, self._next_free) + nbytes / rate
        delay = self._next_free - now
        if delay > 0:
            await asyncio.sleep(delay)


class ThrottleProxy:
    """TCP proxy 127.0.0.1:<port> -> 127.0.0.1:<target_port> running in its own thread.

    * ``set_rate(bytes_per_s | None)`` limits server->client bytes (aggregate over all
      connections); client->server is never throttled.
    * ``pause()`` stops all data movement and the handling of new connections: sockets
      stay open (new connects still complete in the kernel backlog) but nothing is read
      or forwarded until ``resume()``.  Bytes already handed to the kernel before the
      pause may still arrive.
    * ``drop_connections()`` aborts (RST) every open connection but keeps listening.
    * ``close()`` closes the listener and every connection, then stops the thread.
    """

    def __init__(
        self,
        target_port: int,
        rate_bytes_per_s: float | None = None,
        *,
        target_host: str = HOST,
        max_connections: int = 256,
    ) -> None:
        _check_rate(rate_bytes_per_s)
        self.target_host = target_host
        self.target_port = target_port
        self.max_connections = max_connections
        self.bytes_to_client = 0
        self.bytes_to_server = 0
        self.connections_accepted = 0
        self._limiter = _RateLimiter(rate_bytes_per_s)
        self._flowing: asyncio.Event | None = None
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._closed = False
        self._closing = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._run_loop, name=f"throttle-proxy->{target_port}", daemon=True
        )
        self._thread.start()
        try:
            self.port: int = self._call(self._start)
        except BaseException:
            self._stop_loop()
            raise

    # ---- public API (called from the test thread) ----------------------------------

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def rate(self) -> float | None:
        return self._limiter.rate

    @property
    def paused(self) -> bool:
        return self._flowing is not None and not self._flowing.is_set()

    @property
    def open_connections(self) -> int:
        return len(self._handlers)

    def set_rate(self, rate_bytes_per_s: float | None) -> None:
        _check_rate(rate_bytes_per_s)
        self._on_loop(self._limiter.set_rate, rate_bytes_per_s)

    def pause(self) -> None:
        self._on_loop(self._require_flowing().clear)

    def resume(self) -> None:
        self._on_loop(self._require_flowing().set)

    def drop_connections(self) -> None:
        self._on_loop(self._abort_all)

    def close(self) -> None:
        if self._closed:
            return
        try:
            self._call(self._shutdown)
        finally:
            self._closed = True
            self._stop_loop()

    def __enter__(self) -> ThrottleProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- plumbing ------------------------------------------------------------------

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    def _stop_loop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_CONTROL_TIMEOUT_S)

    def _call(self, coro_fn: Callable[[], Any]) -> Any:
        if self._closed:
            raise RuntimeError("proxy is closed")
        future = asyncio.run_coroutine_threadsafe(coro_fn(), self._loop)
        return future.result(_CONTROL_TIMEOUT_S)

    def _on_loop(self, fn: Callable[..., _T], *args: Any) -> _T:
        async def run() -> _T:
            return fn(*args)

        result: _T = self._call(run)
        return result

    def _require_flowing(self) -> asyncio.Event:
        if self._flowing is None:
            raise RuntimeError("proxy not started")
        return self._flowing

    async def _start(self) -> int:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._handle, HOST, 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _shutdown(self) -> None:
        # Wind handlers down without cancelling them (on 3.11, asyncio.start_server logs a
        # spurious error for a cancelled handler): abort every transport so pending reads
        # hit EOF, and wake whatever waits for ``resume()`` so it sees ``_closing``.
        self._closing = True
        if self._server is not None:
            self._server.close()
        self._abort_all()
        self._require_flowing().set()
        handlers = list(self._handlers)
        if handlers:
            _, stuck = await asyncio.wait(handlers, timeout=_CONTROL_TIMEOUT_S / 2)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def _abort_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()

    async def _wait_flowing(self) -> bool:
        """Block while paused; False once the proxy is shutting down."""
        await self._require_flowing().wait()
        return not self._closing

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(client_w)
        upstream_w: asyncio.StreamWriter | None = None
        try:
            if len(self._handlers) > self.max_connections:
                return
            if not await self._wait_flowing() or client_w.is_closing():
                return
            try:
                upstream_r, upstream_w = await asyncio.open_connection(
                    self.target_host, self.target_port
                )
            except OSError:
                return
            self._writers.add(upstream_w)
            if self._closing:
                return
            self.connections_accepted += 1
            both = (client_w, upstream_w)
            await asyncio.gather(
                self._pump(client_r, upstream_w, both, to_client=False),
                self._pump(upstream_r, client_w, both, to_client=True),
            )
        except BaseException:
            for writer in (client_w, upstream_w):
                if writer is not None:
                    writer.transport.abort()
            raise
        finally:
            self._handlers.discard(task)
            for writer in (client_w, upstream_w):
                if writer is not None:
                    self._writers.discard(writer)
                    writer.close()  # no-op if already aborted; buffers are drained by now

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        both: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
        *,
        to_client: bool,
    ) -> None:
        try:
            while await self._wait_flowing():
                data = await reader.read(self._limiter.chunk_size() if to_client else _MAX_CHUNK)
                if not data:
                    if not writer.is_closing() and writer.can_write_eof():
                        writer.write_eof()
                    return
                if to_client:
                    await self._limiter.acquire(len(data))
                if not await self._wait_flowing():
                    return
                # Count before writing: once the peer has the bytes, the counter shows them.
                if to_client:
                    self.bytes_to_client += len(data)
                else:
                    self.bytes_to_server += len(data)
                writer.write(data)
                await writer.drain()
        except (OSError, RuntimeError):
            # One side failed: tear the pair down so the other pump sees EOF too.
            for w in both:
                w.transport.abort()


def _check_rate(rate: float | None) -> None:
    if rate is not None and not rate > 0:
        raise ValueError(f"rate must be positive bytes/s or None, got {rate!r}")


def env_names_with_prefix(
    prefixes: tuple[str, ...], environ: Mapping[str, str] | None = None
) -> list[str]:
    """Names of environment variables starting with any of ``prefixes``."""
    source = os.environ if environ is None else environ
    return [name for name in source if name.startswith(prefixes)]
