"""syncd.keys: which object keys may become paths under a volume root, prefixes and globs."""

from __future__ import annotations

import os
import unicodedata
import uuid
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.keys import (
    MAX_PATH_BYTES,
    MAX_SEGMENT_BYTES,
    RESERVED_DIR,
    glob_match,
    is_directory_marker,
    normalize_prefix,
    relative_key,
    selected,
    syncd_object,
    unsafe_reason,
)

PROPERTY = settings(max_examples=200, deadline=None)

# Characters that make keys interesting: separators, dots, escapes, unicode, controls.
KEY_CHARS = st.sampled_from(
    ["a", "b", "/", "/", ".", ".", " ", "\\", "\x00", "\x1f", "\x7f", "é", "日", "\U0001f600",
     "s", "y", "n", "c", "d"]
)
ANY_KEY = st.text(KEY_CHARS, max_size=24) | st.text(max_size=24)

# --- unsafe_reason: refusals --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        ("", "empty"),
        ("..", "'..'"),
        ("../etc/passwd", "'..'"),
        ("a/../../b", "'..'"),
        ("a/..", "'..'"),
        (".", "'.'"),
        ("./a", "'.'"),
        ("a/./b", "'.'"),
        ("/etc/passwd", "absolute"),
        ("/", "absolute"),
        ("a\\b", "backslash"),
        ("..\\..\\windows", "backslash"),
        ("a\x00b", "NUL"),
        ("a\nb", "control"),
        ("a\tb", "control"),
        ("\x1b[31mred", "control"),
        ("a\x7fb", "control"),
        ("a//b", "empty path segment"),
        ("a/", "empty path segment"),
        ("a/b/", "empty path segment"),
        (RESERVED_DIR, RESERVED_DIR),
        (f"{RESERVED_DIR}/state/m.json", RESERVED_DIR),
        (f"{RESERVED_DIR}/x", "reserved"),
        ("\ud800", "UTF-8"),
    ],
)
def test_unsafe_reason_refuses_key_with_reason(key: str, fragment: str) -> None:
    reason = unsafe_reason(key)
    assert reason is not None
    assert fragment in reason


@pytest.mark.parametrize(
    "segment",
    [
        "a" * (MAX_SEGMENT_BYTES + 1),
        "é" * 128,  # 256 bytes in UTF-8, only 128 characters
        "日" * 86,  # 258 bytes in UTF-8
        "\U0001f600" * 64,  # 256 bytes in UTF-8
    ],
)
def test_unsafe_reason_refuses_segment_over_255_utf8_bytes(segment: str) -> None:
    for key in (segment, f"dir/{segment}", f"{segment}/file"):
        reason = unsafe_reason(key)
        assert reason is not None
        assert "longer than 255 bytes" in reason


@pytest.mark.parametrize("segment", ["a" * MAX_SEGMENT_BYTES, "é" * 127, "日" * 85])
def test_unsafe_reason_accepts_segment_of_at_most_255_utf8_bytes(segment: str) -> None:
    assert len(segment.encode("utf-8")) <= MAX_SEGMENT_BYTES
    assert unsafe_reason(f"dir/{segment}") is None


def _path_of_bytes(total: int) -> str:
    """A key of exactly `total` UTF-8 bytes made of valid 200-byte segments."""
    segments: list[str] = []
    remaining = total
    while remaining > 0:
        n = min(200, remaining)
        if remaining - n == 1:  # never leave a 0-length segment after the separator
            n -= 1
        segments.append("p" * n)
        remaining -= n + 1  # segment plus the '/' separator
    key = "/".join(segments)
    if len(key) < total:
        key = key[:-1] + "p" * (total - len(key) + 1)
    return key


def test_unsafe_reason_refuses_path_over_max_bytes() -> None:
    key = _path_of_bytes(MAX_PATH_BYTES + 1)
    assert len(key.encode("utf-8")) == MAX_PATH_BYTES + 1
    reason = unsafe_reason(key)
    assert reason is not None
    assert f"longer than {MAX_PATH_BYTES} bytes" in reason


