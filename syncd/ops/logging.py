"""structlog setup: JSON lines off a terminal, readable console output on one; redaction.

Logs go to stderr so stdout stays for plans, reports and the summary line. Any field whose
name suggests a secret is masked, whatever the event: a credential must never reach a log.
`log.exception(...)` (or `exc_info=`) becomes an `exception` field holding the traceback's
text in either format: a JSON line would otherwise say only `"exc_info": true`.
"""

from __future__ import annotations

import functools
import logging
import os
import re
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


# C0, DEL and C1 controls, bidi formatting characters and line/paragraph separators: the
# characters keys.unsafe_reason refuses in a name, for the same reasons.
_UNSAFE_TEXT = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")
_MULTILINE = frozenset({"exception", "stack"})  # tracebacks: their line breaks are ours


def _escape(text: str, keep: str = "") -> str:
    return _UNSAFE_TEXT.sub(
        lambda m: m[0] if m[0] in keep else m[0].encode("unicode_escape").decode("ascii"), text)


def _escape_controls(_: Any, __: str,
                     event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Console lines print string values as they are, and an object key or a file name is
    chosen by whoever writes to the bucket or volume: an ESC sequence in one (or C1 CSI, a
    bidi override, a line separator) would recolour, move the cursor, clear the operator's
    terminal or forge a log line. Each such character is shown escaped (`\\x1b`, `\\u202e`).
    Other values are printed with repr(), which escapes them already; JSON lines are ASCII."""
    for field, value in event.items():
        if isinstance(value, str):
            event[field] = _escape(value, "\n" if field in _MULTILINE else "")
    return event


def processors(fmt: str, *, colors: bool = False) -> list[Any]:
    """The chain an event goes through, ending in the renderer of `fmt` ("json" or
    "console"). The traceback is text before redaction and escaping see the event."""
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=colors)
        if fmt == "console" else structlog.processors.JSONRenderer()
    )
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        _redact,
        *([_escape_controls] if fmt == "console" else []),
        renderer,
    ]


def setup(level: str = "info", *, fmt: str | None = None) -> None:
    fmt = fmt or os.environ.get("SYNCD_LOG_FORMAT") or (
        "console" if sys.stderr.isatty() else "json")
    structlog.configure(
        processors=processors(fmt, colors=sys.stderr.isatty()),
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def get(**bound: Any) -> Any:
    return structlog.get_logger().bind(**bound)
