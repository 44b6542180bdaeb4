"""Configuration: one TOML file, overlaid by SYNCD_* environment variables, validated once.

One file serves every datacenter: each mirror maps datacenter names to volume roots, and a
daemon mirrors only the volumes of its own datacenter. `[s3]` is the default S3 endpoint;
`[endpoints.NAME]` tables name others (AWS for models, R2 for checkpoints, a MinIO or RunPod's
S3 API per datacenter), and a mirror picks one, or one per datacenter. Credentials are never
read from here: an endpoint names a profile or the environment variables that hold them, else
the standard AWS chain applies, so a config dump can be shared safely.

Environment overlay: `SYNCD_DATACENTER`, `SYNCD_S3__ENDPOINT_URL`, `SYNCD_TRANSFER__CONCURRENCY`,
`SYNCD_MIRRORS__<NAME>__DELETE`, `SYNCD_ENDPOINTS__<NAME>__ENDPOINT_URL`, ... Values are read
as TOML values (`true`, `16`, `"x"`) and fall back to plain strings. Errors name the file (or
variable), the field and the reason.

Bad input is bounded before it is parsed: tomllib and pydantic recurse once per level of
nesting, so a 500-level file would end in a RecursionError (issue 18). The file's size, each
variable's size and the nesting of both are checked first, and any RecursionError still left
becomes the same one-line ConfigError.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from syncd.errors import ConfigError
from syncd.keys import normalize_prefix
from syncd.ops.address import DEFAULT_LISTEN, env_value, host_port
from syncd.tomlbounds import (
    MAX_CONFIG_BYTES,
    MAX_DEPTH,
    MAX_ENV_VALUE_BYTES,
)
from syncd.tomlbounds import (
    depth as _depth,
)
from syncd.tomlbounds import (
    nesting as _nesting,
)
from syncd.tomlbounds import (
    too_deep as _too_deep,
)

ENV_PREFIX = "SYNCD_"
ENV_CONFIG = "SYNCD_CONFIG"
_NOT_OVERLAID = {ENV_CONFIG, "SYNCD_LOG_FORMAT"}
MiB = 1 << 20
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
Name = Annotated[str, Field(pattern=f"^{_NAME.pattern}$")]
EnvVar = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
DEFAULT_ENDPOINT = "default"  # how `[s3]` is named where a mirror or a message names endpoints


class _FieldProblem(ValueError):
    """A check across fields that names the one field at fault (pydantic would place it at
    the model that ran the check)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class S3Config(_Model):
    """An S3-compatible endpoint (`[s3]` or `[endpoints.NAME]`). Credentials come from the
    environment variables it names, else its profile, else the AWS chain: never the file."""

    endpoint_url: str | None = None
    region: str = "us-east-1"
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    profile: str | None = None
    access_key_id_env: EnvVar | None = None
    secret_access_key_env: EnvVar | None = None
    session_token_env: EnvVar | None = None
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(60.0, gt=0)
    max_attempts: int = Field(4, ge=1, le=20)

    @model_validator(mode="after")
    def _one_credential_source(self) -> S3Config:
        named = (self.access_key_id_env, self.secret_access_key_env)
        if any(named) and not all(named):
            raise ValueError("access_key_id_env and secret_access_key_env go together")
        if self.session_token_env and not all(named):
            raise ValueError("session_token_env needs access_key_id_env and "
                             "secret_access_key_env")
        if all(named) and self.profile:
            raise ValueError("credentials come from a profile or from named environment "
                             "variables, not both: drop profile or the *_env fields")
        return self

    def location(self) -> str:
        """Where the endpoint is, as messages and `config validate` say it."""
        return self.endpoint_url or f"AWS S3 {self.region}"

    def credential_source(self) -> str:
        """Where the endpoint's credentials come from; never their values."""
        if self.access_key_id_env:
            names = [self.access_key_id_env, self.secret_access_key_env, self.session_token_env]
            return "credentials from " + ", ".join(f"${n}" for n in names if n)
        if self.profile:
            return f"credentials from profile {self.profile!r}"
        return "credentials from the AWS chain"

    @field_validator("endpoint_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return None
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        parts = urlsplit(v)
        if "@" in parts.netloc or parts.query or parts.fragment:
            # The URL is shown in logs, errors and a metric label: nothing secret may ride in
            # it (user:password@, a presigned token in the query).
            raise ValueError("only scheme, host, port and path: no user@, ?query or #fragment")
        return v.rstrip("/")


class TransferConfig(_Model):
    concurrency: int = Field(16, ge=1, le=512)
    part_size: ByteSize = Field(ByteSize(8 * MiB), ge=5 * MiB, le=5 * 1024 * MiB)
    multipart_threshold: ByteSize = Field(ByteSize(8 * MiB), ge=5 * MiB)
    upload_buffer: ByteSize = Field(ByteSize(40 * MiB), ge=5 * MiB)
    min_free_bytes: ByteSize = Field(ByteSize(64 * MiB), ge=0)
    direct_io: bool = True
    native: bool = True


class LeaseConfig(_Model):
    """Write-lease timing (see docs/leases.md for the rules these numbers feed)."""

    ttl_s: float = Field(60.0, gt=0)
    renew_interval_s: float = Field(10.0, gt=0)
    renew_deadline_s: float = Field(40.0, gt=0)
    skew_margin_s: float = Field(15.0, ge=0)
    instance_id: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$")
    detect_dead_holders: bool = True
    journal: str | None = None
    bucket: str | None = None
    endpoint: Name | None = None
    force_volume: bool = False

    @field_validator("bucket")
    @classmethod
    def _lease_bucket(cls, v: str | None) -> str | None:
        if v is not None and not _BUCKET.fullmatch(v):
            raise ValueError(f"{v!r} is not a valid bucket name (3-63 lowercase letters, "
                             "digits, '.', '-')")
        return v

    @model_validator(mode="after")
    def _ordered(self) -> LeaseConfig:
        if not self.renew_interval_s < self.renew_deadline_s:
            raise ValueError("renew_interval_s must be shorter than renew_deadline_s")
        if not self.renew_deadline_s < self.ttl_s:
            raise ValueError("renew_deadline_s must be shorter than ttl_s")
        return self


class DaemonConfig(_Model):
    poll_interval_s: float = Field(30.0, gt=0)
    grace_s: float = Field(30.0, ge=0)
    retry_max_s: float = Field(60.0, gt=0)
    stall_s: float = Field(600.0, gt=0)


class HttpConfig(_Model):
    """The daemon's HTTP endpoint: /metrics, /healthz, /readyz. Loopback unless widened (a
    pod's probes and Prometheus need `0.0.0.0:PORT`); "" turns it off."""

    listen: str = DEFAULT_LISTEN

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        if v:
            host_port(v)
        return v

    def address(self) -> tuple[str, int] | None:
        return host_port(self.listen) if self.listen else None


PUSH_SETTLE_S = 15.0  # a file on the volume unchanged this long is written
PULL_SETTLE_S = 120.0  # an artifact's listing unchanged this long (four default polls)


class MirrorConfig(_Model):
    name: Name
    bucket: str
    prefix: str = ""
    direction: Literal["pull", "push"]
    lease: Literal["auto", "volume", "s3"] = "auto"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    delete: bool = False
    max_delete_count: int = Field(1000, ge=0)
    max_delete_fraction: float = Field(0.5, ge=0, le=1)
    volumes: dict[str, str] = Field(min_length=1)
    endpoint: Name | dict[str, Name] | None = None
    artifacts: tuple[str, ...] = ()
    marker: str | None = None
    settle_s: float | None = Field(None, ge=0)
    keep_versions_s: float = Field(3600.0, ge=0)

    @field_validator("endpoint", mode="before")
    @classmethod
    def _endpoint_shape(cls, v: object) -> object:
        """One message for either shape, instead of pydantic's one per union member."""
        names = v.values() if isinstance(v, dict) else [v]
        if v is not None and not all(
                isinstance(n, str) and _NAME.fullmatch(n) for n in names):
            raise ValueError(f"{v!r}: an endpoint name (a [endpoints.NAME] table, or "
                             "\"default\" for [s3]), or a table of datacenter = name")
        return v

    @field_validator("endpoint")
    @classmethod
    def _endpoint_datacenters(cls, v: str | dict[str, str] | None,
                              info: ValidationInfo) -> str | dict[str, str] | None:
        """A datacenter the mirror has no volume in is a typo ('EU-R0-1'): it would quietly
        leave the real one on [s3], the wrong server."""
        volumes = info.data.get("volumes")
        if isinstance(v, dict) and volumes is not None:
            unknown = sorted(set(v) - set(volumes))
            if unknown:
                raise ValueError(
                    f"datacenter(s) {', '.join(unknown)} have no volume in this mirror "
                    f"(volumes: {', '.join(sorted(volumes))})")
        return v

    @field_validator("artifacts")
    @classmethod
    def _artifact_globs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in v:
            if not pattern or pattern.startswith("/") or pattern.endswith("/"):
                raise ValueError(f"{pattern!r}: a glob over directory paths relative to the "
                                 "mirror root, like 'models/*' or 'llama-*'")
        return v

    @field_validator("marker")
    @classmethod
    def _marker(cls, v: str | None) -> str | None:
        if v is not None and (v in ("", ".", "..") or "/" in v or "\x00" in v):
            raise ValueError(f"{v!r}: a plain file name, like '_COMPLETE'")
        return v

    @property
    def quiet_s(self) -> float:
        """`settle_s`, or its default for the direction. Pull waits longer: between two
        objects of a plain uploader lies one whole shard's upload, which is invisible in the
        listing until it completes (a 10 GB shard at 100 MB/s: 100 s)."""
        if self.settle_s is not None:
            return self.settle_s
        return PULL_SETTLE_S if self.direction == "pull" else PUSH_SETTLE_S

    @property
    def lease_backend(self) -> Literal["volume", "s3"]:
        """Where the lease lives: by default on the side this mirror writes to."""
        if self.lease != "auto":
            return self.lease
        return "volume" if self.direction == "pull" else "s3"

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, v: str) -> str:
        if not _BUCKET.fullmatch(v):
            raise ValueError(
                f"{v!r} is not a valid bucket name (3-63 lowercase letters, digits, '.', '-')"
            )
        return v

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        return normalize_prefix(v)

    @field_validator("volumes")
    @classmethod
    def _roots(cls, v: dict[str, str]) -> dict[str, str]:
        for dc, root in v.items():
            if not os.path.isabs(root):
                raise ValueError(f"volume root for {dc!r} must be an absolute path, got {root!r}")
        return {dc: os.path.normpath(root) for dc, root in v.items()}


