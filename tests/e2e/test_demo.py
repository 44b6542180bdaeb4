"""`syncd demo` as a real subprocess: the whole job end to end, then again as a no-op."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

from syncd.artifacts import MANIFEST_NAME, Manifest
from syncd.demo import (
    BUCKET,
    CHECKPOINT_PREFIX,
    CHECKPOINT_STEP,
    Layout,
    MiB,
    find_server,
    sample_checkpoint,
    sample_model,
)

SYNCD = Path(sys.executable).with_name("syncd")
RUN_TIMEOUT_S = 120


def _demo(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SYNCD), "demo", "--dir", str(directory)], stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False,
    )


def _tree(root: Path) -> dict[str, Path]:
    """Files under a mirror root as a worker sees them (through artifact links), without
    syncd's own .syncd/ directory."""
    out = {}
    for top, dirs, files in os.walk(root, followlinks=True):
        if Path(top) == root and ".syncd" in dirs:
            dirs.remove(".syncd")
        out.update({(Path(top) / f).relative_to(root).as_posix(): Path(top) / f for f in files})
    return dict(sorted(out.items()))


def _identity(files: dict[str, Path]) -> dict[str, tuple[int, int]]:
    """(inode, mtime_ns) per file: any rewrite, even with the same bytes, changes it."""
    return {k: (p.stat().st_ino, p.stat().st_mtime_ns) for k, p in files.items()}


def _assert_server_stopped(config: Path) -> None:
    url = urlsplit(tomllib.loads(config.read_text())["s3"]["endpoint_url"])
    assert url.hostname == "127.0.0.1"
    try:
        socket.create_connection((url.hostname, url.port), timeout=1).close()
    except OSError:
        return
    raise AssertionError(f"something still listens on {url.netloc} after the demo")


def test_demo_syncs_sample_model_both_ways_then_reruns_copying_nothing(tmp_path):
    model, checkpoint = sample_model(), sample_checkpoint()
    assert model == sample_model()  # deterministic: the seed fixes every byte
    assert sum(len(data) > 5 * MiB for data in model.values()) >= 1  # one goes multipart
    layout = Layout.at(tmp_path.resolve())

    first = _demo(tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    volume = _tree(layout.volume)
    assert {k: p.read_bytes() for k, p in volume.items()} == model
    assert not list((layout.volume / ".syncd" / "tmp").iterdir())
    assert {k: p.read_bytes() for k, p in _tree(layout.checkpoints).items()} == checkpoint
    pushed: dict[str, Path] = {}
    if find_server()[0] == "rclone":  # rclone keeps the bucket on disk, one dir per bucket
        pushed = _tree(layout.bucket_root / BUCKET / CHECKPOINT_PREFIX)
        manifest = Manifest.from_bytes(pushed.pop(f"{CHECKPOINT_STEP}/{MANIFEST_NAME}")
                                       .read_bytes())
        assert {f"{CHECKPOINT_STEP}/{k}" for k in manifest.files} == set(checkpoint)
        assert {k: p.read_bytes() for k, p in pushed.items()} == checkpoint
    _assert_server_stopped(layout.config)

    second = _demo(tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert _identity(_tree(layout.volume)) == _identity(volume)  # nothing pulled again
    again = _tree(layout.bucket_root / BUCKET / CHECKPOINT_PREFIX)
    again.pop(f"{CHECKPOINT_STEP}/{MANIFEST_NAME}", None)
    assert _identity(again) == _identity(pushed)
    assert not list((layout.volume / ".syncd" / "tmp").iterdir())
    assert "in sync" in second.stdout
    assert "published whole" in first.stdout and "exited with 0" in first.stdout
    assert "/readyz -> 200, ready=True" in first.stdout
    assert "syncd_transferred_bytes_total{" in first.stdout
    _assert_server_stopped(layout.config)
