"""syncd.runtime.readiness: /readyz says "load your model now" only when it is there.

A false "ready" sends traffic to a worker that will fail to load its model; a false "not
ready" during a routine model update would take every worker out of service at once.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from syncd import status
from syncd.config import Config, parse
from syncd.runtime.readiness import Reader, judge
from syncd.status import ArtifactStatus, MirrorStatus
from syncd.stores.base import OpenFence

CONFIG = """
[[mirrors]]
name = "models"
bucket = "models"
direction = "pull"
artifacts = ["*"]
volumes = {{ dc1 = "{root}/models" }}

[[mirrors]]
name = "loose"
bucket = "models"
prefix = "loose"
direction = "pull"
volumes = {{ dc1 = "{root}/loose" }}

[[mirrors]]
name = "ckpt"
bucket = "models"
prefix = "ckpt"
direction = "push"
volumes = {{ dc1 = "{root}/ckpt" }}
"""


def config(root: Path) -> Config:
    return parse(CONFIG.format(root=root), env={})


def passed(name: str, **arts: ArtifactStatus) -> MirrorStatus:
    return MirrorStatus(name, updated_wall=100.0, last_ok_wall=100.0, artifacts=dict(arts))


def test_not_ready_before_any_pass_finished(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    verdict = judge([(cfg.mirror("models"), MirrorStatus("models"))])
    assert not verdict.ok
    assert verdict.body["missing"] == ["models: no pass has finished yet"]


def test_an_artifact_without_a_published_version_is_missing(tmp_path: Path) -> None:
    m = config(tmp_path).mirror("models")
    building = ArtifactStatus(status.BUILDING, None, "m-2", "3 of 5 files")
    verdict = judge([(m, passed("models", llama=building))])
    assert not verdict.ok and verdict.body["missing"] == ["models/llama: building: 3 of 5 files"]


def test_an_older_version_while_a_newer_builds_stays_ready_and_says_so(tmp_path: Path) -> None:
    m = config(tmp_path).mirror("models")
    verdict = judge([(m, passed("models", llama=ArtifactStatus(status.BUILDING, "m-1", "m-2"),
                                gone=ArtifactStatus(status.GONE, None, None)))])
    assert verdict.ok and verdict.body["ready"] is True
    assert verdict.body["updating"] == ["models/llama: building"]


def test_a_mirror_without_artifacts_is_ready_once_a_pass_synced_everything(
        tmp_path: Path) -> None:
    m = config(tmp_path).mirror("loose")
    failing = MirrorStatus("loose", updated_wall=5.0, error="s3 unreachable")
    assert judge([(m, failing)]).body["missing"] == ["loose: not synced yet (s3 unreachable)"]
    assert judge([(m, passed("loose"))]).ok


async def test_check_reads_status_files_of_pull_mirrors_only(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    for m in cfg.mirrors:
        (tmp_path / m.name).mkdir()
    await status.save(tmp_path / "models", passed(
        "models", llama=ArtifactStatus(status.READY, "m-1", "m-1")), OpenFence())
    verdict = await Reader().check(cfg, list(cfg.mirrors))
    assert verdict.body["missing"] == ["loose: no pass has finished yet"]
    assert set(verdict.body["mirrors"]) == {"models", "loose"}  # a push mirror never gates
    await status.save(tmp_path / "loose", passed("loose"), OpenFence())
    assert (await Reader().check(cfg, list(cfg.mirrors))).ok


def test_artifact_globs_matching_nothing_are_not_ready(tmp_path: Path) -> None:
    """A pass that found no artifact has published nothing a worker could load."""
    m = config(tmp_path).mirror("models")
    verdict = judge([(m, passed("models", old=ArtifactStatus(status.GONE, None, None)))])
    assert not verdict.ok
    assert verdict.body["missing"] == ["models: no artifact matching * in the source"]


async def test_an_unreadable_status_is_named_not_taken_for_no_pass(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    for m in cfg.mirrors:
        (tmp_path / m.name).mkdir()
    await status.save(tmp_path / "loose", passed("loose"), OpenFence())
    status.path_for(tmp_path / "models", "models").mkdir(parents=True)  # EISDIR, not ENOENT
    verdict = await Reader().check(cfg, list(cfg.mirrors))
    assert not verdict.ok
    assert verdict.body["missing"] == ["models: status unreadable: Is a directory"]


async def test_a_hung_volume_answers_not_ready_without_piling_up_reads(tmp_path: Path) -> None:
    """A read that blocks (a FIFO stands in for a hung network filesystem) times out; while
    it is outstanding, later probes answer at once without starting another read."""
    cfg = config(tmp_path)
    for m in cfg.mirrors:
        (tmp_path / m.name).mkdir()
    fifo = status.path_for(tmp_path / "models", "models")
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)
    reader = Reader(timeout_s=0.2)
    first = await reader.check(cfg, list(cfg.mirrors))
    assert first.body["missing"] == [
        "loose: status unreadable: the volume did not answer within 0.2 s",
        "models: status unreadable: the volume did not answer within 0.2 s"]
    second = await reader.check(cfg, list(cfg.mirrors))
    assert "an earlier read of the volume has not returned" in second.body["missing"][0]
    fd = os.open(fifo, os.O_WRONLY)  # unblock the hung read: it sees an empty file
    os.close(fd)
    fifo.unlink()
    await status.save(tmp_path / "models", passed(
        "models", llama=ArtifactStatus(status.READY, "m-1", "m-1")), OpenFence())
    await status.save(tmp_path / "loose", passed("loose"), OpenFence())
    for _ in range(50):
        verdict = await reader.check(cfg, list(cfg.mirrors))
        if verdict.ok:
            break
        await asyncio.sleep(0.05)
    assert verdict.ok


async def test_concurrent_probes_share_one_read_and_agree(tmp_path: Path) -> None:
    """A kubelet and a load balancer probe at once: the second must not read "hung" into a
    read that is merely under way."""
    cfg = config(tmp_path)
    for m in cfg.mirrors:
        (tmp_path / m.name).mkdir()
    await status.save(tmp_path / "models", passed(
        "models", llama=ArtifactStatus(status.READY, "m-1", "m-1")), OpenFence())
    await status.save(tmp_path / "loose", passed("loose"), OpenFence())
    reader = Reader(timeout_s=5.0)
    verdicts = await asyncio.gather(*(reader.check(cfg, list(cfg.mirrors)) for _ in range(8)))
    assert all(v.ok for v in verdicts), [v.body["missing"] for v in verdicts]
