"""Configuration: one TOML file, overlaid by SYNCD_* environment variables, validated once.

One file serves every datacenter: each mirror maps datacenter names to volume roots, and a
daemon mirrors only the volumes of its own datacenter. Credentials are never read from here:
they come from the standard AWS chain, so a config dump can be shared safely.

Environment overlay: `SYNCD_DATACENTER`, `SYNCD_S3__ENDPOINT_URL`, `SYNCD_TRANSFER__CONCURRENCY`,
`SYNCD_MIRRORS__<NAME>__DELETE`, ... Values are read as TOML values (`true`, `16`, `"x"`) and
fall back to plain strings. Errors name the file (or variable), the field and the reason.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from syncd.errors import ConfigError
from syncd.keys import normalize_prefix
from syncd.ops.address import DEFAULT_LISTEN, env_value, host_port

ENV_PREFIX = "SYNCD_"
ENV_CONFIG = "SYNCD_CONFIG"
_NOT_OVERLAID = {ENV_CONFIG, "SYNCD_LOG_FORMAT"}
MiB = 1 << 20
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class S3Config(_Model):
    """The S3-compatible endpoint. Credentials: AWS_* environment, profile or instance role."""

    endpoint_url: str | None = None
    region: str = "us-east-1"
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    profile: str | None = None
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(60.0, gt=0)
    max_attempts: int = Field(4, ge=1, le=20)

    @field_validator("endpoint_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/") if v else None


class TransferConfig(_Model):
    concurrency: int = Field(16, ge=1, le=512)
    part_size: ByteSize = Field(ByteSize(8 * MiB), ge=5 * MiB, le=5 * 1024 * MiB)
    multipart_threshold: ByteSize = Field(ByteSize(8 * MiB), ge=5 * MiB)
    upload_buffer: ByteSize = Field(ByteSize(40 * MiB), ge=5 * MiB)
    min_free_bytes: ByteSize = Field(ByteSize(64 * MiB), ge=0)
    direct_io: bool = True


class LeaseConfig(_Model):
    """Write-lease timing (see docs/leases.md for the rules these numbers feed)."""

    ttl_s: float = Field(60.0, gt=0)
    renew_interval_s: float = Field(10.0, gt=0)
    renew_deadline_s: float = Field(40.0, gt=0)
    skew_margin_s: float = Field(15.0, ge=0)
    instance_id: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$")
    detect_dead_holders: bool = True
    journal: str | None = None

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
    artifacts: tuple[str, ...] = ()
    marker: str | None = None
    settle_s: float = Field(15.0, ge=0)
    keep_versions_s: float = Field(3600.0, ge=0)

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
        target: Any = data
        dotted = path[0]
        if path[0] == "mirrors" and len(path) == 3:
            mirrors = data.get("mirrors", [])
            index = next(
                (i for i, m in enumerate(mirrors)
                 if isinstance(m, dict) and _env_name(str(m.get("name", ""))) == path[1]),
                None,
            )
            if index is None:
                raise ConfigError(f"no mirror named {path[1]!r}", file=f"env {var}")
            target, path = mirrors[index], path[2:]
            dotted = f"mirrors[{index}].{path[0]}"
        else:
            for part in path[:-1]:
                target = target.setdefault(part, {})
                if not isinstance(target, dict):
                    raise ConfigError("cannot set a field inside a non-table", file=f"env {var}")
            dotted = ".".join(path)
        target[path[-1]] = env_value(env[var])
        origins[dotted] = var
    return origins


def _field_name(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse(
    text: str, *, source: str = "<config>", env: Mapping[str, str] | None = None
) -> Config:
    """Validate TOML text plus the environment overlay into a Config."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", file=source) from None
    origins = _overlay(data, os.environ if env is None else env)
    try:
        return Config.model_validate({**data, "source": source})
    except ValidationError as exc:
        problems = []
        errors = exc.errors()
        locs = [e["loc"] for e in errors]
        for err in errors:
            if any(len(o) > len(err["loc"]) and o[: len(err["loc"])] == err["loc"] for o in locs):
                continue  # a parent's summary of an error already reported in full
            name = _field_name(err["loc"]) or "(top level)"
            where = f"{name} (from {origins[name]})" if name in origins else name
            problems.append(f"{where}: {err['msg']}")
        raise ConfigError("; ".join(problems), file=source) from None


def load(path: str | os.PathLike[str] | None = None) -> Config:
    """Read the config from `path`, else $SYNCD_CONFIG; one ConfigError line on any problem."""
    chosen = path or os.environ.get(ENV_CONFIG)
    if not chosen:
        raise ConfigError("no config file given", hint="pass --config PATH or set SYNCD_CONFIG")
    p = Path(chosen)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", file=str(p)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", file=str(p)) from None
    return parse(text, source=str(p))
