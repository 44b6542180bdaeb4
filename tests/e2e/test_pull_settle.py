"""A `syncd run` daemon pulling while a plain boto3 uploader writes an artifact one object at
a time (issue 19, item 3): without a manifest the daemon builds a version only from a listing
that stayed unchanged for settle_s across its polls, or once the marker is there, so no
version directory ever holds a partial upload."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.daemons import Setup
from tests.mirrors import tree, wait_for

APART_S = 1.0  # between two objects of one upload: longer than a poll, shorter than settle_s
SETTLE = 'artifacts = ["*"]\nkeep_versions_s = 600\nsettle_s = 4'


def _version(tag: str, shards: int) -> dict[str, bytes]:
    files = {f"model-{i:05d}.safetensors": f"{tag}:{i}:".encode() * 5000 for i in range(shards)}
    files["config.json"] = f'{{"version": "{tag}"}}'.encode()
    return files


def _upload_slowly(setup: Setup, files: dict[str, bytes]) -> None:
    """Shards first, then config.json, each its own PUT, as a plain boto3 script does."""
    for rel in sorted(files, key=lambda k: k == "config.json"):
        setup.put(f"tiny/{rel}", files[rel])
        time.sleep(APART_S)


def _versions(vol: Path) -> dict[str, dict[str, bytes]]:
    """Every version directory syncd made (kept: keep_versions_s is long), with its files."""
    base = vol / ".syncd" / "artifacts" / "tiny"
    return {v: tree(base / v / "tiny") for v in os.listdir(base)} if base.is_dir() else {}


def test_pull_daemon_never_builds_a_version_from_a_partial_plain_upload(
        setup: Setup, tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    v1, v2 = _version("v1", 3), _version("v2", 4)
    daemon = setup.start(setup.config("pull", vol, extra=SETTLE))
    _upload_slowly(setup, v1)
    wait_for(lambda: tree(vol / "tiny") == v1 if (vol / "tiny").exists() else False, 60,
             "version 1 on the volume")
    _upload_slowly(setup, v2)
    wait_for(lambda: tree(vol / "tiny") == v2, 60, "version 2 on the volume")
    built = _versions(vol)
    assert daemon.stop() == 0
    assert sorted(map(sorted, built.values())) == sorted([sorted(v1), sorted(v2)]), built.keys()
    for files in built.values():
        assert files in (v1, v2)
    assert len(daemon.events("artifact_published")) == 2
    held = [e["reason"] for e in daemon.events("artifact_held")]
    assert held and all(r.startswith("settling: listing changed") for r in held), held[:3]


def test_pull_daemon_with_a_marker_builds_only_once_the_marker_is_listed(
        setup: Setup, tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    v1 = _version("v1", 3)
    extra = 'artifacts = ["*"]\nkeep_versions_s = 600\nmarker = "_COMPLETE"\nsettle_s = 0'
    daemon = setup.start(setup.config("pull", vol, extra=extra))
    _upload_slowly(setup, v1)
    wait_for(lambda: any(e["reason"] == "waiting for its marker _COMPLETE"
                         for e in daemon.events("artifact_held")), 30, "the artifact held")
    time.sleep(1.0)  # several polls over the whole upload: still nothing built
    assert not (vol / "tiny").exists() and not _versions(vol)
    setup.put("tiny/_COMPLETE", b"")
    whole = {**v1, "_COMPLETE": b""}
    wait_for(lambda: (vol / "tiny").exists() and tree(vol / "tiny") == whole, 60,
             "the version on the volume once its marker is there")
    assert daemon.stop() == 0
    assert list(_versions(vol).values()) == [whole]
