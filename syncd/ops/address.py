"""Where the HTTP endpoint listens, as text: shared by the config schema and `syncd health`,
which must answer without importing the schema's libraries."""

from __future__ import annotations

import tomllib
from typing import Any

DEFAULT_LISTEN = "127.0.0.1:9847"
ENV_LISTEN = "SYNCD_HTTP__LISTEN"


def host_port(listen: str) -> tuple[str, int]:
    """"HOST:PORT" ("[::1]:PORT" for IPv6) -> (host, port); ValueError names the problem."""
    host, sep, port = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{listen!r} is not HOST:PORT (for example {DEFAULT_LISTEN})")
    return host, int(port)


def env_value(text: str) -> Any:
    """A SYNCD_* variable's value: TOML when it parses as one ("0.0.0.0:9847" quoted, 8,
    true), else the raw text. The daemon and `syncd health` must read it alike."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except (tomllib.TOMLDecodeError, RecursionError):  # the config bounds nesting itself
        return text
