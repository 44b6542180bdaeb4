"""syncd.config: parse/validate the TOML file plus the SYNCD_* overlay; errors name what's wrong."""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.config import ENV_CONFIG, PULL_SETTLE_S, PUSH_SETTLE_S, MiB, load, parse
from syncd.errors import ConfigError, ExitCode
from syncd.tomlbounds import MAX_CONFIG_BYTES, MAX_DEPTH, MAX_ENV_VALUE_BYTES
from syncd.tomlbounds import depth as _depth
from syncd.tomlbounds import nesting as _nesting

SOURCE = "/etc/syncd/test.toml"

VALID = """
datacenter = "fra"

[s3]
endpoint_url = "https://s3.example.com/"
region = "eu-central-1"
addressing_style = "path"

[transfer]
concurrency = 8
part_size = "16MiB"
multipart_threshold = "64MiB"
min_free_bytes = "1GiB"

[[mirrors]]
name = "models"
bucket = "ml-models"
prefix = "/llm/"
direction = "pull"
include = ["*.safetensors", "*.json"]
exclude = ["tmp/**"]
volumes = { fra = "/mnt/models/", ams = "/data//models" }

[[mirrors]]
name = "results"
bucket = "ml.results-2024"
direction = "push"
delete = true
max_delete_count = 10
max_delete_fraction = 0.1
volumes = { ams = "/data/results" }
"""

MINIMAL = """
[[mirrors]]
name = "m"
bucket = "bkt"
direction = "pull"
volumes = { dc1 = "/mnt/m" }
"""


def config_error(text: str, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text, source=SOURCE, env=env or {})
    return info.value


def assert_names(err: ConfigError, *fragments: str) -> None:
    message = str(err)
    assert SOURCE in message or any(f.startswith("env ") for f in fragments), message
    for fragment in fragments:
        assert fragment in message, message
    assert err.exit_code is ExitCode.CONFIG


@pytest.fixture
def no_syncd_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No SYNCD_* variable from the outer environment leaks into load()/parse()."""
    for name in [n for n in os.environ if n.startswith("SYNCD_")]:
        monkeypatch.delenv(name)
    return monkeypatch


# --- a valid file -------------------------------------------------------------------------------


def test_parse_valid_config_gives_typed_normalized_values() -> None:
    config = parse(VALID, source=SOURCE, env={})
    assert config.source == SOURCE
    assert config.datacenter == "fra"
    assert config.s3.endpoint_url == "https://s3.example.com"  # trailing '/' dropped
    assert config.s3.region == "eu-central-1"
    assert config.s3.addressing_style == "path"
    assert config.transfer.concurrency == 8
    assert config.transfer.part_size == 16 * MiB
    assert config.transfer.multipart_threshold == 64 * MiB
    assert config.transfer.min_free_bytes == 1 << 30
    models, results = config.mirrors
    assert models.name == "models"
    assert models.bucket == "ml-models"
    assert models.prefix == "llm/"
    assert models.direction == "pull"
    assert models.include == ("*.safetensors", "*.json")
    assert models.exclude == ("tmp/**",)
    assert models.delete is False
    assert (models.max_delete_count, models.max_delete_fraction) == (1000, 0.5)
    assert models.volumes == {"fra": "/mnt/models", "ams": "/data/models"}
    assert results.direction == "push"
    assert results.prefix == ""
    assert results.delete is True
    assert (results.max_delete_count, results.max_delete_fraction) == (10, 0.1)
    assert config.mirror("results") is results


def test_parse_minimal_config_fills_defaults() -> None:
    config = parse(MINIMAL, env={})
    assert config.datacenter is None
    assert config.s3.endpoint_url is None
    assert config.s3.region == "us-east-1"
    assert config.transfer.concurrency == 16
    assert config.transfer.part_size == 8 * MiB
    assert config.mirrors[0].prefix == ""


@pytest.mark.parametrize(
    ("text", "expected"),
    [("16MiB", 16 * MiB), ("16 MiB", 16 * MiB), ("5MiB", 5 * MiB), ("1GiB", 1 << 30),
     ("20MB", 20_000_000), (str(8 * MiB), 8 * MiB)],
)
def test_parse_accepts_human_readable_sizes(text: str, expected: int) -> None:
    value = text if text.isdigit() else f'"{text}"'
    config = parse(f"[transfer]\npart_size = {value}\n{MINIMAL}", env={})
    assert config.transfer.part_size == expected


def test_parse_settle_default_depends_on_direction_and_an_explicit_value_wins() -> None:
    """A pull waits for an artifact's listing longer than a push for a file: between two
    objects of a plain uploader lies a whole shard's upload (issue 19)."""
    pull = parse(MINIMAL, source=SOURCE, env={}).mirrors[0]
    assert (pull.settle_s, pull.quiet_s) == (None, PULL_SETTLE_S)
    push = parse(MINIMAL.replace('"pull"', '"push"'), source=SOURCE, env={}).mirrors[0]
    assert push.quiet_s == PUSH_SETTLE_S < PULL_SETTLE_S
    env = {"SYNCD_MIRRORS__M__SETTLE_S": "0"}
    assert parse(MINIMAL, source=SOURCE, env=env).mirrors[0].quiet_s == 0.0
    marked = parse(MINIMAL + 'marker = "_COMPLETE"\n', source=SOURCE, env={}).mirrors[0]
    assert marked.marker == "_COMPLETE"


