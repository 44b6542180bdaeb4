"""Real model loaders reading a pulled volume while its bucket changes (issue 19).

A reader runs as its own process (`python tests/loaders.py KIND ROOT OUT STOP`), the way a
GPU worker does, and loads the model in a tight loop until STOP exists. Each load notes which
version every file it read belongs to; OUT gets one JSON line whenever the outcome changes,
and a last line counting every distinct outcome, so a test can say "zero mixed loads, zero
failures" over thousands of loads without logging each. The uploaders here are plain boto3,
as users upload: no marker, no manifest.

Run as a script, this file imports only the standard library and the loaders' own packages
(no `tests.*`), so the reader sees the volume exactly as a worker would.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

HF_REPO = "org/name"
HF_DIR = "models--org--name"
SHARDS = 3


def hf_revision(version: int) -> str:
    """A commit hash, as `refs/main` holds it and `snapshots/` names a directory."""
    return hashlib.sha1(f"rev-{version}".encode()).hexdigest()


def safetensors_file(version: int, size_bytes: int, tag: str) -> bytes:
    """A safetensors file whose metadata and every element say `version`."""
    import numpy as np
    from safetensors.numpy import save

    data = np.full(size_bytes // 4, version, dtype=np.int32)
    return save({"w": data}, metadata={"version": str(version), "tag": tag})


def hf_snapshot(version: int, size_bytes: int = 3 << 20) -> dict[str, bytes]:
    """The plain files of one snapshot (a bucket copy of a cache holds no symlinks to blobs)."""
    rev = hf_revision(version)
    return {
        "config.json": json.dumps({"version": version, "rev": rev}).encode(),
        "tokenizer.json": json.dumps({"version": version, "vocab": {}}).encode(),
        "model.safetensors": safetensors_file(version, size_bytes, rev),
    }


def shard_name(i: int) -> str:
    return f"model-{i + 1:05d}-of-{SHARDS:05d}.safetensors"


def sharded_model(version: int, shard_bytes: int = 2 << 20) -> dict[str, bytes]:
    """A multi-shard model, shards first and config.json last (the order a plain uploader
    keeps); every shard keeps its name from version to version, only its bytes change."""
    files = {shard_name(i): safetensors_file(version, shard_bytes + 4096 * i, shard_name(i))
             for i in range(SHARDS)}
    files["config.json"] = json.dumps({"version": version, "shards": SHARDS}).encode()
    return files


def upload(client: Any, bucket: str, prefix: str, files: dict[str, bytes],
           pause_s: float = 0.0) -> None:
    """Plain boto3 PUTs in the order given, `pause_s` apart (a large shard takes a while)."""
    for rel, data in files.items():
        client.put_object(Bucket=bucket, Key=f"{prefix}/{rel}", Body=data)
        time.sleep(pause_s)


# --- the loaders (run in the reader process) ------------------------------------------------


def _tensor_version(path: Path) -> set[int]:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata() or {}
        w = f.get_tensor("w")
        return {int(meta["version"]), int(w.min()), int(w.max())}


def load_sharded(link: Path) -> list[int]:
    """Load the model the README's way: resolve the artifact's link once, read from there."""
    where = Path(os.path.realpath(link))
    versions = [json.loads((where / "config.json").read_bytes())["version"]]
    for i in range(SHARDS):
        versions.extend(sorted(_tensor_version(where / shard_name(i))))
    return versions


def load_hf() -> list[int]:
    """Load offline from the cache (HF_HUB_CACHE, HF_HUB_OFFLINE=1) as transformers does:
    `refs/main` names the snapshot, the snapshot's files are read from there."""
    from huggingface_hub import snapshot_download

    where = Path(snapshot_download(HF_REPO, local_files_only=True))
    config = json.loads((where / "config.json").read_bytes())
    tokenizer = json.loads((where / "tokenizer.json").read_bytes())
    if hf_revision(config["version"]) != where.name:
        raise ValueError(f"snapshot {where.name} holds the config of version {config['version']}")
    return [config["version"], tokenizer["version"],
            *sorted(_tensor_version(where / "model.safetensors"))]


def read_loop(kind: str, root: Path, out: Path, stop: Path) -> None:
    outcomes: Counter[str] = Counter()
    last = None
    with out.open("w", buffering=1) as log:
        while not stop.exists():
            try:
                versions = load_hf() if kind == "hf" else load_sharded(root / "tiny")
                outcome = json.dumps({"versions": sorted(set(versions))})
            except Exception as exc:  # every failure a worker would see counts
                outcome = json.dumps({"error": f"{type(exc).__name__}: {exc}"[:300]})
            outcomes[outcome] += 1
            if outcome != last:
                log.write(outcome + "\n")
                last = outcome
            time.sleep(0.005)  # a few hundred loads a second, not a core the daemon needs
        log.write(json.dumps({"outcomes": dict(outcomes)}) + "\n")


# --- the reader, seen from the test -----------------------------------------------------------


class Reader:
    """A reader process; `stop()` returns how often each outcome was seen."""

    def __init__(self, kind: str, root: Path, tmp: Path, **env: str) -> None:
        self.out, self.stop_file = tmp / f"{kind}-reader.jsonl", tmp / f"{kind}-reader.stop"
        self.proc = subprocess.Popen(
            [sys.executable, __file__, kind, str(root), str(self.out), str(self.stop_file)],
            env={**os.environ, **env}, stderr=subprocess.PIPE)

    def seen(self) -> list[dict[str, Any]]:
        """Every outcome change so far."""
        if not self.out.exists():
            return []
        return [json.loads(ln) for ln in self.out.read_text().splitlines() if ln.endswith("}")]

    def loaded(self, version: int) -> bool:
        return {"versions": [version]} in self.seen()

    def stop(self) -> dict[str, int]:
        self.stop_file.touch()
        _, err = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, err.decode(errors="replace")
        counts: dict[str, int] = self.seen()[-1]["outcomes"]
        return counts

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def verdict(counts: dict[str, int]) -> tuple[int, dict[str, int], dict[str, int]]:
    """Loads in all; mixed loads and failed loads, each by outcome."""
    mixed = {k: n for k, n in counts.items() if len(json.loads(k).get("versions", [0])) > 1}
    failed = {k: n for k, n in counts.items() if "error" in json.loads(k)}
    return sum(counts.values()), mixed, failed


def loads_while_publishing(reader: Reader, publish: Callable[[int], None], last: int,
                           apart_s: float, timeout_s: float) -> tuple[int, dict[str, int],
                                                                      dict[str, int]]:
    """Versions 1..`last` published `apart_s` apart while `reader` loads (it must be loading
    version 0 first), until it loads `last`: the reader's `verdict`."""
    from tests.mirrors import wait_for  # not in the reader process, which runs this file alone

    try:
        wait_for(lambda: reader.loaded(0), 30, "the reader loading version 0")
        for version in range(1, last + 1):
            publish(version)
            time.sleep(apart_s)
        wait_for(lambda: reader.loaded(last), timeout_s, f"the reader loading version {last}")
        return verdict(reader.stop())
    finally:
        reader.kill()


if __name__ == "__main__":
    read_loop(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