def test_unsafe_reason_refuses_path_over_max_bytes_counting_multibyte_chars() -> None:
    segment = "é" * 100  # 100 characters, 200 bytes
    key = "/".join([segment] * 20)  # 2019 characters, 4019 bytes
    assert len(key) < MAX_PATH_BYTES < len(key.encode("utf-8"))
    assert unsafe_reason(key) is not None


def test_unsafe_reason_accepts_path_of_exactly_max_bytes() -> None:
    key = _path_of_bytes(MAX_PATH_BYTES)
    assert len(key.encode("utf-8")) == MAX_PATH_BYTES
    assert unsafe_reason(key) is None


# --- unsafe_reason: acceptances -----------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "model.bin",
        "models/llama/weights-00001.safetensors",
        "a b/c d.txt",
        " leading and trailing space ",
        "ünïcödé/日本語/файл.json",
        "emoji/\U0001f600.txt",
        "...",  # three dots is an ordinary name
        "..hidden",
        ".hidden/.config",
        "a..b/c.",
        ".syncdx/file",  # only the exact reserved name is reserved
        "dir/.syncd/file",  # reserved only at the top of the root
        "SYNCD/x",
        "-rf",
        "~/x",
        "$HOME/x",
        "a:b*c?d<e>|f",
    ],
)
def test_unsafe_reason_accepts_ordinary_key(key: str) -> None:
    assert unsafe_reason(key) is None


@PROPERTY
@given(ANY_KEY)
def test_unsafe_reason_accepted_key_stays_under_root_and_outside_reserved_dir(key: str) -> None:
    if unsafe_reason(key) is not None:
        return
    joined = os.path.join("/root", key)
    path = os.path.normpath(joined)
    assert path.startswith("/root/")
    assert path != f"/root/{RESERVED_DIR}"
    assert not path.startswith(f"/root/{RESERVED_DIR}/")
    # Nothing for normpath to collapse: the key is already the path it names.
    assert path == joined


@PROPERTY
@given(st.lists(st.sampled_from(["a", "b", "..", ".", "", "é"]), min_size=1, max_size=5))
def test_unsafe_reason_refuses_every_key_with_dot_dot_or_empty_segment(parts: list[str]) -> None:
    key = "/".join(parts)
    if any(p in ("", ".", "..") for p in parts):
        assert unsafe_reason(key) is not None
    else:
        assert unsafe_reason(key) is None


@PROPERTY
@given(ANY_KEY)
def test_unsafe_reason_returns_reason_or_none_for_any_text(key: str) -> None:
    reason = unsafe_reason(key)
    assert reason is None or (isinstance(reason, str) and reason)


@pytest.mark.parametrize(
    ("char", "fragment"),
    [
        ("\x80", "control character (U+0080)"),
        ("\x85", "control character (U+0085)"),  # NEL: a line break to many viewers
        ("\x9b", "control character (U+009B)"),  # CSI: starts a terminal escape sequence
        ("\u202e", "bidirectional formatting character (U+202E)"),  # "evil\u202eexe.txt"
        ("\u202a", "bidirectional formatting character (U+202A)"),
        ("\u2066", "bidirectional formatting character (U+2066)"),
        ("\u2069", "bidirectional formatting character (U+2069)"),
        ("\u200f", "bidirectional formatting character (U+200F)"),
        ("\u061c", "bidirectional formatting character (U+061C)"),
        ("\u2028", "line or paragraph separator (U+2028)"),
        ("\u2029", "line or paragraph separator (U+2029)"),
    ],
)
def test_unsafe_reason_refuses_c1_bidi_and_separator_characters_naming_the_code_point(
    char: str, fragment: str
) -> None:
    for key in (f"evil{char}txt.exe", f"dir/{char}", f"{char}/file"):
        reason = unsafe_reason(key)
        assert reason is not None
        assert fragment in reason