def test_config_mirror_unknown_name_is_config_error_listing_known_names() -> None:
    config = parse(VALID, source=SOURCE, env={})
    with pytest.raises(ConfigError) as info:
        config.mirror("nope")
    assert_names(info.value, "'nope'", "models, results")


# --- invalid files: each error names the file and the field -------------------------------------


def test_parse_missing_mirrors_names_mirrors() -> None:
    assert_names(config_error('[s3]\nregion = "x"\n'), "mirrors", "required")


def test_parse_empty_mirrors_names_mirrors() -> None:
    assert_names(config_error("mirrors = []\n"), "mirrors")


def test_parse_bad_direction_names_the_field() -> None:
    err = config_error(VALID.replace('"pull"', '"sideways"'))
    assert_names(err, "mirrors[0].direction", "'pull' or 'push'")


@pytest.mark.parametrize(
    "bucket", ["My_Bucket", "ab", "a" * 64, "-bucket", "bucket-", "buck et", "Bucket"]
)
def test_parse_bad_bucket_name_names_the_field(bucket: str) -> None:
    err = config_error(VALID.replace('"ml-models"', f'"{bucket}"'))
    assert_names(err, "mirrors[0].bucket", "not a valid bucket name")


def test_parse_relative_volume_root_names_the_field_and_datacenter() -> None:
    err = config_error(VALID.replace('"/data//models"', '"data/models"'))
    assert_names(err, "mirrors[0].volumes", "'ams'", "absolute")


def test_parse_mirror_without_volumes_names_the_field() -> None:
    err = config_error(VALID.replace('volumes = { ams = "/data/results" }', "volumes = {}"))
    assert_names(err, "mirrors[1].volumes")


@pytest.mark.parametrize("size", ['"4MiB"', str(5 * MiB - 1), "0", '"6GiB"'])
def test_parse_part_size_out_of_range_names_the_field(size: str) -> None:
    err = config_error(VALID.replace('part_size = "16MiB"', f"part_size = {size}"))
    assert_names(err, "transfer.part_size")


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (VALID.replace('datacenter = "fra"', 'datacenter = "fra"\nverbose = true'), "verbose"),
        (VALID.replace('region = "eu-central-1"', 'regoin = "x"'), "s3.regoin"),
        (VALID.replace("concurrency = 8", "threads = 8"), "transfer.threads"),
        (VALID.replace('direction = "push"', 'direction = "push"\ndelet = true'),
         "mirrors[1].delet"),
    ],
)
def test_parse_unknown_field_is_rejected_by_name(text: str, field: str) -> None:
    err = config_error(text)
    assert_names(err, field, "Extra inputs are not permitted")


