"""Running `syncd run` for real in tests: configs with fast timings, the daemon as a
subprocess with its JSON log in a file, and a bucket filled the way a pusher fills it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from syncd.artifacts import FileRecord, Manifest, manifest_key
from syncd.listing import normalize_etag
from syncd.verify import OWN_ALGO, hash_bytes
from tests.mirrors import SYNCD, MiB, env, wait_for, write_config
from tests.servers import S3Server

FAST = """
[lease]
ttl_s = 3
renew_interval_s = 0.3
renew_deadline_s = 2
skew_margin_s = 0.5
[daemon]
poll_interval_s = 0.3
grace_s = 1
retry_max_s = 1
"""
ART = 'artifacts = ["*"]\nkeep_versions_s = 0'


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    log: Path

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                e = json.loads(line)
                if name is None or e.get("event") == name:
                    out.append(e)
        return out

    def http(self, timeout: float = 30) -> str:
        """The base URL of the daemon's HTTP endpoint, from its `daemon_started` line."""
        started = wait_for(lambda: self.events("daemon_started"), timeout, "daemon_started")
        return f"http://{started[0]['http']}"

    def get(self, path: str) -> tuple[int, bytes]:
        """Status and body of GET `path` on the daemon's HTTP endpoint (503 is an answer)."""
        try:
            with urllib.request.urlopen(f"{self.http()}{path}", timeout=10) as reply:
                return reply.status, reply.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def metric(self, name: str, **labels: str) -> float | None:
        """The value of one sample the daemon exports now, or None if it has none."""
        text = self.get("/metrics")[1].decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v
                                               for k, v in labels.items()):
                    return float(sample.value)
        return None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)


@dataclass
class Setup:
    server: S3Server
    bucket: str
    tmp: Path
    daemons: list[Daemon] = field(default_factory=list)

    @property
    def client(self) -> Any:
        return self.server.client()

    def config(self, direction: str, vol: Path, *, extra: str = "", endpoint: str | None = None,
               name: str = "c.toml", prefix: str = "models", transfer: str = "") -> Path:
        lease = "volume"  # rclone cannot hold an S3 lease; S3 leases are tested elsewhere
        return write_config(self.tmp / name, endpoint or self.server.endpoint_url, self.bucket,
                            direction=direction, root=vol, lease=lease, top=FAST, extra=extra,
                            prefix=prefix, transfer=transfer)

    def start(self, cfg: Path, name: str = "d", *, log_level: str = "info",
              **extra_env: str) -> Daemon:
        log = self.tmp / f"{name}.log"
        with log.open("ab") as err:
            proc = subprocess.Popen([SYNCD, "--log-level", log_level, "run", "-c", str(cfg)],
                                    env=env(**extra_env),
                                    stdout=subprocess.DEVNULL, stderr=err)
        d = Daemon(proc, log)
        self.daemons.append(d)
        return d

    def put(self, key: str, data: bytes) -> str:
        resp = self.client.put_object(Bucket=self.bucket, Key=f"models/{key}", Body=data)
        return normalize_etag(resp["ETag"]) or ""

    def publish_artifact(self, name: str, files: dict[str, bytes], pause: float = 0.0) -> None:
        """Upload an artifact the way a pusher does: every file, then its manifest last."""
        records = {}
        for rel, data in files.items():
            etag = self.put(f"{name}/{rel}", data)
            records[rel] = FileRecord(len(data), etag,
                                      f"{OWN_ALGO}:{hash_bytes(data, [OWN_ALGO])[OWN_ALGO]}")
            time.sleep(pause)
        self.put(manifest_key(name), Manifest(name, records).to_bytes())


def version_files(tag: str, *, shards: int) -> dict[str, bytes]:
    """Every file starts with its version tag, so a reader can tell versions apart."""
    head = tag.encode() + b":"
    files = {"config.json": head + b'{"layers": 2}', f"tokenizer-{tag}.json": head + b"{}"}
    for i in range(shards):
        files[f"model-{i:05d}.safetensors"] = head + os.urandom(MiB + 1000 * i)
    return files