def _misleading(char: str) -> bool:
    """The oracle, from the Unicode database: controls (Cc), line and paragraph separators
    (Zl, Zp), explicit bidi formatting (embeddings, overrides, isolates) and the bidi marks."""
    return (unicodedata.category(char) in ("Cc", "Zl", "Zp")
            or unicodedata.bidirectional(char) in ("LRE", "RLE", "PDF", "LRO", "RLO", "LRI",
                                                    "RLI", "FSI", "PDI")
            or char in "\u200e\u200f\u061c")


@PROPERTY
@given(st.text(st.characters(max_codepoint=0x2FFF, exclude_categories=["Cs"]), min_size=1,
               max_size=6))
def test_unsafe_reason_refuses_every_key_with_a_control_bidi_or_separator_character(
    name: str,
) -> None:
    key = f"dir/{name}x"  # a safe shape, so only the characters can refuse it
    if any(_misleading(c) for c in name):
        assert unsafe_reason(key) is not None
    elif not any(c in "/\\" for c in name) and name not in (".", ".."):
        assert unsafe_reason(key) is None


def test_unsafe_reason_accepts_joiners_used_in_emoji_and_scripts() -> None:
    assert unsafe_reason("\U0001f468\u200d\U0001f469\u200d\U0001f467.png") is None  # ZWJ
    assert unsafe_reason("\u0915\u094d\u200c\u0937.txt") is None  # ZWNJ (Devanagari)


def test_syncd_object_names_what_the_leases_keep_in_the_bucket() -> None:
    from syncd.lease.arbiter import keys_of
    from syncd.lease.s3 import COMMIT_KEY, LEASE_KEY

    volume = keys_of(uuid.uuid4().hex)
    for key in (LEASE_KEY, COMMIT_KEY, f"{RESERVED_DIR}/probe-{uuid.uuid4().hex}",
                f"{volume}/lease.json", f"{volume}/commit.json",
                f"{volume}/probe-{uuid.uuid4().hex}"):
        assert syncd_object(key), key
        assert unsafe_reason(key) is not None  # and never data


@pytest.mark.parametrize("key", [
    f"{RESERVED_DIR}/state/m.json", f"{RESERVED_DIR}/tmp/x", f"{RESERVED_DIR}/lease.json.bak",
    f"{RESERVED_DIR}/volumes/../lease.json", f"{RESERVED_DIR}/volumes/x/lease.json",
    f"{RESERVED_DIR}/probe-1", f"dir/{RESERVED_DIR}/lease.json", "lease.json", RESERVED_DIR,
])
def test_syncd_object_is_false_for_any_other_key_under_the_reserved_dir(key: str) -> None:
    """Those are someone else's: refused, logged and counted, not left out in silence."""
    assert not syncd_object(key)


# --- directory markers, prefixes, relative keys -------------------------------------------------


@pytest.mark.parametrize(("key", "marker"), [("dir/", True), ("a/b/", True), ("a", False),
                                              ("a/b", False)])
def test_is_directory_marker_true_only_for_trailing_slash(key: str, marker: bool) -> None:
    assert is_directory_marker(key) is marker


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("", ""),
        ("/", ""),
        ("//", ""),
        ("models", "models/"),
        ("models/", "models/"),
        ("/models", "models/"),
        ("/models//", "models/"),
        ("a/b", "a/b/"),
        ("a/b/", "a/b/"),
    ],
)
def test_normalize_prefix_names_same_folder_with_one_trailing_slash(
    prefix: str, expected: str
) -> None:
    assert normalize_prefix(prefix) == expected


@PROPERTY
@given(st.text(st.sampled_from(["a", "/", "é", " "]), max_size=10))
def test_normalize_prefix_is_idempotent(prefix: str) -> None:
    once = normalize_prefix(prefix)
    assert normalize_prefix(once) == once
    assert once == "" or (once.endswith("/") and not once.startswith("/"))


@pytest.mark.parametrize(
    ("object_key", "prefix", "expected"),
    [
        ("models/a.bin", "models/", "a.bin"),
        ("models/sub/a.bin", "models/", "sub/a.bin"),
        ("a.bin", "", "a.bin"),
        ("other/a.bin", "models/", "other/a.bin"),
        ("modelsx/a.bin", "models/", "modelsx/a.bin"),
    ],
)
def test_relative_key_strips_normalized_prefix(object_key: str, prefix: str, expected: str) -> None:
    assert relative_key(object_key, prefix) == expected