def test_parse_duplicate_mirror_names_names_mirrors_and_the_name() -> None:
    err = config_error(VALID.replace('name = "results"', 'name = "models"'))
    assert_names(err, "mirrors", "duplicate mirror name", "models")


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (VALID.replace("concurrency = 8", "concurrency = 0"), "transfer.concurrency"),
        (VALID.replace('"https://s3.example.com/"', '"s3.example.com"'), "s3.endpoint_url"),
        (VALID.replace("max_delete_fraction = 0.1", "max_delete_fraction = 1.5"),
         "mirrors[1].max_delete_fraction"),
        (VALID.replace("max_delete_count = 10", "max_delete_count = -1"),
         "mirrors[1].max_delete_count"),
        (VALID.replace('name = "results"', 'name = "bad name!"'), "mirrors[1].name"),
        (VALID.replace('addressing_style = "path"', 'addressing_style = "up"'),
         "s3.addressing_style"),
    ],
)
def test_parse_invalid_value_names_the_field(text: str, field: str) -> None:
    assert_names(config_error(text), field)


def test_parse_reports_every_invalid_field_at_once() -> None:
    text = VALID.replace('"pull"', '"up"').replace("concurrency = 8", "concurrency = 0")
    assert_names(config_error(text), "mirrors[0].direction", "transfer.concurrency")


@pytest.mark.parametrize("text", ["[[[", "a = ", 'name = "unterminated', "[s3]\n[s3]\n"])
def test_parse_invalid_toml_names_the_file(text: str) -> None:
    err = config_error(text)
    assert_names(err, "not valid TOML")
    assert err.file == SOURCE


# --- environment overlay ------------------------------------------------------------------------


def test_parse_env_overlay_applies_to_nested_fields_and_mirrors() -> None:
    env = {
        "SYNCD_S3__ENDPOINT_URL": "http://127.0.0.1:9000",
        "SYNCD_TRANSFER__CONCURRENCY": "32",
        "SYNCD_TRANSFER__PART_SIZE": "8MiB",
        "SYNCD_MIRRORS__MODELS__DELETE": "true",
        "SYNCD_MIRRORS__RESULTS__PREFIX": "out",
        "SYNCD_DATACENTER": "ams",
    }
    config = parse(VALID, source=SOURCE, env=env)
    assert config.s3.endpoint_url == "http://127.0.0.1:9000"
    assert config.s3.region == "eu-central-1"  # untouched fields keep the file's value
    assert config.transfer.concurrency == 32
    assert config.transfer.part_size == 8 * MiB
    assert config.mirror("models").delete is True
    assert config.mirror("results").prefix == "out/"
    assert config.datacenter == "ams"
    assert config.active_datacenter() == "ams"


def test_parse_env_overlay_creates_missing_tables() -> None:
    config = parse(MINIMAL, env={"SYNCD_S3__REGION": "eu-west-1"})
    assert config.s3.region == "eu-west-1"


def test_parse_env_mirror_name_is_case_insensitive() -> None:
    text = VALID.replace('name = "models"', 'name = "Models"')
    config = parse(text, env={"SYNCD_MIRRORS__MODELS__DELETE": "true"})
    assert config.mirror("Models").delete is True


def test_parse_ignores_env_without_prefix_and_the_config_path_variable() -> None:
    env = {"AWS_REGION": "x", "SYNCD": "x", ENV_CONFIG: "/elsewhere.toml",
           "SYNCD_LOG_FORMAT": "json", "OTHER_SYNCD_DATACENTER": "x"}
    assert parse(VALID, env=env) == parse(VALID, env={})


