"""docs/reference.py: docs/config.md is what the schema and the example file say, and stays so.

The reference promises operators three things per field: its key, what it does, and the
variable that overrides it. Each test below holds one of them against the code itself.
"""

from __future__ import annotations

import difflib
import inspect
import re
from typing import get_args

import pytest
from pydantic import BaseModel

from docs import reference
from docs.reference import EXAMPLE, OUTPUT, REGENERATE, describe, render
from syncd import config as config_mod
from syncd.config import parse
from syncd.errors import ConfigError

_ROW = re.compile(r"^\| \[`([^`]+)`\]\(#[^)]*\) \| .* \| `(SYNCD_[A-Z0-9_<>]+)` \|$", re.M)


def schema_paths() -> set[str]:
    """Every field of every model in syncd/config.py as a key path, found without the
    reference's own walker: a model is a section of Config, an array or a table of them, or
    Config; one model may serve several sections ([s3] and [endpoints.NAME])."""
    where: dict[type[BaseModel], list[str]] = {config_mod.Config: [""]}
    for name, info in config_mod.Config.model_fields.items():
        for candidate in (info.annotation, *get_args(info.annotation)):
            if inspect.isclass(candidate) and issubclass(candidate, BaseModel):
                where.setdefault(candidate, []).append(name)
    sections = {s for names in where.values() for s in names}
    paths: set[str] = set()
    for _, model in inspect.getmembers(config_mod, inspect.isclass):
        if not issubclass(model, BaseModel) or model.__module__ != config_mod.__name__:
            continue
        if not model.model_fields:
            continue  # the shared base, _Model
        assert model in where, f"{model.__name__} is not reachable from Config"
        for name, info in model.model_fields.items():
            if info.exclude or (model is config_mod.Config and name in sections):
                continue
            paths.update(f"{s}.{name}" if s else name for s in where[model])
    return paths


def example_text() -> str:
    return EXAMPLE.read_text(encoding="utf-8")


def test_reference_committed_file_matches_a_fresh_rendering() -> None:
    fresh = render(example_text())
    committed = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
    diff = "".join(list(difflib.unified_diff(
        committed.splitlines(keepends=True), fresh.splitlines(keepends=True),
        "docs/config.md (committed)", "docs/config.md (fresh)", n=1))[:40])
    assert committed == fresh, (
        f"docs/config.md is out of date with syncd/config.py or config/syncd.example.toml; "
        f"regenerate it with `.venv/bin/{REGENERATE}`\n{diff}")


def test_reference_documents_every_field_of_every_config_model() -> None:
    doc = OUTPUT.read_text(encoding="utf-8")
    headings = set(re.findall(r"^### `([^`]+)`$", doc, re.M))
    rows = {path for path, _ in _ROW.findall(doc)}
    paths = schema_paths()
    assert {"datacenter", "s3.region", "endpoints.region", "lease.ttl_s",
            "mirrors.volumes", "mirrors.endpoint"} <= paths
    assert paths - headings == set()
    assert paths - rows == set()
    assert headings - paths == set()


def test_example_config_describes_every_key_it_sets_and_every_schema_field() -> None:
    described = describe(example_text()).keys

    def text(key: str) -> str:  # a named endpoint's field reads as the [s3] one it repeats
        own = described[key].text.strip()
        same = described.get(key.replace("endpoints.", "s3.", 1))
        return own or (same.text.strip() if same and key.startswith("endpoints.") else "")

    undescribed = sorted(k for k in described if not text(k))
    assert undescribed == [], f"keys without a comment block in {EXAMPLE.name}"
    assert set(described) - schema_paths() == set(), "keys in the example the schema lacks"
    unshown = {p for p in schema_paths() - set(described)
               if not (p.startswith("endpoints.") and f"s3.{p.split('.', 1)[1]}" in described)}
    assert unshown == set(), f"fields {EXAMPLE.name} does not show"


def test_reference_environment_variables_reach_the_fields_they_are_listed_for() -> None:
    """An invalid value in the documented variable must fail naming that field and that
    variable: proof that config.parse's overlay reads exactly this name for this field."""
    rows = _ROW.findall(OUTPUT.read_text(encoding="utf-8"))
    assert rows
    text = example_text()
    for path, var in rows:
        var = var.replace(reference.MIRROR_NAME, "MODELS")  # the example's first mirror
        var = var.replace(reference.ENDPOINT_NAME, "R2")  # and its named endpoint
        field = path.replace("mirrors.", "mirrors[0].").replace("endpoints.", "endpoints.r2.")
        invalid = "[1]" if path == "mirrors.volumes" else "{ x = 1 }"
        with pytest.raises(ConfigError) as info:
            parse(text, env={var: invalid})
        assert f"{field} (from {var})" in str(info.value)


def test_describe_shares_a_comment_block_with_keys_written_right_below() -> None:
    found = describe("[s3]\n# Seconds to wait.\nconnect_timeout_s = 5.0\nread_timeout_s = 60.0\n"
                     "\nregion = \"x\"\n").keys
    assert found["s3.connect_timeout_s"].text == "Seconds to wait."
    assert found["s3.read_timeout_s"].text == "Seconds to wait."
    assert found["s3.region"].text == ""  # after a blank line: no block of its own


def test_describe_reads_commented_out_keys_section_intros_and_table_fields() -> None:
    found = describe(
        "[lease]\n# Only one writer.\n\n# The name.\n# instance_id = \"w-7\"\n"
        "# A table per pair.\n[[mirrors]]\nname = \"a\"\n# Roots.\n[mirrors.volumes]\n"
        "A = \"/a\"\nB = \"/b\"\n[[mirrors]]\n# Ignored: the first table wins.\nname = \"b\"\n")
    assert found.intros == {"lease": "Only one writer.", "mirrors": "A table per pair."}
    assert found.keys["lease.instance_id"].text == "The name."
    assert found.keys["lease.instance_id"].example == 'instance_id = "w-7"'
    assert found.keys["mirrors.volumes"].text == "Roots."
    assert found.keys["mirrors.volumes"].example == 'volumes = { A = "/a", B = "/b" }'
    assert found.keys["mirrors.name"].example == 'name = "a"'
    assert "A" not in {k.rpartition(".")[2] for k in found.keys}


def test_render_keeps_globs_and_placeholders_literal_outside_code() -> None:
    assert reference._prose("'**' and <root>, not `<code>*`") == (
        "'\\*\\*' and \\<root>, not `<code>*`")


def test_reference_main_prints_the_rendering_and_rejects_unknown_arguments(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert reference.main([]) == 0
    assert capsys.readouterr().out == render(example_text())
    assert reference.main(["--check"]) == 2
    assert "usage" in capsys.readouterr().err
