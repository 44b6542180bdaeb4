"""A worker loading a multi-shard model while a plain uploader replaces it never loads a mix of
versions, with a pull mirror's defaults but a short settle_s (issue 19: the pull side waits for an
artifact's listing to settle, or for its marker or manifest, before it builds a version).

Before that, a daemon polling while boto3 was halfway through a version built and published
the bucket's intermediate state, old shards beside new ones (6329 of 29960 loads mixed on moto).

Every other setting is the default. settle_s is shortened on every server (the default 120 s
made the last version go live two minutes after the uploads end, the longest wait of the
suite, for nothing the mechanism changes): 3 s on rclone and SeaweedFS, longer than the 0.2 s
between one version's objects (the gap a partial build needs), and 10 s on moto, the slowest
server. The first version is built by `syncd sync --once` (which builds what it lists)."""

from __future__ import annotations

from tests.daemons import Setup
from tests.loaders import Reader, loads_while_publishing, sharded_model, upload
from tests.mirrors import syncd

VERSIONS = 8
APART_S = 2.0
SETTLE = {"moto": "settle_s = 10"}  # else 3 s


def test_pull_loads_never_mix_versions_from_plain_uploader(setup: Setup) -> None:
    vol = setup.tmp / "vol"
    vol.mkdir()
    settle = SETTLE.get(setup.server.name, "settle_s = 3")
    cfg = setup.config("pull", vol, extra=f'artifacts = ["*"]\n{settle}')
    upload(setup.client, setup.bucket, "models/tiny", sharded_model(0))
    assert syncd("sync", "--once", "-c", str(cfg)).code == 0
    setup.start(cfg)
    reader = Reader("sharded", vol, setup.tmp)
    # shards first, then config.json, 0.2 s apart as large shards take their time
    loads, mixed, failed = loads_while_publishing(
        reader, lambda v: upload(setup.client, setup.bucket, "models/tiny", sharded_model(v),
                                 pause_s=0.2),
        VERSIONS, APART_S, 200)
    assert loads > 100
    assert not mixed, f"{sum(mixed.values())} of {loads} loads mixed versions: {mixed}"
    assert not failed, f"{sum(failed.values())} of {loads} loads failed: {failed}"