@pytest.mark.parametrize(
    ("var", "value", "field"),
    [
        ("SYNCD_TRANSFER__CONCURRENCY", "many", "transfer.concurrency"),
        ("SYNCD_TRANSFER__CONCURRENCY", "0", "transfer.concurrency"),
        ("SYNCD_TRANSFER__PART_SIZE", "1MiB", "transfer.part_size"),
        ("SYNCD_S3__ENDPOINT_URL", "ftp://x", "s3.endpoint_url"),
        ("SYNCD_MIRRORS__MODELS__DELETE", "maybe", "mirrors[0].delete"),
        ("SYNCD_MIRRORS__RESULTS__DIRECTION", "sideways", "mirrors[1].direction"),
        ("SYNCD_VERBOSE", "true", "verbose"),
    ],
)
def test_parse_invalid_env_value_names_the_variable_and_field(
    var: str, value: str, field: str
) -> None:
    err = config_error(VALID, env={var: value})
    assert_names(err, field, f"(from {var})")


def test_parse_env_for_unknown_mirror_is_an_error_naming_the_variable() -> None:
    err = config_error(VALID, env={"SYNCD_MIRRORS__NOPE__DELETE": "true"})
    assert_names(err, "env SYNCD_MIRRORS__NOPE__DELETE", "'nope'")


def test_parse_env_into_a_non_table_is_an_error_naming_the_variable() -> None:
    err = config_error(VALID, env={"SYNCD_DATACENTER__NAME": "x"})
    assert_names(err, "env SYNCD_DATACENTER__NAME")


def test_parse_reads_os_environ_when_env_not_given(no_syncd_env: pytest.MonkeyPatch) -> None:
    no_syncd_env.setenv("SYNCD_TRANSFER__CONCURRENCY", "3")
    assert parse(MINIMAL).transfer.concurrency == 3
    assert parse(MINIMAL, env={}).transfer.concurrency == 16


# --- datacenters and volume roots ---------------------------------------------------------------


def test_active_datacenter_explicit_wins() -> None:
    config = parse(VALID, env={})
    assert config.active_datacenter() == "fra"


def test_active_datacenter_implied_when_only_one_is_named() -> None:
    two_mirrors = MINIMAL + MINIMAL.replace('"m"', '"n"')
    assert parse(two_mirrors, env={}).active_datacenter() == "dc1"


def test_active_datacenter_ambiguous_is_error_naming_datacenter() -> None:
    config = parse(VALID.replace('datacenter = "fra"', ""), source=SOURCE, env={})
    with pytest.raises(ConfigError) as info:
        config.active_datacenter()
    err = info.value
    assert err.field == "datacenter"
    assert_names(err, "datacenter", "SYNCD_DATACENTER")


def test_volume_root_per_datacenter_and_none_without_a_volume_here() -> None:
    config = parse(VALID, env={})
    models, results = config.mirrors
    assert config.volume_root(models) == Path("/mnt/models")
    assert config.volume_root(results) is None
    ams = parse(VALID, env={"SYNCD_DATACENTER": "ams"})
    assert ams.volume_root(ams.mirror("models")) == Path("/data/models")
    assert ams.volume_root(ams.mirror("results")) == Path("/data/results")


def test_volume_root_none_for_a_datacenter_no_mirror_names() -> None:
    config = parse(VALID, env={"SYNCD_DATACENTER": "nyc"})
    assert config.active_datacenter() == "nyc"
    assert all(config.volume_root(m) is None for m in config.mirrors)


# --- load ---------------------------------------------------------------------------------------


def test_load_reads_the_given_path(tmp_path: Path, no_syncd_env: pytest.MonkeyPatch) -> None:
    path = tmp_path / "syncd.toml"
    path.write_text(VALID, encoding="utf-8")
    config = load(path)
    assert config.source == str(path)
    assert config == parse(VALID, source=str(path), env={})


