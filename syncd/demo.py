"""`syncd demo`: the whole job, end to end, against a local S3-compatible server.

It starts `rclone serve s3` (moto when rclone is missing) on 127.0.0.1 with throw-away
credentials, seeds a bucket with a small deterministic model, writes a config whose pull mirror
fills a directory standing in for /runpod-volume/models and whose push mirror sends a training
checkpoint back, then runs the real binary as an operator would: the daemon `syncd run`,
`syncd wait tiny-llama` until the model is published on the volume, a look at the bucket
until the checkpoint's manifest is there, SIGTERM to the daemon, then `syncd check`. The
server is stopped by its own pid whatever happens.

Everything lives under one directory. rclone keeps the bucket on disk there, so a second run
finds bucket, volume and state record as the first left them and copies nothing: idempotence,
shown. (moto keeps its bucket in memory, so under moto the checkpoint is pushed on every run.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import struct
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from math import prod
from pathlib import Path

from syncd import config as config_mod
from syncd.artifacts import MANIFEST_NAME
from syncd.errors import NotFound, SyncdError
from syncd.keys import RESERVED_DIR
from syncd.listing import Algo, Checksum, Entry
from syncd.stores.base import OpenFence
from syncd.stores.s3 import S3Store
from syncd.verify import hash_bytes

SEED = 20240501
BUCKET = "syncd-demo"
DATACENTER = "LOCAL"
MODEL_PREFIX = "models"
CHECKPOINT_PREFIX = "checkpoints"
CHECKPOINT_STEP = "run-001/step-000100"
MODEL = "tiny-llama"
HOST = "127.0.0.1"
ACCESS_KEY = "AKIASYNCDDEMO0000001"
REGION = "us-east-1"
MiB = 1 << 20

READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
SEED_TIMEOUT_S = 120.0
STEP_TIMEOUT_S = 300.0

Echo = Callable[[str], None]
Snapshot = dict[str, tuple[int, object]]  # key -> (size, what changes when it is rewritten)


class DemoError(SyncdError):
    """The demo's own harness failed (no server binary, the server would not start, ...)."""


@dataclass(frozen=True, slots=True)
class Layout:
    """Where the demo keeps everything, under one directory."""

    config: Path  # the generated syncd.toml
    bucket_root: Path  # rclone's storage: one directory per bucket
    server_dir: Path  # the server's config, cache and log
    volume: Path  # the pull mirror's root: stands in for /runpod-volume/models
    checkpoints: Path  # the push mirror's root: where a training job writes

    @classmethod
    def at(cls, directory: Path) -> Layout:
        root = directory.resolve()
        return cls(root / "syncd.toml", root / "s3", root / "server",
                   root / "volume" / MODEL_PREFIX, root / "checkpoints")


# --- sample data -----------------------------------------------------------------------------

def _safetensors(rng: random.Random, tensors: dict[str, tuple[int, ...]]) -> bytes:
    """A valid safetensors file of BF16 tensors filled with incompressible PRNG bytes."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in tensors.items():
        size = prod(shape) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads its header to 8 bytes with spaces
    return struct.pack("<Q", len(raw)) + raw + rng.randbytes(offset)


def _json(value: object) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


def sample_model(seed: int = SEED) -> dict[str, bytes]:
    """The seeded model, keyed relative to the pull mirror's root; same seed, same bytes. Both
    ~8 MiB shards exceed the demo's 5 MiB multipart threshold: they move as ranged parts."""
    rng = random.Random(seed)
    hidden, vocab = 512, 8192
    shards: dict[str, dict[str, tuple[int, ...]]] = {
        "model-00001-of-00002.safetensors": {"model.embed_tokens.weight": (vocab, hidden)},
        "model-00002-of-00002.safetensors": {"lm_head.weight": (vocab, hidden),
                                             "model.norm.weight": (hidden,)},
    }
    files = {f"tiny-llama/{name}": _safetensors(rng, t) for name, t in shards.items()}
    files["tiny-llama/model.safetensors.index.json"] = _json({
        "metadata": {"total_size": sum(prod(s) * 2 for t in shards.values() for s in t.values())},
        "weight_map": {tensor: name for name, t in shards.items() for tensor in t},
    })
    files["tiny-llama/config.json"] = _json({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
        "vocab_size": vocab, "num_hidden_layers": 0, "torch_dtype": "bfloat16",
    })
    tokens = {f"<0x{i:02X}>": i for i in range(256)} | {f"\u2581w{i}": i for i in range(256, vocab)}
    files["tiny-llama/tokenizer.json"] = _json(
        {"version": "1.0", "model": {"type": "BPE", "vocab": tokens, "merges": []}})
    return files