class Config(_Model):
    datacenter: str | None = None
    s3: S3Config = S3Config()
    endpoints: dict[Name, S3Config] = {}
    transfer: TransferConfig = TransferConfig()
    lease: LeaseConfig = LeaseConfig()
    daemon: DaemonConfig = DaemonConfig()
    http: HttpConfig = HttpConfig()
    mirrors: tuple[MirrorConfig, ...] = Field(min_length=1)
    source: str = Field("", exclude=True)

    @field_validator("mirrors")
    @classmethod
    def _unique(cls, v: tuple[MirrorConfig, ...]) -> tuple[MirrorConfig, ...]:
        names = [m.name for m in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate mirror name(s): {', '.join(dupes)}")
        return v

    @field_validator("endpoints")
    @classmethod
    def _not_default(cls, v: dict[str, S3Config]) -> dict[str, S3Config]:
        if DEFAULT_ENDPOINT in v:
            raise ValueError(f"{DEFAULT_ENDPOINT!r} is the [s3] table's name; pick another")
        return v

    @model_validator(mode="after")
    def _known_endpoints(self) -> Config:
        """Every name a mirror uses exists, in every datacenter's entry, not only this one:
        a typo must fail where the file is validated, not in the datacenter it names."""
        known = {*self.endpoints, DEFAULT_ENDPOINT}
        for i, m in enumerate(self.mirrors):
            chosen = m.endpoint if isinstance(m.endpoint, dict) else {"": m.endpoint or ""}
            for dc, name in chosen.items():
                if name and name not in known:
                    raise _FieldProblem(
                        f"mirrors[{i}].endpoint", f"no endpoint named {name!r}"
                        + (f" (for datacenter {dc})" if dc else "")
                        + f" in mirror {m.name!r}; known: {', '.join(sorted(known))}")
        return self

    @model_validator(mode="after")
    def _one_arbiter_per_volume(self) -> Config:
        """Mirrors writing to one volume root share its lease, so they must agree on what
        arbitrates it: "auto" on one and "volume" on another would be two leases, two
        writers."""
        if self.lease.endpoint and self.lease.endpoint not in {*self.endpoints,
                                                               DEFAULT_ENDPOINT}:
            raise _FieldProblem("lease.endpoint", f"no endpoint named {self.lease.endpoint!r}")
        for dc in {dc for m in self.mirrors for dc in m.volumes}:
            chosen: dict[str, tuple[str, str]] = {}
            for m in self.mirrors:
                root = m.volumes.get(dc)
                if root is None or m.lease_backend != "volume":
                    continue
                first = chosen.setdefault(root, (m.name, m.lease))
                if first[1] != m.lease:
                    i = self.mirrors.index(m)
                    raise _FieldProblem(
                        f"mirrors[{i}].lease",
                        f"{m.lease!r} in mirror {m.name!r}, but mirror {first[0]!r} on the "
                        f"same volume {root} ({dc}) says {first[1]!r}: mirrors on one volume "
                        "share one lease and must name the same one")
        return self

    def volume_arbiter(self, root: Path) -> tuple[str, str]:
        """(endpoint name, bucket) of the S3 lease that guards a volume whose filesystem
        cannot arbitrate it: `[lease] bucket`, else the bucket of the first pull mirror on
        that root by name (every instance sharing the volume must find the same one; the
        volume records it, see lease/arbiter.py)."""
        on_root = sorted((m for m in self.mirrors if m.lease_backend == "volume"
                          and self.volume_root(m) == root), key=lambda m: m.name)
        if self.lease.bucket:
            return self.lease.endpoint or DEFAULT_ENDPOINT, self.lease.bucket
        assert on_root, "asked only for the root of a volume-leased mirror"
        return self.lease.endpoint or self.endpoint_name(on_root[0]), on_root[0].bucket

    def endpoint_name(self, mirror: MirrorConfig) -> str:
        """The endpoint the mirror uses in this datacenter: its own name, its datacenter's
        entry, else `[s3]`."""
        chosen = mirror.endpoint
        if isinstance(chosen, dict):
            chosen = chosen.get(self.active_datacenter())
        return chosen or DEFAULT_ENDPOINT

    def endpoint(self, mirror: MirrorConfig) -> S3Config:
        found = self.endpoint_named(self.endpoint_name(mirror))
        assert found is not None, "validated: every name a mirror uses exists"
        return found

    def endpoint_named(self, name: str) -> S3Config | None:
        return self.s3 if name == DEFAULT_ENDPOINT else self.endpoints.get(name)

    def mirror(self, name: str) -> MirrorConfig:
        for m in self.mirrors:
            if m.name == name:
                return m
        known = ", ".join(m.name for m in self.mirrors)
        raise ConfigError(f"no mirror named {name!r} (known: {known})", file=self.source)

    def active_datacenter(self) -> str:
        """This daemon's datacenter; with a single datacenter in the file it is implied."""
        if self.datacenter:
            return self.datacenter
        all_dcs = {dc for m in self.mirrors for dc in m.volumes}
        if len(all_dcs) == 1:
            return next(iter(all_dcs))
        raise ConfigError(
            "not set and the mirrors name several datacenters",
            file=self.source, field="datacenter",
            hint="set `datacenter` in the config or SYNCD_DATACENTER",
        )

    def volume_root(self, mirror: MirrorConfig) -> Path | None:
        """The mirror's volume root in this datacenter, or None when it has none here."""
        root = mirror.volumes.get(self.active_datacenter())
        return Path(root) if root else None


def _env_name(mirror: str) -> str:
    """How a mirror name is spelled in a variable: 'llama-3.1' -> 'llama_3_1'."""
    return re.sub(r"[^a-z0-9_]", "_", mirror.lower())


def _overlay(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    """Apply SYNCD_* variables in place; returns dotted field -> variable, for error messages."""
    origins: dict[str, str] = {}
    for var in sorted(env):
        if not var.startswith(ENV_PREFIX) or var in _NOT_OVERLAID:
            continue
        path = [p.lower() for p in var[len(ENV_PREFIX):].split("__") if p]
        if not path:
            continue
        levels = len(path) - 1  # the tables the value sits in
        target: Any = data
        dotted = path[0]
        if path[0] == "endpoints" and len(path) == 3:
            if path[1] == DEFAULT_ENDPOINT:
                raise ConfigError(f"{DEFAULT_ENDPOINT!r} is the [s3] table: use "
                                  f"{ENV_PREFIX}S3__{path[2].upper()}", file=f"env {var}")
            endpoints = data.get("endpoints", {})
            names = list(endpoints) if isinstance(endpoints, dict) else []
            name = names[_named(names, path[1], "endpoint", var)]
            target, path = endpoints[name], path[2:]
            dotted = f"endpoints.{name}.{path[0]}"
        elif path[0] == "mirrors" and len(path) == 3:
            mirrors = data.get("mirrors", [])
            index = _named([m.get("name", "") if isinstance(m, dict) else "" for m in mirrors],
                           path[1], "mirror", var)
            target, path = mirrors[index], path[2:]
            dotted = f"mirrors[{index}].{path[0]}"
        else:
            for part in path[:-1]:
                target = target.setdefault(part, {})
                if not isinstance(target, dict):
                    raise ConfigError("cannot set a field inside a non-table", file=f"env {var}")
            dotted = ".".join(path)
        value = _env_value(env[var], var)
        if levels + _depth(value) > MAX_DEPTH:
            raise ConfigError(_too_deep(), file=f"env {var}")
        target[path[-1]] = value
        origins[dotted] = var
    return origins


def _env_value(text: str, var: str) -> Any:
    size = len(text.encode("utf-8", "surrogateescape"))
    if size > MAX_ENV_VALUE_BYTES:
        raise ConfigError(f"larger than the limit of {MAX_ENV_VALUE_BYTES // 1024} KiB "
                          f"({size} bytes)", file=f"env {var}")
    if _nesting(f"v = {text}") > MAX_DEPTH:  # scanned as env_value parses it: a value
        raise ConfigError(_too_deep(), file=f"env {var}")
    try:
        return env_value(text)
    except RecursionError:  # the pre-scan should have caught it
        raise ConfigError(_too_deep(), file=f"env {var}") from None


def _named(names: list[Any], spelled: str, kind: str, var: str) -> int:
    """Which of `names` a variable's spelling means. Like an unknown field, an unknown name
    is an error (a typo must not create something unused), and so is a spelling two names
    share ('minio-eu' and 'minio_eu')."""
    found = [i for i, n in enumerate(names) if _env_name(str(n)) == spelled]
    if not found:
        raise ConfigError(f"no {kind} named {spelled!r} in the file", file=f"env {var}")
    if len(found) > 1:
        both = " and ".join(repr(names[i]) for i in found)
        raise ConfigError(f"{both} are both spelled {spelled!r} in a variable: rename one",
                          file=f"env {var}")
    return found[0]


def _field_name(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse(
    text: str, *, source: str = "<config>", env: Mapping[str, str] | None = None
) -> Config:
    """Validate TOML text plus the environment overlay into a Config."""
    size = len(text) if len(text) > MAX_CONFIG_BYTES else len(text.encode(errors="replace"))
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(_too_large(), file=source)
    if _nesting(text) > MAX_DEPTH:
        raise ConfigError(_too_deep(), file=source)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", file=source) from None
    except RecursionError:  # the pre-scan should have caught it
        raise ConfigError(_too_deep(), file=source) from None
    if _depth(data) - 1 > MAX_DEPTH:  # the document itself is no level
        raise ConfigError(_too_deep(), file=source)
    origins = _overlay(data, os.environ if env is None else env)
    try:
        return Config.model_validate({**data, "source": source})
    except RecursionError:
        raise ConfigError(_too_deep(), file=source) from None
    except ValidationError as exc:
        problems = []
        errors = exc.errors()
        locs = [e["loc"] for e in errors]
        for err in errors:
            if any(len(o) > len(err["loc"]) and o[: len(err["loc"])] == err["loc"] for o in locs):
                continue  # a parent's summary of an error already reported in full
            msg = err["msg"].removeprefix("Value error, ")
            name = _field_name(err["loc"])
            cause = (err.get("ctx") or {}).get("error")
            if isinstance(cause, _FieldProblem):
                name = f"{name}.{cause.field}" if name else cause.field
                msg = str(cause)
            where = f"{name} (from {origins[name]})" if name in origins else name
            problems.append(f"{where}: {msg}")
        raise ConfigError("; ".join(problems), file=source) from None


def load(path: str | os.PathLike[str] | None = None) -> Config:
    """Read the config from `path`, else $SYNCD_CONFIG; one ConfigError line on any problem."""
    chosen = path or os.environ.get(ENV_CONFIG)
    if not chosen:
        raise ConfigError("no config file given", hint="pass --config PATH or set SYNCD_CONFIG")
    p = Path(chosen)
    return parse(_read(p), source=str(p))


def _too_large() -> str:
    return f"larger than the limit of {MAX_CONFIG_BYTES // MiB} MiB"


def _read(p: Path) -> str:
    """The file's text, at most MAX_CONFIG_BYTES of it. Only a regular file: a FIFO would
    block a SIGHUP reload forever (hence O_NONBLOCK), /dev/zero would never end."""
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError("file not found", file=str(p)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", file=str(p)) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
            raise ConfigError(f"cannot read: {kind}", file=str(p))
        with open(fd, "rb", closefd=False) as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", file=str(p)) from None
    finally:
        os.close(fd)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(_too_large(), file=str(p))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read: {exc}", file=str(p)) from None