@PROPERTY
@given(st.text(max_size=8), st.text(max_size=12))
def test_relative_key_inverts_prefixing(prefix: str, key: str) -> None:
    norm = normalize_prefix(prefix)
    assert relative_key(norm + key, norm) == key


# --- globs --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "key", "expected"),
    [
        # no '/' in the pattern: the basename, at any depth
        ("*.json", "config.json", True),
        ("*.json", "a/config.json", True),
        ("*.json", "a/b/c/config.json", True),
        ("*.json", "config.json.bak", False),
        ("*.json", "a.json/weights.bin", False),
        ("config.json", "x/config.json", True),
        ("config.json", "x/myconfig.json", False),
        # '*' stays within a segment when the pattern has a '/'
        ("a/*.bin", "a/x.bin", True),
        ("a/*.bin", "a/b/x.bin", False),
        ("a/*.bin", "b/a/x.bin", False),
        # '**' crosses directories
        ("**/*.bin", "x.bin", True),
        ("**/*.bin", "a/b/x.bin", True),
        ("a/**/x.bin", "a/x.bin", True),
        ("a/**/x.bin", "a/b/c/x.bin", True),
        ("a/**/x.bin", "b/a/x.bin", False),
        ("dir/**", "dir/x", True),
        ("dir/**", "dir/a/b/c", True),
        ("dir/**", "dirx/a", False),
        ("dir/**", "other/dir/a", False),
        ("dir/**", "dir", False),
        # '?' is exactly one character, never '/'
        ("?.bin", "a.bin", True),
        ("?.bin", "ab.bin", False),
        ("?.bin", "é.bin", True),
        ("a?b", "a/b", False),
        ("x/a?b", "x/a/b", False),
        # classes
        ("[abc].txt", "b.txt", True),
        ("[abc].txt", "d.txt", False),
        ("[a-c].txt", "c.txt", True),
        ("[!a].txt", "b.txt", True),
        ("[!a].txt", "a.txt", False),
        ("shard-[0-9][0-9].bin", "m/shard-07.bin", True),
        ("shard-[0-9][0-9].bin", "m/shard-7.bin", False),
        # regex metacharacters are literal
        ("a+b(1).bin", "a+b(1).bin", True),
        ("a.bin", "axbin", False),
        ("$x^", "$x^", True),
        ("[abc", "[abc", True),  # an unclosed '[' is literal
        ("[]", "[]", True),
        ("[!]", "[!]", True),
        # POSIX: ']' right after '[' or '[!' is a member; '\\', '^' and '[' are members
        ("[]a].txt", "].txt", True),
        ("[]a].txt", "a.txt", True),
        ("[]a].txt", "b.txt", False),
        ("[!]a].txt", "b.txt", True),
        ("[!]a].txt", "].txt", False),
        ("[a^].txt", "^.txt", True),
        ("[a^].txt", "b.txt", False),
        ("[[a].txt", "[.txt", True),
        # unicode and spaces
        ("日本/*", "日本/ファイル", True),
        ("my file *.txt", "d/my file 1.txt", True),
    ],
)
def test_glob_match_matches_relative_key(pattern: str, key: str, expected: bool) -> None:
    assert glob_match(pattern, key) is expected


def test_glob_match_class_without_slash_matches_basename_only() -> None:
    # A negated class must not match '/': 'a[!x]b' names a basename, and the basename of
    # 'a/b' is 'b'.
    assert glob_match("a[!x]b", "a/b") is False
    assert glob_match("dir/a[!x]b", "dir/a/b") is False


@pytest.mark.parametrize("pattern", ["[]", "[!]", "x[]y"])
def test_glob_match_malformed_class_returns_bool_instead_of_raising(pattern: str) -> None:
    # Config accepts any string as a glob, so a typo in `include`/`exclude` must not crash
    # planning with re.error.
    assert glob_match(pattern, "x") in (True, False)


