"""syncd.config: named S3 endpoints, and which one a mirror uses in this datacenter."""

from __future__ import annotations

import pytest

from syncd.config import DEFAULT_ENDPOINT, Config, parse
from syncd.errors import ConfigError, ExitCode

TWO_ENDPOINTS = """
datacenter = "EU-RO-1"

[s3]
region = "us-east-1"

[endpoints.r2]
endpoint_url = "https://acct.r2.example"
region = "auto"
access_key_id_env = "R2_ACCESS_KEY_ID"
secret_access_key_env = "R2_SECRET_ACCESS_KEY"

[endpoints.minio-eu]
endpoint_url = "http://minio.eu.example:9000"
addressing_style = "path"
profile = "minio"

[[mirrors]]
name = "models"
bucket = "models"
direction = "pull"
endpoint = { EU-RO-1 = "minio-eu", US-GA-2 = "default" }
volumes = { EU-RO-1 = "/v/models", US-GA-2 = "/v/models", CA-MTL-1 = "/v/models" }

[[mirrors]]
name = "ckpt"
bucket = "ckpt"
direction = "push"
endpoint = "r2"
volumes = { EU-RO-1 = "/v/ckpt" }

[[mirrors]]
name = "plain"
bucket = "plain"
direction = "pull"
volumes = { EU-RO-1 = "/v/plain" }
"""


def config_error(text: str, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text, source="t.toml", env=env or {})
    assert info.value.exit_code == ExitCode.CONFIG
    return info.value


def in_datacenter(dc: str, env: dict[str, str] | None = None) -> Config:
    return parse(TWO_ENDPOINTS, env={"SYNCD_DATACENTER": dc, **(env or {})})


def test_endpoint_a_mirror_names_is_used_in_every_datacenter() -> None:
    for dc in ("EU-RO-1", "US-GA-2"):
        cfg = in_datacenter(dc)
        ckpt = cfg.mirror("ckpt")
        assert cfg.endpoint_name(ckpt) == "r2"
        assert cfg.endpoint(ckpt).endpoint_url == "https://acct.r2.example"
        assert cfg.endpoint(ckpt).access_key_id_env == "R2_ACCESS_KEY_ID"


def test_endpoint_map_picks_this_datacenters_entry_and_falls_back_to_s3() -> None:
    assert in_datacenter("EU-RO-1").endpoint_name(
        in_datacenter("EU-RO-1").mirror("models")) == "minio-eu"
    us = in_datacenter("US-GA-2")
    assert us.endpoint_name(us.mirror("models")) == DEFAULT_ENDPOINT  # named "default"
    ca = in_datacenter("CA-MTL-1")  # no entry for this datacenter
    assert ca.endpoint_name(ca.mirror("models")) == DEFAULT_ENDPOINT
    assert ca.endpoint(ca.mirror("models")) is ca.s3


def test_a_mirror_without_endpoint_uses_s3() -> None:
    cfg = in_datacenter("EU-RO-1")
    assert cfg.endpoint_name(cfg.mirror("plain")) == DEFAULT_ENDPOINT
    assert cfg.endpoint(cfg.mirror("plain")) == cfg.s3


def test_an_unknown_endpoint_name_is_a_config_error_naming_it() -> None:
    err = config_error(TWO_ENDPOINTS.replace('endpoint = "r2"', 'endpoint = "r3"'))
    assert "mirrors[1].endpoint: no endpoint named 'r3' in mirror 'ckpt'" in str(err)
    assert "known: default, minio-eu, r2" in str(err)


def test_an_unknown_name_in_another_datacenters_entry_fails_here_too() -> None:
    """A typo for a datacenter this host is not in must not wait for that datacenter."""
    text = TWO_ENDPOINTS.replace('US-GA-2 = "default"', 'US-GA-2 = "minio-us"')
    err = config_error(text)
    assert "no endpoint named 'minio-us' (for datacenter US-GA-2) in mirror 'models'" in str(err)


def test_an_endpoint_cannot_be_named_default() -> None:
    err = config_error(TWO_ENDPOINTS.replace("[endpoints.r2]", "[endpoints.default]"))
    assert "endpoints" in str(err) and "'default' is the [s3] table's name" in str(err)


@pytest.mark.parametrize("value", ['"bad name!"', "42", '{ EU-RO-1 = 7 }', '["r2"]'])
def test_a_malformed_endpoint_field_is_one_message(value: str) -> None:
    err = config_error(TWO_ENDPOINTS.replace('endpoint = "r2"', f"endpoint = {value}"))
    assert "mirrors[1].endpoint:" in str(err)
    assert "an endpoint name" in str(err)
    assert "constrained-str" not in str(err)  # no union-member noise from pydantic
    assert str(err).count(";") == 0  # one problem, one message


