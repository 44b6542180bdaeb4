"""Bounds on TOML text before it is parsed: tomllib and pydantic recurse once per level of
nesting, so a file nested 500 levels deep would end in a RecursionError. Size is checked by
the reader; nesting by a linear pre-scan of the text (`nesting`) and, after parsing, of the
value (`depth`), neither recursive."""

from __future__ import annotations

import re

MAX_CONFIG_BYTES = 1 << 20  # a real file is a few KiB
MAX_ENV_VALUE_BYTES = 64 * 1024
MAX_DEPTH = 32  # levels of tables, arrays and inline tables; a real file uses 4


# A token of TOML text as the depth pre-scan needs it: a whole string of any of the four
# kinds, ended where tomllib ends it (a one-line string at its line's end, a multi-line one
# taking up to two more quotes), a comment, a bracket or a newline. Possessive and atomic,
# so linear on any input.
_TOKEN = re.compile(r"""
    (?P<str> "{3} (?: [^"\\]++ | \\. | "(?!"") )*+ (?: "{3}"{0,2} | \Z )
           | '{3} (?> .*? (?: '{3}'{0,2} | \Z ) )
           | " (?: [^"\\\n]++ | \\[^\n] )*+ "?
           | ' [^'\n]*+ '? )
  | (?P<comment> \#[^\n]*+ )
  | (?P<open> [\[{] ) | (?P<close> [\]}] ) | (?P<newline> \n )
""", re.VERBOSE | re.DOTALL)


def nesting(text: str) -> int:
    """The deepest nesting of arrays and inline tables in TOML text, found without parsing
    it (tomllib recurses once per level). Brackets inside strings and comments do not
    count, nor those of a `[table]` or `[[array]]` header line."""
    depth = deepest = 0
    header = False
    line_start = True  # no token yet on this line
    end = 0
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup
        if kind == "newline":
            header, line_start, end = False, True, m.end()
            continue
        at_start = line_start and not text[end:m.start()].strip(" \t")
        line_start = False
        if header or kind in ("str", "comment"):
            continue
        if kind == "open":
            if depth == 0 and at_start and m.group() == "[":
                header = True
                continue
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth = max(depth - 1, 0)
    return deepest


def depth(value: object) -> int:
    """How many levels of tables and arrays a parsed value is (0 for a scalar), dotted keys
    and headers included; without recursion, since it guards what recursion cannot take."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def too_deep() -> str:
    return (f"nested deeper than the limit of {MAX_DEPTH} levels of tables, arrays and "
            "inline tables")