GLOB_CHARS = st.sampled_from(["a", "b", "*", "?", "[", "]", "!", "^", "-", ".", "\\", "é"])
SEGMENT_CHARS = st.sampled_from(["a", "b", "]", "[", "!", "^", "-", ".", "é"])


@PROPERTY
@given(st.text(GLOB_CHARS, max_size=8), st.text(st.sampled_from(["a", "b", "/", "[", "]", "."])))
def test_glob_match_returns_bool_for_any_pattern(pattern: str, key: str) -> None:
    assert glob_match(pattern, key) in (True, False)
    assert glob_match(f"d/{pattern}", key) in (True, False)


GLOB_TOKENS = st.sampled_from(
    ["a", "b", "*", "?", "[!x]", "[!]]", "[ab]", "[]a]", "[!a-b]", "[", "]", ".", "é"]
)


@PROPERTY
@given(
    st.lists(GLOB_TOKENS, min_size=1, max_size=5).map("".join).filter(lambda p: "**" not in p),
    st.lists(st.text(SEGMENT_CHARS, min_size=1, max_size=3), max_size=3),
    st.text(SEGMENT_CHARS, min_size=1, max_size=4),
)
def test_glob_match_pattern_without_slash_decides_on_the_basename_alone(
    pattern: str, dirs: list[str], name: str
) -> None:
    key = "/".join([*dirs, name])
    assert glob_match(pattern, key) is glob_match(pattern, name)


@PROPERTY
@given(st.text(st.sampled_from(["a", "b", "é", " ", "."]), min_size=1, max_size=6),
       st.lists(st.text(st.sampled_from(["a", "b", "."]), min_size=1, max_size=4), max_size=3))
def test_glob_match_literal_basename_pattern_matches_at_any_depth(
    name: str, dirs: list[str]
) -> None:
    key = "/".join([*dirs, name])
    assert glob_match(name, key)
    assert glob_match(f"**/{name}", key)
    assert glob_match("**", key)


@pytest.mark.parametrize(
    ("key", "include", "exclude", "expected"),
    [
        ("a.bin", (), (), True),
        ("a.bin", ("*.bin",), (), True),
        ("a.txt", ("*.bin",), (), False),
        ("a.txt", ("*.bin", "*.txt"), (), True),
        ("a.bin", (), ("*.bin",), False),
        ("a.bin", ("*.bin",), ("*.bin",), False),  # exclude wins
        ("tmp/a.bin", ("*.bin",), ("tmp/**",), False),
        ("keep/a.bin", ("*.bin",), ("tmp/**",), True),
        ("a/b/c.json", ("a/**",), ("*.bin",), True),
        ("b/c.json", ("a/**",), (), False),
    ],
)
def test_selected_includes_unless_excluded(
    key: str, include: tuple[str, ...], exclude: tuple[str, ...], expected: bool
) -> None:
    assert selected(key, include, exclude) is expected


@PROPERTY
@given(st.text(st.sampled_from(["a", "b", "/", ".", "é"]), min_size=1, max_size=10))
def test_selected_everything_without_globs_and_nothing_excluded_by_double_star(key: str) -> None:
    assert selected(key, (), ())
    assert not selected(key, (), ("**",))


def test_glob_match_treats_reversed_range_as_literal_text():
    assert glob_match("[z-a].txt", "[z-a].txt") is True
    assert glob_match("[z-a].txt", "b.txt") is False


@pytest.mark.parametrize(("pattern", "key", "matches"), [
    ("[&&]", "&", True), ("[~~a]", "a", True), ("[||]", "|", True),
    ("[a--b]", "[a--b]", True), ("[a--b]", "a", False), ("[--]", "-", True)])
def test_glob_classes_with_doubled_set_operators_are_members_without_a_warning(
        pattern: str, key: str, matches: bool) -> None:
    """re reads '&&', '~~', '||' and '--' in a class as set operators to come (a
    FutureWarning now); in a glob they are plain members, and '[a--b]' an invalid range."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert glob_match(pattern, key) is matches