def sample_checkpoint(seed: int = SEED) -> dict[str, bytes]:
    """What a training job left on the volume, keyed relative to the push mirror's root."""
    rng = random.Random(seed + 1)
    step = CHECKPOINT_STEP
    return {
        f"{step}/adapter_model.safetensors": _safetensors(
            rng, {"lora_A.weight": (16, 8192), "lora_B.weight": (8192, 16)}),
        f"{step}/trainer_state.json": _json({"global_step": 100, "epoch": 0.5, "seed": seed}),
    }


def _write_changed(root: Path, files: Mapping[str, bytes]) -> None:
    """Write (atomically) only files whose bytes differ: a rerun is not a new checkpoint."""
    for key, data in files.items():
        path = root / key
        with contextlib.suppress(OSError):
            if path.read_bytes() == data:
                continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)


def config_text(layout: Layout, endpoint_url: str, bucket: str = BUCKET) -> str:
    def q(text: str) -> str:
        return json.dumps(text)  # a JSON string is a valid TOML basic string

    return f"""\
# Written by `syncd demo` on every run; credentials come from AWS_*, never from this file.
datacenter = {q(DATACENTER)}

[s3]
endpoint_url = {q(endpoint_url)}
region = {q(REGION)}
addressing_style = "path"
connect_timeout_s = 2.0

[transfer]
part_size = {5 * MiB}            # 5 MiB: the shards move as parallel ranged parts
multipart_threshold = {5 * MiB}
min_free_bytes = 0

[[mirrors]]
name = "models"
bucket = {q(bucket)}
prefix = {q(MODEL_PREFIX)}
direction = "pull"
delete = true
# Every top-level directory is one model, published whole: workers see a version or the next.
artifacts = ["*"]
# A version with no manifest is built once its listing stays unchanged this long (default
# 120 s, for uploads that take minutes per shard); the demo uploads each model in one go.
settle_s = 3.0
volumes = {{ {DATACENTER} = {q(str(layout.volume))} }}

[[mirrors]]
name = "checkpoints"
bucket = {q(bucket)}
prefix = {q(CHECKPOINT_PREFIX)}
direction = "push"
include = ["**/*.safetensors", "**/*.json"]
# A push mirror's lease defaults to an object in the bucket, which needs a server that
# honours conditional writes; the demo's local rclone does not, so it leases the volume.
lease = "volume"
# Every step directory is one checkpoint: pushed once all its files are quiet for a second,
# then its manifest.
artifacts = ["*/step-*"]
settle_s = 1.0
volumes = {{ {DATACENTER} = {q(str(layout.checkpoints))} }}
"""


# --- the local server ------------------------------------------------------------------------

def find_server() -> tuple[str, Path]:
    """("rclone" | "moto", binary): next to the interpreter (a venv) or on PATH; rclone first."""
    for kind, name in (("rclone", "rclone"), ("moto", "moto_server")):
        beside = Path(sys.executable).parent / name
        if beside.is_file() and os.access(beside, os.X_OK):
            return kind, beside
        if found := shutil.which(name):
            return kind, Path(found)
    raise DemoError("no local S3-compatible server found: install rclone or moto[server] "
                    "(`./dev demo` does), or pass --endpoint URL")


