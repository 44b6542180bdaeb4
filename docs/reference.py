"""The configuration reference, docs/config.md, rendered from the schema and the example file.

Nothing in the reference is written by hand, so it cannot drift from the code: types,
defaults and limits come from the pydantic models in `syncd.config`, environment variable
names from the overlay's rules there, and every description from the comment block above its
key in config/syncd.example.toml, so the prose lives in one place (the file operators copy).
tests/test_reference.py fails when the committed file differs from a fresh rendering. It
is a tool of the repository, not of the installed package (nothing at run time needs it):

    .venv/bin/python docs/reference.py            # print the reference
    .venv/bin/python docs/reference.py --write    # rewrite docs/config.md

`render` and `describe` are pure (text in, text out); only `main` touches files.
"""

from __future__ import annotations

import re
import sys
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from pydantic import BaseModel, ByteSize
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from syncd.config import ENV_PREFIX, Config

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "config" / "syncd.example.toml"
OUTPUT = REPO / "docs" / "config.md"
REGENERATE = "python docs/reference.py --write"
MIRROR_NAME = "<NAME>"
ENDPOINT_NAME = "<ENDPOINT>"
PLACEHOLDERS = (MIRROR_NAME, ENDPOINT_NAME)

_HEADER = re.compile(r"^\[(\[)?\s*([A-Za-z0-9_.]+)\s*\]?\]$")
_KEY = re.compile(r"^([A-Za-z0-9_-]+)\s*=\s*(.*)$")
_COMMENTED_KEY = re.compile(r"^#\s?([a-z][a-z0-9_]*) = (.*)$")
_UNITS = {"_s": "seconds", "_bytes": "bytes"}


# --- the example file: descriptions --------------------------------------------------------


@dataclass
class Described:
    """What config/syncd.example.toml says about one key."""

    text: str = ""  # the comment block above it (shared by keys written right below it)
    example: str | None = None  # the key's line, uncommented


@dataclass
class Example:
    keys: dict[str, Described] = field(default_factory=dict)  # "s3.region", "mirrors.name"
    intros: dict[str, str] = field(default_factory=dict)  # section -> its own comment block


def _comment(line: str) -> str:
    return line[1:].removeprefix(" ").rstrip()


def describe(text: str, named: tuple[str, ...] = ("endpoints",)) -> Example:
    """Read the example config's comments: the block right above a key (or a commented-out
    key) describes it, a key right below another shares its block, a block before a section
    header or between the header and a blank line introduces the section. The first
    occurrence of a key wins: later [[mirrors]] tables only add what the first one lacks.
    In a `named` section, `[endpoints.r2]` is one entry of the section, not a field."""
    out = Example()
    section = ""  # "" (top level), "s3", "mirrors"
    table: str | None = None  # under [mirrors.volumes]: "volumes"; its entries are data
    entries: list[str] = []  # the entries of the first such table, for the field's example
    pending: list[str] = []  # comment lines since the last blank, key or header
    after_header = False
    last: Described | None = None  # the key on the previous line, if any

    def key_line(name: str) -> Described:
        path = f"{section}.{name}" if section else name
        found = out.keys.setdefault(path, Described())
        found.text = found.text or " ".join(pending) or (last.text if last else "")
        return found

    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            if after_header and pending:
                out.intros.setdefault(section, " ".join(pending))
            pending, after_header, last = [], False, None
            continue
        if header := _HEADER.match(line):
            section, _, child = header.group(2).partition(".")
            if section in named:
                child = ""
            table, entries = child or None, []
            if child:  # [mirrors.volumes]: a field of the section, written as a table
                key_line(child)
            elif pending:
                out.intros.setdefault(section, " ".join(pending))
            pending, after_header, last = [], not child, None
            continue
        key = _COMMENTED_KEY.match(line) if line.startswith("#") else _KEY.match(line)
        if table is not None and key and not line.startswith("#"):
            found = out.keys[f"{section}.{table}"]
            if found.example is None or entries:  # the first such table is the example
                entries.append(f"{key.group(1)} = {key.group(2)}")
                found.example = f"{table} = {{ {', '.join(entries)} }}"
        elif key and table is None:
            last = key_line(key.group(1))
            last.example = last.example or f"{key.group(1)} = {key.group(2)}"
            pending, after_header = [], False
        elif line.startswith("#"):
            pending.append(_comment(line))
            last = None
    return out


# --- the schema: types, defaults, limits ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Key:
    """One field of the schema as the reference shows it."""

    path: str  # "s3.region", "mirrors.name", "datacenter"
    env: str  # the SYNCD_* variable that overrides it
    type: str
    default: str
    limits: str


@dataclass(frozen=True, slots=True)
class Section:
    name: str  # "" for the top level
    header: str  # "[s3]", "[[mirrors]]"
    model: type[BaseModel]