@pytest.mark.parametrize(("fields", "message"), [
    ('access_key_id_env = "K"', "access_key_id_env and secret_access_key_env go together"),
    ('secret_access_key_env = "S"', "access_key_id_env and secret_access_key_env go together"),
    ('session_token_env = "T"', "session_token_env needs"),
    ('profile = "p"\naccess_key_id_env = "K"\nsecret_access_key_env = "S"', "not both"),
    ('access_key_id_env = "1BAD"\nsecret_access_key_env = "S"', "access_key_id_env"),
])
def test_credential_sources_are_checked(fields: str, message: str) -> None:
    text = TWO_ENDPOINTS.replace('[endpoints.minio-eu]\n', f"[endpoints.x]\n{fields}\n"
                                 "[endpoints.minio-eu]\n")
    err = config_error(text)
    assert "endpoints.x" in str(err) and message in str(err)


def test_credentials_are_never_fields_of_the_file() -> None:
    err = config_error(TWO_ENDPOINTS.replace('region = "auto"',
                                             'region = "auto"\naws_secret_access_key = "x"'))
    assert "endpoints.r2.aws_secret_access_key" in str(err)


def test_env_overlay_reaches_a_named_endpoint_in_any_case() -> None:
    cfg = in_datacenter("EU-RO-1", {"SYNCD_ENDPOINTS__MINIO_EU__ENDPOINT_URL": "http://b:1",
                                    "SYNCD_ENDPOINTS__R2__MAX_ATTEMPTS": "7"})
    assert cfg.endpoints["minio-eu"].endpoint_url == "http://b:1"
    assert cfg.endpoints["r2"].max_attempts == 7
    assert cfg.endpoints["minio-eu"].profile == "minio"  # the rest of the table stays


def test_env_overlay_can_point_a_mirror_at_another_endpoint() -> None:
    cfg = in_datacenter("EU-RO-1", {"SYNCD_MIRRORS__PLAIN__ENDPOINT": '{ EU-RO-1 = "r2" }'})
    assert cfg.endpoint_name(cfg.mirror("plain")) == "r2"


@pytest.mark.parametrize(("var", "message"), [
    # A typo must not create an endpoint nobody uses while the intended one stays as it was.
    ("SYNCD_ENDPOINTS__R3__ENDPOINT_URL", "no endpoint named 'r3' in the file"),
    ("SYNCD_MIRRORS__MODLES__DELETE", "no mirror named 'modles' in the file"),
    ("SYNCD_ENDPOINTS__DEFAULT__REGION", "use SYNCD_S3__REGION"),
])
def test_env_overlay_refuses_names_the_file_lacks(var: str, message: str) -> None:
    err = config_error(TWO_ENDPOINTS, {var: "x"})
    assert f"env {var}" in str(err) and message in str(err)


def test_env_overlay_refuses_a_spelling_two_endpoints_share() -> None:
    text = TWO_ENDPOINTS.replace("[endpoints.r2]", "[endpoints.minio_eu]\n[endpoints.r2]")
    err = config_error(text, {"SYNCD_ENDPOINTS__MINIO_EU__REGION": "x"})
    assert "'minio_eu' and 'minio-eu' are both spelled 'minio_eu'" in str(err) or (
        "'minio-eu' and 'minio_eu' are both spelled 'minio_eu'" in str(err))


def test_an_endpoint_map_entry_for_a_datacenter_without_a_volume_is_a_typo() -> None:
    """'EU-R0-1' (a zero) would silently leave EU-RO-1 on [s3]: the wrong server."""
    err = config_error(TWO_ENDPOINTS.replace('endpoint = { EU-RO-1 = "minio-eu"',
                                             'endpoint = { EU-R0-1 = "minio-eu"'))
    assert "mirrors[0].endpoint: datacenter(s) EU-R0-1 have no volume in this mirror" in str(err)


@pytest.mark.parametrize("url", ["https://KEY:SECRET@host", "https://host/?X-Amz-Security-Token=t",
                                 "https://host/#frag"])
def test_an_endpoint_url_carries_no_credentials(url: str) -> None:
    """The URL appears in logs, errors and a metric label."""
    err = config_error(TWO_ENDPOINTS.replace('"https://acct.r2.example"', f'"{url}"'))
    assert "endpoints.r2.endpoint_url: only scheme, host, port and path" in str(err)
    assert "SECRET" not in str(err)


def test_env_overlay_errors_name_the_variable() -> None:
    err = config_error(TWO_ENDPOINTS, {"SYNCD_ENDPOINTS__R2__CONNECT_TIMEOUT_S": "-1"})
    assert "endpoints.r2.connect_timeout_s (from SYNCD_ENDPOINTS__R2__CONNECT_TIMEOUT_S)" in (
        str(err))
    err = config_error(TWO_ENDPOINTS, {"SYNCD_MIRRORS__CKPT__ENDPOINT": "nope"})
    assert "mirrors[1].endpoint (from SYNCD_MIRRORS__CKPT__ENDPOINT): no endpoint named" in (
        str(err))