@dataclass(slots=True)
class LocalServer:
    kind: str
    binary: Path
    layout: Layout
    secret: str
    port: int = 0
    proc: asyncio.subprocess.Process | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.layout.server_dir / f"{self.kind}.log"

    def _launch_args(self) -> tuple[list[str], dict[str, str], int]:
        with socket.socket() as sock:  # a port that was free a moment ago
            sock.bind((HOST, 0))
            self.port = sock.getsockname()[1]
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AWS_", "RCLONE_", "MOTO_"))}
        log = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        if self.kind == "moto":
            return [str(self.binary), "-H", HOST, "-p", str(self.port)], env, log
        conf = self.layout.server_dir / "rclone.conf"
        conf.touch()  # empty: no user remotes, no "config file not found" notice
        # From the environment, not argv, so `ps` does not show the secret; rclone reads a
        # list flag's variable as CSV, hence the quotes around "key,secret".
        env["RCLONE_AUTH_KEY"] = f'"{ACCESS_KEY},{self.secret}"'
        return [str(self.binary), "serve", "s3", "--addr", f"{HOST}:{self.port}",
                "--config", str(conf), "--cache-dir", str(self.layout.server_dir / "cache"),
                "--log-level", "ERROR", "--stats", "0", str(self.layout.bucket_root)], env, log

    async def start(self) -> None:
        for _ in range(3):  # a port free a moment ago can be taken before the server binds it
            command, env, log = self._launch_args()
            try:
                self.proc = await asyncio.create_subprocess_exec(
                    *command, stdin=asyncio.subprocess.DEVNULL, stdout=log,
                    stderr=asyncio.subprocess.STDOUT, env=env, cwd=self.layout.server_dir)
            finally:
                os.close(log)
            if await self._ready(self.proc):
                return
            await self.stop()
        raise DemoError(f"{self.kind} exited before answering on {HOST} (log: {self.log_path})")

    async def _ready(self, proc: asyncio.subprocess.Process) -> bool:
        """Poll until the server answers HTTP; False if it exits first (port taken)."""
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                while proc.returncode is None:
                    with contextlib.suppress(OSError, TimeoutError):
                        if (await _http(self.port, "GET /")).startswith(b"HTTP/"):
                            return True
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise DemoError(f"{self.kind} did not answer on {self.endpoint_url} within "
                            f"{READY_TIMEOUT_S:.0f}s (log: {self.log_path})") from None
        return False

    async def stop(self) -> None:
        """Terminate our own process by its pid; kill it if it does not exit in time."""
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def create_bucket(self, bucket: str) -> None:
        """rclone's buckets are directories, made before it started; moto takes a bare PUT."""
        if self.kind == "moto":
            line = await _http(self.port, f"PUT /{bucket}")
            if b" 200 " not in line and b" 409 " not in line:
                raise DemoError(f"moto refused to create bucket {bucket!r}: {line!r}")


async def _http(port: int, request: str) -> bytes:
    """The status line answering one bare HTTP/1.0 request ("GET /") on loopback."""
    async with asyncio.timeout(2):
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            writer.write(f"{request} HTTP/1.0\r\nHost: {HOST}:{port}\r\n"
                         "Content-Length: 0\r\n\r\n".encode())
            await writer.drain()
            return await reader.readline()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def _serving(layout: Layout, endpoint: str | None, echo: Echo
                   ) -> AsyncIterator[LocalServer | None]:
    if endpoint:
        echo(f"demo: using the S3 endpoint {endpoint} (credentials from the AWS chain)")
        yield None
        return
    kind, binary = find_server()
    server = LocalServer(kind, binary, layout, secrets.token_hex(24))
    try:
        await server.start()
        echo(f"demo: {kind} S3 server on {server.endpoint_url} (log {server.log_path})")
        yield server
    finally:
        await server.stop()


# --- the bucket, in process ------------------------------------------------------------------