def test_load_reads_syncd_config_when_no_path(
    tmp_path: Path, no_syncd_env: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "from-env.toml"
    path.write_text(MINIMAL, encoding="utf-8")
    no_syncd_env.setenv(ENV_CONFIG, str(path))
    assert load().source == str(path)


def test_load_missing_file_names_the_file(
    tmp_path: Path, no_syncd_env: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as info:
        load(missing)
    assert info.value.file == str(missing)
    assert str(missing) in str(info.value)
    assert "not found" in str(info.value)


def test_load_without_path_or_syncd_config_is_an_error(no_syncd_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError) as info:
        load()
    assert "no config file" in str(info.value)
    assert ENV_CONFIG in str(info.value)


def test_load_undecodable_file_names_the_file(
    tmp_path: Path, no_syncd_env: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'datacenter = "m\xfcnchen"\n')
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(path) in str(info.value)


def test_load_invalid_file_names_the_file_and_field(
    tmp_path: Path, no_syncd_env: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(VALID.replace('"pull"', '"sideways"'), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert f"{path}: mirrors[0].direction" in str(info.value)


def test_env_overlay_reaches_mirror_names_with_dashes_and_dots() -> None:
    text = (
        '[[mirrors]]\nname = "llama-3.1"\nbucket = "bkt"\ndirection = "pull"\n'
        'volumes = {a = "/v"}\n'
    )
    config = parse(text, env={"SYNCD_MIRRORS__LLAMA_3_1__DELETE": "true"})
    assert config.mirrors[0].delete is True


def test_example_config_is_valid_and_documents_every_field() -> None:
    """config/syncd.example.toml is the field reference: it must parse and name every field."""
    from pathlib import Path

    from syncd.config import Config, MirrorConfig, S3Config, TransferConfig

    path = Path(__file__).resolve().parents[1] / "config" / "syncd.example.toml"
    text = path.read_text(encoding="utf-8")
    config = parse(text, source=str(path), env={})
    assert config.mirrors
    for model in (Config, S3Config, TransferConfig, MirrorConfig):
        for name, field in model.model_fields.items():
            if field.exclude:
                continue
            assert re.search(rf"^#?\s*{name}\s*=|^\[{name}[.\]]|^\[\[{name}\]\]", text,
                             re.M), (
                f"{model.__name__}.{name} is not documented in {path.name}")


# --- bounds: size and nesting, before parsing (issue 18) ----------------------------------------

DEEP = 500  # tomllib and pydantic recurse per level: this deep was a RecursionError


def _nested_array(levels: int) -> str:
    return "[" * levels + "]" * levels


@pytest.mark.parametrize("text", [
    f"datacenter = {_nested_array(DEEP)}",
    "datacenter = " + "{a = " * DEEP + "1" + "}" * DEEP,
    "[" + ".".join(["a"] * DEEP) + "]\nx = 1",  # a header: tables, no brackets
    "a" + ".a" * DEEP + " = 1",  # dotted keys
    f"datacenter = {_nested_array(MAX_DEPTH + 1)}\n{MINIMAL}",
    MINIMAL + f"include = {_nested_array(MAX_DEPTH - 1)}",  # inside [[mirrors]]: 2 more
])
def test_parse_nesting_past_the_limit_is_one_line_naming_the_file_and_limit(text: str) -> None:
    err = config_error(text)
    assert_names(err, f"{SOURCE}: nested deeper than the limit of {MAX_DEPTH} levels")
    assert "\n" not in str(err)


def test_parse_nesting_at_the_limit_is_read_and_validated() -> None:
    err = config_error(f"datacenter = {_nested_array(MAX_DEPTH)}\n{MINIMAL}")
    assert_names(err, "datacenter: Input should be a valid string")
    assert "nested deeper" not in str(err)


def test_parse_brackets_in_strings_comments_and_headers_do_not_count_as_nesting() -> None:
    deep = "[{" * DEEP
    text = MINIMAL + f"""settle_s = 1  # {deep}
include = ["{deep}", '{deep}', \"\"\"
{deep}\\\"\"\"\"\"\", '''
{deep}''''  , "\\"{deep}"]
[[ "mirrors" ]]  # {deep}
name = "m2"
bucket = "bkt"
direction = "pull"
volumes = {{ dc1 = "/mnt/m2" }}
"""
    config = parse(text, source=SOURCE, env={})
    assert config.mirrors[0].include[0] == deep
    assert config.mirrors[0].include[2] == f'{deep}"""'  # an escaped one, two closing
    assert config.mirrors[0].include[3] == f"{deep}'"


_TEXT = st.text(st.sampled_from("ab []{}#\"'\\\n\t,=."), max_size=12)
_VALUES = st.recursive(
    st.integers(0, 9) | _TEXT,
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(["a", "b", "c d", "[x]"]), inner, max_size=3),
    max_leaves=12)


def _toml(value: object, style: int) -> str:
    """`value` as a TOML value, strings in one of the four spellings where it can hold them."""
    if isinstance(value, list):
        return "[\n  " + ", # [{\n  ".join(_toml(v, style + i) for i, v in enumerate(value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v, style)}"
                               for k, v in value.items()) + "}"
    if not isinstance(value, str):
        return str(value)
    if style % 4 == 1 and not re.search(r"['\n]", value):
        return f"'{value}'"
    if style % 4 == 2 and "'''" not in value and not value.startswith("\n"):
        return f"'''{value}'''"
    if style % 4 == 3 and not value.startswith("\n"):
        return '"""' + value.replace("\\", "\\\\").replace('"', '\\"') + '"""'
    return json.dumps(value)


@given(value=_VALUES, style=st.integers(0, 3))
@settings(max_examples=300, deadline=None)
def test_nesting_prescan_counts_what_tomllib_nests_whatever_the_strings_hold(
        value: object, style: int) -> None:
    text = f"[t]\nv = {_toml(value, style)}  # ]]\n"
    assert tomllib.loads(text)["t"]["v"] == value
    assert _nesting(text) == _depth(value)


def test_parse_text_over_the_size_limit_is_one_line_naming_the_file_and_limit() -> None:
    err = config_error(MINIMAL + "#" * MAX_CONFIG_BYTES)
    assert_names(err, f"{SOURCE}: larger than the limit of 1 MiB")


@pytest.mark.parametrize(("var", "value", "message"), [
    ("SYNCD_TRANSFER__CONCURRENCY", _nested_array(DEEP), "nested deeper than the limit"),
    ("SYNCD_S3__REGION", "x" * (MAX_ENV_VALUE_BYTES + 1), "larger than the limit"),
    ("SYNCD_" + "__".join(["A"] * 31), "[[[1]]]", "nested deeper than the limit"),  # 30 + 3
])
def test_parse_env_value_past_a_bound_is_one_line_naming_the_variable(
        var: str, value: str, message: str) -> None:
    err = config_error(MINIMAL, env={var: value})
    assert_names(err, f"env {var}: {message}")
    assert "\n" not in str(err)


def test_load_file_over_the_size_limit_names_the_file_and_limit(
    tmp_path: Path, no_syncd_env: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "big.toml"
    path.write_text(MINIMAL + "#" * MAX_CONFIG_BYTES, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value) == f"{path}: larger than the limit of 1 MiB"


def test_load_a_directory_or_a_fifo_is_refused_without_blocking(
    tmp_path: Path, no_syncd_env: pytest.MonkeyPatch
) -> None:
    """A FIFO nobody writes to would block the read (and a SIGHUP reload) forever."""
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    for path, kind in [(tmp_path, "a directory"), (fifo, "not a regular file")]:
        with pytest.raises(ConfigError) as info:
            load(path)
        assert str(info.value) == f"{path}: cannot read: {kind}"
