"""SeaweedFS as a bench server: one ``weed server`` process (master, volume server, filer and
S3 gateway in one pid, so /proc gives the whole server's CPU), on 127.0.0.1 only.

Unlike rclone serve s3 it keeps objects in its own volume files, so data sets are uploaded
through S3 (untimed) instead of laid on disk, and it stores the checksums clients send.
Every service listens on its HTTP port and, for gRPC, on that port + 10000; weed also opens
gRPC Unix sockets at /tmp paths derived from those ports, removed after it stops. Ports are
picked below the kernel's ephemeral range, so no outgoing connection holds one.
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bench.server import (
    ACCESS_KEY,
    HOST,
    SECRET_KEY,
    Credentials,
    ProcSample,
    clean_env,
    proc_sample,
    tool_version,
)

GRPC_OFFSET = 10000
ROLES = ("master", "volume", "filer", "s3")
READY_TIMEOUT_S = 30.0  # start-up takes 3-7 s: the volume server heartbeats every 5 s
TERM_GRACE_S = 2.0  # the filer waits 15 s for its own subscribers on SIGTERM: not worth it
VOLUME_SIZE_MB = 1024  # small volumes: deleted pushes are reclaimed volume by volume
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def pick_ports() -> dict[str, int]:
    """A free HTTP port per role whose gRPC twin (+10000) is free too, below 32768."""
    chosen: dict[str, int] = {}
    taken: set[int] = set()
    for role in ROLES:
        for _ in range(500):
            port = random.randrange(10000, 32768 - GRPC_OFFSET)
            pair = {port, port + GRPC_OFFSET}
            if not pair & taken and all(_bindable(p) for p in pair):
                chosen[role] = port
                taken |= pair
                break
        else:
            raise RuntimeError(f"no free port pair for weed's {role}")
    return chosen


@dataclass(eq=False)
class WeedServer:
    binary: Path
    workdir: Path  # data, identities, log
    name: str = "seaweedfs"
    creds: Credentials = field(default_factory=lambda: Credentials(ACCESS_KEY, SECRET_KEY))
    ports: dict[str, int] = field(default_factory=dict)
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.ports['s3']}"

    @property
    def backing_root(self) -> Path | None:
        return None  # objects live in weed's volume files: seed through S3

    @property
    def log_path(self) -> Path:
        return self.workdir / "weed.log"

    def sample(self) -> ProcSample | None:
        return proc_sample(self._proc.pid) if self._proc is not None else None

    def _command(self) -> list[str]:
        identities = self.workdir / "s3.json"
        identities.write_text(json.dumps({"identities": [{
            "name": "bench", "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            "credentials": [{"accessKey": self.creds.access_key,
                             "secretKey": self.creds.secret_key}]}]}))
        p = self.ports
        return [
            str(self.binary), "-logtostderr", "server", f"-ip={HOST}", f"-ip.bind={HOST}",
            f"-dir={self.workdir / 'data'}", f"-master.port={p['master']}",
            "-master.telemetry=false", f"-master.volumeSizeLimitMB={VOLUME_SIZE_MB}",
            f"-volume.port={p['volume']}", "-volume.max=0", "-volume.preStopSeconds=0",
            "-filer", f"-filer.port={p['filer']}",
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
            "-s3", f"-s3.port={p['s3']}", f"-s3.config={identities}",
            f"-s3.localSocket={self.workdir / 's3.sock'}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
        ]

    def start(self) -> None:
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        self.ports = pick_ports()
        argv = self._command()
        with self.log_path.open("ab") as log:
            log.write(f"\n=== {' '.join(argv)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=clean_env(), cwd=self.workdir, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _get(self, port: int, path: str, timeout_s: float = 2.0) -> bytes | None:
        with contextlib.suppress(OSError):
            with _NO_PROXY.open(f"http://{HOST}:{port}{path}", timeout=timeout_s) as r:
                body: bytes = r.read()
                return body
        return None

    def _wait_ready(self) -> None:
        """S3 answering is not enough: until the master knows a volume server, writes fail
        with "no writable volumes"."""
        proc = self._proc
        assert proc is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"weed exited with code {proc.returncode}; "
                                   f"see {self.log_path}")
            if self._volume_server_known() and self._s3_answers():
                return
            time.sleep(0.1)
        raise TimeoutError(f"weed not ready within {READY_TIMEOUT_S:.0f}s; see {self.log_path}")

    def _volume_server_known(self) -> bool:
        body = self._get(self.ports["master"], "/dir/status")
        try:
            topo = json.loads(body or b"{}").get("Topology", {})
        except ValueError:
            return False
        return any(rack.get("DataNodes") for dc in topo.get("DataCenters") or []
                   for rack in dc.get("Racks") or [])

    def _s3_answers(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(
                (HOST, self.ports["s3"]), timeout=0.5) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            sock.settimeout(2)
            return sock.recv(5) == b"HTTP/"
        return False

    def housekeep(self) -> None:
        """Reclaim the space of deleted pushes now (untimed), not at weed's own 15 min
        vacuum in the middle of some later tool's timed run."""
        if self._proc is not None:
            self._get(self.ports["master"], "/vol/vacuum?garbageThreshold=0.01", 600.0)

    def stop(self) -> None:
        """SIGTERM our own pid, SIGKILL after a short grace; remove weed's /tmp sockets."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(TERM_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for role, port in self.ports.items():
            Path(f"/tmp/seaweedfs-{role}-grpc-{port + GRPC_OFFSET}.sock").unlink(
                missing_ok=True)

    def version(self) -> str:
        return tool_version([str(self.binary), "version"])
