"""A Hugging Face cache mirrored one artifact per snapshot loads offline while new revisions
arrive (issue 19: pointers after targets).

The bucket holds a cache as `huggingface-cli download --cache-dir` leaves it, copied to S3:
`hub/models--org--name/refs/main` (a loose file naming the revision) and
`hub/models--org--name/snapshots/<rev>/...`. The copy holds plain files in each snapshot (a
bucket keeps no symlinks, so no `blobs/`); huggingface_hub reads a snapshot the same either
way. A new revision is uploaded as a mirror of the hub would: the snapshot's files first,
`refs/main` last. syncd publishes each snapshot as an artifact before the loose files of the
same pass, so `refs/main` never names a snapshot the volume does not have yet: before, offline
loaders failed in that window (4104 of 15521 loads, with the loose files first).

A snapshot now also waits for its listing to settle (settle_s) before it is built; `refs/main`
must wait with it, across passes, or it names a snapshot still held (every load failed that
way before loose files waited for settling artifacts). settle_s = 3 on every server here:
tests/e2e/test_mixed_loads.py runs the pull defaults (120 s) on moto."""

from __future__ import annotations

from tests.daemons import Setup
from tests.loaders import (
    HF_DIR,
    Reader,
    hf_revision,
    hf_snapshot,
    loads_while_publishing,
    upload,
)
from tests.mirrors import syncd

REVISIONS = 10
SETTLE: dict[str, str] = {}  # settle_s = 3 on every server: test_mixed_loads keeps the default


def publish(setup: Setup, version: int) -> None:
    upload(setup.client, setup.bucket, f"hub/{HF_DIR}/snapshots/{hf_revision(version)}",
           hf_snapshot(version))
    pointer = {"refs/main": hf_revision(version).encode()}
    upload(setup.client, setup.bucket, f"hub/{HF_DIR}", pointer)


def test_pull_hf_cache_loads_offline_while_revisions_change(setup: Setup) -> None:
    vol = setup.tmp / "hub"
    vol.mkdir()
    settle = SETTLE.get(setup.server.name, "settle_s = 3")
    cfg = setup.config("pull", vol, prefix="hub",
                       extra=f'artifacts = ["models--*/snapshots/*"]\n{settle}')
    publish(setup, 0)
    assert syncd("sync", "--once", "-c", str(cfg)).code == 0
    setup.start(cfg)
    reader = Reader("hf", vol, setup.tmp, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(vol),
                    HF_HUB_DISABLE_TELEMETRY="1")
    loads, mixed, failed = loads_while_publishing(
        reader, lambda v: publish(setup, v), REVISIONS, 1.0, 200)
    assert loads > 100
    assert not failed, f"{sum(failed.values())} of {loads} loads failed: {failed}"
    assert not mixed, f"{sum(mixed.values())} of {loads} loads mixed revisions: {mixed}"