class _Bytes:
    """In-memory bytes as a Source, so seeding goes through syncd's own S3 store."""

    def __init__(self, key: str, data: bytes) -> None:
        self.key = key
        self.size = len(data)
        self._data = data

    async def read(self, start: int = 0, end: int | None = None) -> AsyncGenerator[bytes, None]:
        yield self._data[start:end]

    async def vouched(self) -> None:
        return None

    async def digest(self, algo: Algo) -> Checksum:
        return Checksum(algo, hash_bytes(self._data, [algo])[algo])

    async def identity(self) -> Entry:
        return Entry(self.key, self.size)


@contextlib.asynccontextmanager
async def _bucket(cfg: config_mod.Config, bucket: str, env: Mapping[str, str]
                  ) -> AsyncIterator[S3Store]:
    """The whole bucket, seen under the environment the children get (AWS_* included); it
    uploads in single PUTs (under 64 MiB): seeding is not what the demo shows."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    transfer = config_mod.TransferConfig.model_validate(
        {"concurrency": 4, "multipart_threshold": 64 * MiB})
    try:
        async with S3Store(cfg.s3, transfer, bucket, "") as store:
            try:
                await store.check()
            except NotFound:
                raise NotFound(f"bucket {bucket!r} does not exist at {cfg.s3.endpoint_url}",
                               hint="create it first, or pass --bucket NAME") from None
            yield store
    finally:
        os.environ.clear()
        os.environ.update(saved)


async def _listed(store: S3Store, prefix: str) -> Snapshot:
    """Objects under `prefix`, keyed relative to it: (size, ETag)."""
    async with asyncio.timeout(SEED_TIMEOUT_S):
        entries = (await store.list()).entries
    n = len(prefix) + 1
    return {k[n:]: (e.size, e.etag) for k, e in entries.items() if k.startswith(f"{prefix}/")}


async def seed(store: S3Store, prefix: str, files: Mapping[str, bytes]) -> int:
    """Upload what the bucket does not hold yet under `prefix`; returns how many were written."""
    have = await _listed(store, prefix)
    written = 0
    async with asyncio.timeout(SEED_TIMEOUT_S):
        for rel, data in sorted(files.items()):
            key = f"{prefix}/{rel}"
            if rel in have and have[rel][0] == len(data):
                claim = await store.checksum(Entry(key, len(data)))
                if claim is not None and hash_bytes(data, [claim.algo])[claim.algo] == claim.value:
                    continue
            staged = await store.stage(_Bytes(key, data), frozenset())
            await store.publish(staged, OpenFence())
            written += 1
    return written


# --- the binary ------------------------------------------------------------------------------

def _child_env(server: LocalServer | None) -> dict[str, str]:
    """The user's environment minus SYNCD_* (but the log format and the HTTP address); with a
    local server, also minus AWS_* settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SYNCD_") or k in ("SYNCD_LOG_FORMAT", "SYNCD_HTTP__LISTEN")}
    if server is None:
        return env
    env = {k: v for k, v in env.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=server.secret,
               AWS_DEFAULT_REGION=REGION, AWS_EC2_METADATA_DISABLED="true",
               AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    env["NO_PROXY"] = env["no_proxy"] = ",".join(
        p for p in (env.get("NO_PROXY"), "127.0.0.1,localhost") if p)
    return env


async def _spawn(args: list[str], env: Mapping[str, str], echo: Echo
                 ) -> asyncio.subprocess.Process:
    """Start the real `syncd` as an operator would."""
    script = Path(sys.executable).parent / "syncd"
    command = [str(script)] if script.is_file() else [
        sys.executable, "-c", "from syncd.cli import main; main()"]
    echo(f"$ syncd {' '.join(args)}")
    return await asyncio.create_subprocess_exec(
        *command, "--log-level", "warning", *args, env=dict(env),
        stdin=asyncio.subprocess.DEVNULL)


async def _finish(proc: asyncio.subprocess.Process, what: str) -> int:
    """Its exit code, bounded in time; killed if it overstays."""
    try:
        async with asyncio.timeout(STEP_TIMEOUT_S):
            return await proc.wait()
    except TimeoutError:
        raise DemoError(f"`syncd {what}` did not finish within {STEP_TIMEOUT_S:.0f}s") from None
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _syncd(args: list[str], env: Mapping[str, str], echo: Echo) -> int:
    return await _finish(await _spawn(args, env, echo), args[0])


def _listen(env: dict[str, str]) -> str:
    """The daemon's HTTP address: the user's, else a loopback port that was free just now."""
    listen = env.get("SYNCD_HTTP__LISTEN", "")
    if not listen or listen.endswith(":0"):
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            listen = f"{HOST}:{sock.getsockname()[1]}"
    env["SYNCD_HTTP__LISTEN"] = listen
    return listen


def _fetch(url: str) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def _show_operations(listen: str, echo: Echo) -> None:
    """What an operator's probes and Prometheus see of the running daemon."""
    base = f"http://{listen.replace('0.0.0.0', HOST)}"
    for _ in range(int(STEP_TIMEOUT_S / 0.1)):  # `syncd wait` may answer from an earlier
        try:                                    # run's status before this daemon listens
            code, body = await asyncio.to_thread(_fetch, f"{base}/readyz")
            break
        except OSError:
            await asyncio.sleep(0.1)
    else:
        raise DemoError(f"the daemon's HTTP endpoint {base} did not answer")
    ready = json.loads(body)
    arts = [f"{m}/{a}: {s['state']}" for m, st in ready["mirrors"].items()
            for a, s in st["artifacts"].items()]
    echo(f"demo: GET {base}/readyz -> {code}, ready={ready['ready']} ({', '.join(arts)})")
    _, metrics = await asyncio.to_thread(_fetch, f"{base}/metrics")
    shown = [ln for ln in metrics.decode().splitlines()
             if ln.startswith(("syncd_transferred_bytes_total", "syncd_lease_held",
                               "syncd_replication_lag_seconds"))]
    echo(f"demo: GET {base}/metrics (Prometheus), a few of its lines:")
    for line in shown:
        echo(f"  {line}")


async def _until_pushed(store: S3Store, key: str) -> Snapshot:
    """The push mirror's objects once `key` (a manifest, written last) is among them."""
    for _ in range(int(STEP_TIMEOUT_S / 0.2)):  # polling a server: no event to wait on
        listed = await _listed(store, CHECKPOINT_PREFIX)
        if key in listed:
            return listed
        await asyncio.sleep(0.2)
    raise DemoError(f"the checkpoint was not pushed within {STEP_TIMEOUT_S:.0f}s")


# --- the run ---------------------------------------------------------------------------------

def _on_volume(root: Path) -> Snapshot:
    """Files under a mirror root as a worker sees them (through artifact links), not
    syncd's own: key -> (size, (inode, mtime))."""
    out: Snapshot = {}
    for top, dirs, files in os.walk(root, followlinks=True):
        if Path(top) == root and RESERVED_DIR in dirs:
            dirs.remove(RESERVED_DIR)
        for name in files:
            p = Path(top) / name
            st = p.stat()
            out[p.relative_to(root).as_posix()] = (st.st_size, (st.st_ino, st.st_mtime_ns))
    return dict(sorted(out.items()))


def _report(before: Snapshot, after: Snapshot, echo: Echo) -> None:
    for key, (size, ident) in sorted(after.items()):
        old = before.get(key)
        status = "new" if old is None else "unchanged" if old[1] == ident else "replaced"
        shown = f"{size / MiB:.1f} MiB" if size >= MiB else f"{size / 1024:.1f} KiB"
        echo(f"  {key:<48} {shown:>10}  {status}")


def _check_bytes(root: Path, expected: Mapping[str, bytes], echo: Echo) -> None:
    if wrong := [k for k, data in sorted(expected.items())
                 if not (root / k).is_file() or (root / k).read_bytes() != data]:
        raise DemoError(f"the volume does not hold the seeded bytes of {', '.join(wrong)}")
    echo(f"  all {len(expected)} files hold exactly the seeded bytes")


def _prepare(layout: Layout, local_bucket: str | None) -> None:
    """Directories, and the checkpoint a training job would have left on the volume."""
    more = [layout.bucket_root / local_bucket] if local_bucket else []
    for d in (layout.volume, layout.checkpoints, layout.server_dir, *more):
        d.mkdir(parents=True, exist_ok=True)
    _write_changed(layout.checkpoints, sample_checkpoint())


def _write_config(layout: Layout, url: str, bucket: str) -> config_mod.Config:
    text = config_text(layout, url, bucket)
    cfg = config_mod.parse(text, source=str(layout.config), env={})  # fail before writing
    layout.config.write_text(text, encoding="utf-8")
    return cfg


async def run(directory: Path, *, endpoint: str | None = None, bucket: str = BUCKET,
              echo: Echo) -> int:
    """Seed, sync both ways, report, check. Returns the exit code of the step that failed."""
    endpoint = endpoint or os.environ.get("SYNCD_S3__ENDPOINT_URL") or None
    layout = Layout.at(directory)
    config_mod.parse(config_text(layout, endpoint or f"http://{HOST}", bucket),
                     source="syncd demo", env={})  # bad --bucket/--endpoint: fail early
    _prepare(layout, None if endpoint else bucket)
    model = sample_model()
    async with _serving(layout, endpoint, echo) as server:
        cfg = _write_config(layout, server.endpoint_url if server else str(endpoint), bucket)
        env = _child_env(server)
        if server is not None:
            await server.create_bucket(bucket)
        async with _bucket(cfg, bucket, env) as store:
            written = await seed(store, MODEL_PREFIX, model)
            echo(f"demo: s3://{bucket}/{MODEL_PREFIX}/ holds the sample model "
                 f"({written} object(s) uploaded now, {len(model) - written} already there)")
            pulled = _on_volume(layout.volume)
            pushed = await _listed(store, CHECKPOINT_PREFIX)
            listen = _listen(env)
            daemon = await _spawn(["run", "-c", str(layout.config)], env, echo)
            try:
                if code := await _syncd(["wait", MODEL, "--timeout", str(STEP_TIMEOUT_S),
                                         "-c", str(layout.config)], env, echo):
                    echo(f"demo: `syncd wait` exited with {code}")
                    return code
                echo(f"demo: the daemon pulled s3://{bucket}/{MODEL_PREFIX}/ -> "
                     f"{layout.volume} (stands in for /runpod-volume/models); {MODEL} is "
                     "published whole, behind one link")
                _report(pulled, _on_volume(layout.volume), echo)
                _check_bytes(layout.volume, model, echo)
                await _show_operations(listen, echo)
                manifest = f"{CHECKPOINT_STEP}/{MANIFEST_NAME}"
                now = await _until_pushed(store, manifest)
                echo(f"demo: the daemon pushed {layout.checkpoints} -> "
                     f"s3://{bucket}/{CHECKPOINT_PREFIX}/ once the checkpoint settled, "
                     "its manifest last")
                _report(pushed, now, echo)
            finally:
                daemon.send_signal(signal.SIGTERM)
                stopped = await _finish(daemon, "run")
            echo(f"demo: SIGTERM: the daemon released its leases and exited with {stopped}")
            if stopped:
                return stopped
        if code := await _syncd(["check", "-c", str(layout.config)], env, echo):
            echo(f"demo: `syncd check` exited with {code}")
            return code
    again = ("moto keeps its bucket in memory: a rerun pushes the checkpoint again"
             if server is not None and server.kind == "moto" else "a rerun copies nothing")
    echo(f"demo: done; {again}. Config: {layout.config}")
    return 0
