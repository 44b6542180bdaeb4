"""structlog setup: JSON lines off a terminal, readable console output on one; redaction.

Logs go to stderr so stdout stays for plans, reports and the summary line. Any field whose
name suggests a secret is masked, whatever the event: a credential must never reach a log.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_SECRET_WORDS = ("secret", "password", "token", "credential", "authorization", "access_key")


@functools.lru_cache(maxsize=1024)
def _secret(name: str) -> bool:
    lower = name.lower()
    return any(word in lower for word in _SECRET_WORDS)


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for name in [n for n in event if _secret(n)]:
        event[name] = "***"
    return event


def setup(level: str = "info", *, fmt: str | None = None) -> None:
    fmt = fmt or os.environ.get("SYNCD_LOG_FORMAT") or (
        "console" if sys.stderr.isatty() else "json")
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if fmt == "console" else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def get(**bound: Any) -> Any:
    return structlog.get_logger().bind(**bound)
