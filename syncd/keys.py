"""Object keys <-> safe relative paths. Pure.

An object key is attacker-controlled input: whoever can write to the bucket chooses it. A key
is accepted only if, joined under the volume root, it can name nothing outside that root and
nothing inside syncd's own `.syncd/` directory. Everything else is refused with a reason.
"""

from __future__ import annotations

import re
from functools import lru_cache

RESERVED_DIR = ".syncd"
MAX_SEGMENT_BYTES = 255  # NAME_MAX on Linux filesystems
MAX_PATH_BYTES = 4000  # under PATH_MAX (4096), leaving room for the root
# C0, DEL and C1 controls (U+0085 NEL among them): terminals and log viewers act on them.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
# Characters that make a name display as something it is not: bidi embeddings, overrides,
# isolates and marks (U+202E shows "evil\u202eexe.txt" as "eviltxt.exe", CVE-2021-42574's
# "Trojan Source") and the line and paragraph separators, which split one name over lines.
_BIDI = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_SEPARATOR = re.compile("[\u2028\u2029]")


def normalize_prefix(prefix: str) -> str:
    """'models' and 'models/' name the same folder; '' is the whole bucket."""
    prefix = prefix.strip("/")
    return f"{prefix}/" if prefix else ""


def unsafe_reason(key: str) -> str | None:
    """Why `key` (relative to the mirror root) must not become a path, or None if it is safe."""
    if not key:
        return "empty key"
    if "\x00" in key:
        return "contains NUL"
    if "\\" in key:
        return "contains a backslash"
    if key.startswith("/"):
        return "absolute path"
    if found := _CONTROL.search(key):
        return f"contains a control character (U+{ord(found[0]):04X})"
    if found := _BIDI.search(key):
        return f"contains a bidirectional formatting character (U+{ord(found[0]):04X})"
    if found := _SEPARATOR.search(key):
        return f"contains a line or paragraph separator (U+{ord(found[0]):04X})"
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError:
        return "not valid UTF-8"
    if len(encoded) > MAX_PATH_BYTES:
        return f"longer than {MAX_PATH_BYTES} bytes"
    segments = key.split("/")
    for segment in segments:
        if segment in ("", ".", ".."):
            return f"has a {segment!r} path segment" if segment else "has an empty path segment"
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            return f"has a path segment longer than {MAX_SEGMENT_BYTES} bytes"
    if segments[0] == RESERVED_DIR:
        return f"inside syncd's reserved {RESERVED_DIR}/ directory"
    return None


_OWN_OBJECT = re.compile(
    rf"{re.escape(RESERVED_DIR)}/(?:volumes/[0-9a-f]{{32}}/)?"
    r"(?:lease\.json|commit\.json|probe-[0-9a-f]{32})\Z")


def syncd_object(key: str) -> bool:
    """Whether `key` (relative to a mirror's prefix) is an object syncd keeps in the bucket:
    the S3 lease and its commit record and the probe that tests the lease's permissions
    (lease/s3.py), at `.syncd/` or, for a volume arbitrated through S3, at
    `.syncd/volumes/<volume id>/` (lease/arbiter.py). Those are not data, so a listing
    leaves them out without a word; any other key under `.syncd/` is someone else's and is
    refused, logged and counted like every unsafe key (`unsafe_reason`)."""
    return _OWN_OBJECT.match(key) is not None


def is_directory_marker(key: str) -> bool:
    """Zero-byte 'folder/' objects made by consoles: not files, silently ignored."""
    return key.endswith("/")


def relative_key(object_key: str, prefix: str) -> str:
    """The part of `object_key` under the normalized `prefix`."""
    return object_key[len(prefix):] if prefix and object_key.startswith(prefix) else object_key


def _valid_class(text: str) -> bool:
    try:
        re.compile(text)
    except re.error:
        return False
    return True


@lru_cache(maxsize=256)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Glob -> regex: '**' crosses '/', '*' and '?' stay within a segment, [..] a class."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            # POSIX: a ']' right after '[' or '[!' is a member, not the end of the class.
            first = i + 2 if pattern.startswith("[!", i) else i + 1
            end = pattern.find("]", first + 1)
            members = "".join(  # '&~|' and a doubled '-' are set operators to come in re
                f"\\{ch}" if ch in "\\[]^&~|" or (ch == "-" and prev == "-") else ch
                for prev, ch in zip(" " + pattern[first:end], pattern[first:end],
                                    strict=False))
            negate = "^/" if first == i + 2 else ""  # never crosses a segment
            if end == -1 or not _valid_class(f"[{negate}{members}]"):
                out.append(re.escape(c))  # not a class (unclosed, or a range like [z-a])
                i += 1
            else:
                out.append(f"[{negate}{members}]")
                i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def glob_match(pattern: str, key: str) -> bool:
    """Match a relative key; a pattern without '/' matches the basename at any depth."""
    if "/" not in pattern:
        pattern = f"**/{pattern}"
    return _glob_regex(pattern).match(key) is not None


def selected(key: str, include: tuple[str, ...], exclude: tuple[str, ...]) -> bool:
    """Included by some include glob (all when none) and by no exclude glob."""
    if include and not any(glob_match(p, key) for p in include):
        return False
    return not any(glob_match(p, key) for p in exclude)