def sections() -> list[Section]:
    """The top level, each table, each table of named tables and each array of tables of
    `Config`, in schema order."""
    out = [Section("", "", Config)]
    for name, info in Config.model_fields.items():
        ann = info.annotation
        if _is_model(ann):
            out.append(Section(name, f"[{name}]", ann))  # type: ignore[arg-type]
        elif (model := _table_of(ann)) is not None:
            out.append(Section(name, f"[{name}.{ENDPOINT_NAME}]", model))
        elif get_origin(ann) is tuple and _is_model(get_args(ann)[0]):
            out.append(Section(name, f"[[{name}]]", get_args(ann)[0]))
    return out


def _is_model(ann: object) -> bool:
    return isinstance(ann, type) and issubclass(ann, BaseModel)


def _table_of(ann: object) -> type[BaseModel] | None:
    """The model of a `dict[name, Model]` field (`[endpoints.NAME]` tables), else None."""
    if get_origin(ann) is dict and _is_model(model := get_args(ann)[1]):
        return model  # type: ignore[no-any-return]
    return None


def fields(section: Section) -> Iterator[tuple[str, FieldInfo]]:
    """A section's own fields: not its sub-tables, not fields kept out of the file."""
    for name, info in section.model.model_fields.items():
        ann = info.annotation
        if info.exclude or _is_model(ann) or _table_of(ann) is not None or (
                get_origin(ann) is tuple and _is_model(get_args(ann)[0])):
            continue
        yield name, info


def env_var(section: Section, name: str) -> str:
    """SYNCD_<SECTION>__<FIELD>; a mirror's fields are SYNCD_MIRRORS__<NAME>__<FIELD>, a
    named endpoint's SYNCD_ENDPOINTS__<ENDPOINT>__<FIELD>."""
    if section.header.startswith("[["):
        parts = [section.name, MIRROR_NAME, name]
    elif ENDPOINT_NAME in section.header:
        parts = [section.name, ENDPOINT_NAME, name]
    else:
        parts = [section.name, name] if section.name else [name]
    return ENV_PREFIX + "__".join(p if p in PLACEHOLDERS else p.upper() for p in parts)


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n and n % scale == 0:
            return f'"{n // scale}{unit}"'
    return str(n)


def _toml(value: Any) -> str:
    """A value as it would be written in the file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, ByteSize):
        return _size(int(value))
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML form for {value!r}")


def type_of(name: str, ann: Any) -> str:
    args = [a for a in get_args(ann) if a is not type(None)]
    if _is_union(ann):
        if len(args) > 1:
            return ", or ".join(type_of(name, a) for a in args)
        ann = args[0]
    if get_origin(ann) is Annotated:  # a constrained type (`Name`): its limits are its own
        ann = get_args(ann)[0]
    unit = next((u for suffix, u in _UNITS.items() if name.endswith(suffix)), "")
    if get_origin(ann) is Literal:
        return "one of " + ", ".join(f"`{_toml(a)}`" for a in get_args(ann))
    if get_origin(ann) is tuple:
        return f"array of {type_of('', get_args(ann)[0])}s"
    if get_origin(ann) is dict:
        key, value = get_args(ann)
        return f"table: {type_of('', key)} keys, {type_of('', value)} values"
    if ann is ByteSize:
        return 'size: bytes, or a string like `"16MiB"` or `"1GiB"`'
    names = {bool: "boolean", int: "integer", float: "number", str: "string"}
    if ann not in names:
        raise TypeError(f"no reference type for {ann!r}: teach syncd.ops.reference")
    return names[ann] + (f" ({unit})" if unit else "")


def default_of(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    if info.default is None:
        return "unset"
    if info.default is PydanticUndefined:  # a default_factory; the schema has none today
        return f"`{_toml(info.get_default(call_default_factory=True))}`"
    return f"`{_toml(info.default)}`"


def _is_union(ann: Any) -> bool:
    """`A | B` of types, or of a constrained type (`EnvVar | None` is a typing.Union)."""
    return isinstance(ann, types.UnionType) or get_origin(ann) is Union


def _inner_metadata(ann: Any) -> list[Any]:
    """The constraints of an optional constrained type (`EnvVar | None`), which pydantic keeps
    inside the type rather than on the field."""
    args = [a for a in get_args(ann) if a is not type(None)] if _is_union(ann) else []
    if len(args) == 1 and get_origin(args[0]) is Annotated:
        return [m for a in get_args(args[0])[1:] for m in getattr(a, "metadata", [a])]
    return []


def limits_of(info: FieldInfo) -> str:
    """The constraints pydantic enforces from the field's metadata. Checks made by validators
    (bucket names, URL schemes, absolute roots, timing order) are in the description."""
    bytesize = info.annotation is ByteSize

    def show(bound: Any) -> str:
        return _size(int(bound)) if bytesize else repr(bound)

    low = high = ""
    out = []
    for meta in [*info.metadata, *_inner_metadata(info.annotation)]:
        if isinstance(meta, Ge):
            low = f"at least {show(meta.ge)}"
        elif isinstance(meta, Gt):
            low = f"more than {show(meta.gt)}"
        elif isinstance(meta, Le):
            high = f"at most {show(meta.le)}"
        elif isinstance(meta, Lt):
            high = f"less than {show(meta.lt)}"
        elif isinstance(meta, MinLen):
            out.append(f"at least {meta.min_length} "
                       f"entr{'y' if meta.min_length == 1 else 'ies'}")
        elif isinstance(meta, MaxLen):
            out.append(f"at most {meta.max_length} entries")
        elif pattern := getattr(meta, "pattern", None):
            out.append(f"matches `{pattern}`")
        else:  # a constraint the reference would silently leave out
            raise TypeError(f"no reference text for {meta!r}: teach syncd.ops.reference")
    return ", ".join([b for b in (low, high) if b] + out) or "none"


def keys(section: Section) -> Iterator[Key]:
    for name, info in fields(section):
        path = f"{section.name}.{name}" if section.name else name
        yield Key(path, env_var(section, name),
                  type_of(name, info.annotation), default_of(info), limits_of(info))


# --- markdown --------------------------------------------------------------------------------

_CODE = re.compile(r"(`[^`]*`)")


def _prose(text: str) -> str:
    """Comment text as markdown: literal outside `code`, so globs ('**') and placeholders
    (<root>) show as written instead of turning into emphasis or HTML."""
    parts = _CODE.split(text)
    for i in range(0, len(parts), 2):
        parts[i] = re.sub(r"([\\*<])", r"\\\1", parts[i])
        parts[i] = re.sub(r"(?<![A-Za-z0-9_])_", r"\\_", parts[i])
    return "".join(parts)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _anchor(path: str) -> str:
    """GitHub's heading anchor for a heading that is just `path` in code."""
    return re.sub(r"[^a-z0-9_ -]", "", path.lower()).replace(" ", "-")


