"""syncd.ops.logging: console lines show a key's control and bidi characters escaped; a
traceback is text in an `exception` field, in JSON lines as on the console.

Events go through the chain `setup` configures (`processors`), real renderers included, and
one test through `setup` itself; the end-to-end run is tests/e2e/test_reports.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.ops import logging as logs
from syncd.ops.logging import processors

HOSTILE = "esc\x1b[2J csi\x9b31m nel\x85 rlo\u202e ls\u2028 bell\x07 tab\t nl\n"


def _render(fmt: str, **event: object) -> str:
    out: Any = dict(event)
    for step in processors(fmt):
        out = step(None, "warning", out)
    assert isinstance(out, str)
    return out


def _console(**event: object) -> str:
    return _render("console", **event)


def _fail(why: str) -> None:
    raise ValueError(why)


def test_console_line_escapes_each_control_bidi_and_separator_character() -> None:
    line = _console(event="key_refused", key=HOSTILE, mirror="m")
    assert line.count("\n") == 0
    for raw, shown in [("\x1b", "\\x1b"), ("\x9b", "\\x9b"), ("\x85", "\\x85"),
                       ("\u202e", "\\u202e"), ("\u2028", "\\u2028"), ("\x07", "\\x07"),
                       ("\t", "\\t"), ("\n", "\\n")]:
        assert raw not in line
        assert shown in line
    assert "mirror=m" in line


def test_console_traceback_keeps_its_lines_and_escapes_a_key_inside_it() -> None:
    try:
        raise ValueError(f"cannot read {HOSTILE}")
    except ValueError as exc:
        line = _console(event="pass_failed", exc_info=exc)
    assert "Traceback (most recent call last):" in line
    assert line.count("\n") >= 3  # the traceback's own lines stay lines
    assert "\x1b" not in line and "\u202e" not in line and "\x85" not in line
    assert "esc\\x1b[2J" in line


def test_console_leaves_ordinary_text_and_other_values_as_they_are() -> None:
    line = _console(event="copy_published", key="sub dir/tökenizer 模型.json", bytes=5,
                    keys=["a\x1b"])
    assert "sub dir/tökenizer 模型.json" in line
    assert "bytes=5" in line
    assert "keys=['a\\x1b']" in line  # repr() escaped it already


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_console_line_never_holds_a_c0_c1_bidi_or_separator_character(key: str) -> None:
    line = _console(event="key_refused", key=key)
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F
                   or c in "\u061c\u200e\u200f\u2028\u2029"
                   or 0x202A <= ord(c) <= 0x202E or 0x2066 <= ord(c) <= 0x2069
                   for c in line)


def test_json_line_of_log_exception_carries_the_traceback_as_text(
        capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup("info", fmt="json")  # writes to sys.stderr, which capsys holds now
    try:
        try:
            _fail("cannot read weights/model.bin")
        except ValueError:
            logs.get(mirror="m").exception("unexpected_error", error="boom")
    finally:
        structlog.reset_defaults()
    (line,) = capsys.readouterr().err.splitlines()
    logged = json.loads(line)
    assert "exc_info" not in logged
    assert logged["event"] == "unexpected_error" and logged["level"] == "error"
    assert logged["mirror"] == "m" and logged["error"] == "boom"
    assert logged["exception"].startswith("Traceback (most recent call last):")
    assert "in _fail" in logged["exception"]
    assert logged["exception"].rstrip().endswith("ValueError: cannot read weights/model.bin")


def test_json_line_takes_the_traceback_of_an_exception_given_as_exc_info() -> None:
    try:
        _fail(f"cannot read {HOSTILE}")
    except ValueError as exc:
        caught = exc
    line = _render("json", event="pass_failed", exc_info=caught)  # outside the handler
    assert line.isascii() and "\n" not in line  # one JSON line, whatever the key holds
    logged = json.loads(line)
    assert "exc_info" not in logged
    assert f"ValueError: cannot read {HOSTILE}" in logged["exception"]


def test_json_line_without_an_exception_has_no_exception_field() -> None:
    logged = json.loads(_render("json", event="pass_done", exc_info=True))  # none is raised
    assert "exception" not in logged and "exc_info" not in logged
