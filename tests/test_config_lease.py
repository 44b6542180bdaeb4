"""syncd.config: which bucket arbitrates a volume's lease, and mirrors agreeing on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from syncd.config import parse
from syncd.errors import ConfigError, ExitCode
from syncd.runtime.leases import target_key

MIRRORS = """
datacenter = "EU-RO-1"

[endpoints.minio]
endpoint_url = "http://minio.example:9000"

[[mirrors]]
name = "zeta"
bucket = "zeta-models"
direction = "pull"
volumes = { EU-RO-1 = "/v" }

[[mirrors]]
name = "alpha"
bucket = "alpha-models"
direction = "pull"
endpoint = "minio"
volumes = { EU-RO-1 = "/v" }

[[mirrors]]
name = "ckpt"
bucket = "ckpt"
direction = "push"
volumes = { EU-RO-1 = "/v" }
"""


def config_error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text, source="t.toml", env={})
    assert info.value.exit_code == ExitCode.CONFIG
    return info.value


def test_mirrors_on_one_volume_share_one_target_arbitrated_by_the_first_by_name() -> None:
    cfg = parse(MIRRORS, env={})
    zeta, alpha, ckpt = cfg.mirrors
    key = target_key(cfg, zeta)
    assert key == target_key(cfg, alpha)  # one lease for the volume, whichever mirror asks
    assert (key.backend, key.place, key.bucket, key.endpoint) == ("volume", "/v",
                                                                  "alpha-models", "minio")
    assert key.arbiter_url == "http://minio.example:9000" and not key.forced
    assert cfg.volume_arbiter(Path("/v")) == ("minio", "alpha-models")
    assert target_key(cfg, ckpt).backend == "s3"  # a push mirror leases its bucket prefix


def test_lease_bucket_names_the_arbiter_for_every_volume() -> None:
    cfg = parse(MIRRORS + '\n[lease]\nbucket = "syncd-leases"\n', env={})
    assert cfg.volume_arbiter(Path("/v")) == ("default", "syncd-leases")
    key = target_key(cfg, cfg.mirrors[0])
    assert (key.bucket, key.endpoint, key.arbiter_url) == ("syncd-leases", "default", "")
    cfg = parse(MIRRORS + '\n[lease]\nbucket = "syncd-leases"\nendpoint = "minio"\n', env={})
    assert target_key(cfg, cfg.mirrors[0]).arbiter_url == "http://minio.example:9000"


def test_a_changed_arbiter_is_another_target_so_a_reload_takes_the_lease_anew() -> None:
    before = parse(MIRRORS, env={})
    after = parse(MIRRORS + '\n[lease]\nbucket = "syncd-leases"\n', env={})
    assert target_key(before, before.mirrors[0]) != target_key(after, after.mirrors[0])


def test_lease_volume_on_a_mirror_is_a_forced_filesystem_lease() -> None:
    text = MIRRORS.replace('bucket = "zeta-models"', 'bucket = "zeta-models"\nlease = "volume"')
    text = text.replace('bucket = "alpha-models"', 'bucket = "alpha-models"\nlease = "volume"')
    cfg = parse(text, env={})
    assert target_key(cfg, cfg.mirrors[0]).forced


def test_mirrors_on_one_volume_naming_different_leases_is_one_error_naming_the_field() -> None:
    text = MIRRORS.replace('bucket = "alpha-models"', 'bucket = "alpha-models"\nlease = "volume"')
    err = config_error(text)
    assert "mirrors[1].lease" in str(err) and "'zeta'" in str(err) and "/v" in str(err)
    assert "\n" not in str(err)


def test_an_unknown_lease_endpoint_or_a_bad_lease_bucket_names_the_field() -> None:
    err = config_error(MIRRORS + '\n[lease]\nendpoint = "nope"\n')
    assert "lease.endpoint" in str(err) and "'nope'" in str(err)
    err = config_error(MIRRORS + '\n[lease]\nbucket = "Not_A_Bucket"\n')
    assert "lease.bucket" in str(err)