def _ordered(section: Section, example: Example) -> list[Key]:
    """In the example file's order, where the prose reads as a sequence ("... and at most
    this fraction"); a field the file lacks comes last."""
    listed = list(example.keys)
    return sorted(keys(section), key=lambda k: listed.index(k.path) if k.path in listed
                  else len(listed))


def render(example_text: str) -> str:
    """docs/config.md from the schema plus config/syncd.example.toml's text."""
    example = describe(example_text)
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated from syncd/config.py (types, defaults, limits) and",
        "     config/syncd.example.toml (descriptions) by docs/reference.py; do not edit.",
        f"     Regenerate: {REGENERATE} -->",
        "",
        "syncd reads one TOML file: the path given with `--config PATH`, else `$SYNCD_CONFIG`. "
        "[config/syncd.example.toml](../config/syncd.example.toml) is a complete, commented "
        "example, and `syncd config validate PATH` checks a file. Credentials never go in the "
        "file: an endpoint takes them from the environment variables it names, else its "
        "profile, else the standard AWS chain.",
        "",
        "Every field can be overridden from the environment: `SYNCD_<SECTION>__<FIELD>`, "
        "a top-level field as `SYNCD_<FIELD>`, a mirror's field as "
        f"`SYNCD_MIRRORS__{MIRROR_NAME}__<FIELD>`, where {_prose(MIRROR_NAME)} is the "
        "mirror's name in any case with every character other than letters, digits and `_` "
        "written as `_` (`llama-3.1` is `LLAMA_3_1`); a named endpoint's field as "
        f"`SYNCD_ENDPOINTS__{ENDPOINT_NAME}__<FIELD>`, spelled the same way; the mirror or "
        "endpoint must be in the file. Values are read as TOML values "
        "(`true`, `16`, `\"16MiB\"`, `[\"a\", \"b\"]`, `{ US-GA-2 = \"/runpod-volume\" }`), "
        "else as plain strings.",
        "",
        "| key | type | default | environment variable |",
        "| --- | --- | --- | --- |",
    ]
    chosen = [(s, _ordered(s, example)) for s in sections()]
    for _, ks in chosen:
        for k in ks:
            out.append(f"| [`{k.path}`](#{_anchor(k.path)}) | {_cell(k.type)} | "
                       f"{_cell(k.default)} | `{k.env}` |")
    out.append("")
    first_of: dict[type[BaseModel], str] = {}  # a model's first section: [s3] for endpoints
    for section, ks in chosen:
        out += [f"## `{section.header}`" if section.name else "## Top level", ""]
        if intro := example.intros.get(section.name):
            out += [_prose(intro), ""]
        same = first_of.setdefault(section.model, section.name)
        for k in ks:
            found = example.keys.get(k.path, Described())
            # A field of a model described once ([s3]) reads the same in its other sections.
            field_name = k.path.rpartition(".")[2]
            text = found.text or example.keys.get(f"{same}.{field_name}", Described()).text
            out += [f"### `{k.path}`", "",
                    _prose(text) or "(not described in config/syncd.example.toml)", "",
                    f"- type: {k.type}",
                    f"- default: {k.default}",
                    f"- limits: {k.limits}",
                    f"- environment: `{k.env}`"]
            if found.example:
                out.append(f"- example: `{found.example}`")
            out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args not in ([], ["--write"]):
        sys.stderr.write("usage: python docs/reference.py [--write]\n")
        return 2
    text = render(EXAMPLE.read_text(encoding="utf-8"))
    if args:
        OUTPUT.write_text(text, encoding="utf-8")
        sys.stderr.write(f"wrote {OUTPUT}\n")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
