"""Correctness: is what a tool produced complete and byte-identical to the source?

A pull is checked by walking the destination directory (syncd's top-level ``.syncd/`` is its
own state, not data) and a push by listing the bucket prefix; either way every expected file
must be there with the right size and SHA-256, and nothing else may be. A benchmark that
moves the wrong bytes fast is a failure, so any problem fails the run.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.server import iter_objects
from bench.workloads import BLOCK, sha256_file

MAX_PROBLEMS = 20
BIG_FILE = 4 << 20
IGNORED_TOP = frozenset({".syncd"})


@dataclass(slots=True)
class Check:
    ok: bool = True
    level: str = "bytes"  # "bytes": sizes and SHA-256; "sizes": sizes only
    files: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0

    def problem(self, text: str) -> None:
        self.ok = False
        self.problem_count += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "level": self.level, "files": self.files, "bytes": self.bytes,
                "problems": self.problems, "problem_count": self.problem_count}


def _compare(found: Mapping[str, int], expected: Mapping[str, tuple[int, str]],
             digest: Callable[[str], str], check: Check, threads: int) -> Check:
    for rel in sorted(expected.keys() - found.keys()):
        check.problem(f"missing: {rel}")
    for rel in sorted(found.keys() - expected.keys()):
        check.problem(f"unexpected: {rel}")
    same_size = []
    for rel in sorted(found.keys() & expected.keys()):
        if found[rel] != expected[rel][0]:
            check.problem(f"size differs: {rel}: {found[rel]} bytes, expected "
                          f"{expected[rel][0]}")
        else:
            same_size.append(rel)
    if check.level == "bytes":
        # Big files in parallel (hashlib and I/O release the GIL); small ones inline, where a
        # thread hop would cost more than the hash.
        big = [rel for rel in same_size if found[rel] >= BIG_FILE]
        small = [rel for rel in same_size if found[rel] < BIG_FILE]
        safe = _safe(digest)
        with ThreadPoolExecutor(max_workers=threads) as pool:
            digests = dict(zip(big, pool.map(safe, big), strict=True))
            digests.update((rel, safe(rel)) for rel in small)
        for rel in same_size:
            got = digests[rel]
            if got != expected[rel][1]:
                check.problem(f"content differs: {rel}" if not got.startswith("error:")
                              else f"unreadable: {rel}: {got[6:]}")
    check.files = len(found)
    check.bytes = sum(found.values())
    return check


def _safe(digest: Callable[[str], str]) -> Callable[[str], str]:
    def run(rel: str) -> str:
        try:
            return digest(rel)
        except Exception as exc:  # reported as a problem, not a crash
            return f"error:{type(exc).__name__}: {exc}"

    return run


def check_tree(dest: Path, expected: Mapping[str, tuple[int, str]], *,
               ignored_top: Iterable[str] = IGNORED_TOP, threads: int = 4) -> Check:
    """Compare the directory ``dest`` with ``expected`` (rel path -> size, SHA-256)."""
    check = Check()
    found: dict[str, int] = {}
    if not dest.is_dir():
        check.problem(f"destination directory missing: {dest}")
        return check
    ignored = set(ignored_top)
    for dirpath, dirnames, filenames in os.walk(dest, followlinks=False):
        base = Path(dirpath)
        if base == dest:
            dirnames[:] = [d for d in dirnames if d not in ignored]
        rel_dir = base.relative_to(dest).as_posix()
        for d in dirnames:
            if (base / d).is_symlink():
                check.problem(f"symlink: {rel_dir}/{d}")
        for name in filenames:
            path = base / name
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            st = path.lstat()
            if not path.is_file() or path.is_symlink():
                check.problem(f"not a regular file: {rel}")
                continue
            found[rel] = st.st_size
    return _compare(found, expected, lambda rel: sha256_file(dest / rel)[1], check, threads)


def check_bucket(client: Any, bucket: str, prefix: str,
                 expected: Mapping[str, tuple[int, str]], *,
                 backing_file: Callable[[str], Path | None] | None = None,
                 threads: int = 8) -> Check:
    """Compare the objects under ``prefix`` with ``expected``.

    Keys and sizes come from the S3 listing. Content is hashed from the server's backing file
    when ``backing_file(key)`` names one (our own rclone server keeps each object as a file),
    else streamed with GetObject.
    """
    check = Check()
    if not prefix.endswith("/"):
        prefix += "/"
    found = {o["Key"][len(prefix):]: int(o["Size"])
             for o in iter_objects(client, bucket, prefix)}

    def digest(rel: str) -> str:
        key = prefix + rel
        local = backing_file(key) if backing_file is not None else None
        if local is not None:
            return sha256_file(local)[1]
        h = hashlib.sha256()
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
        try:
            for block in body.iter_chunks(BLOCK):
                h.update(block)
        finally:
            body.close()
        return h.hexdigest()

    return _compare(found, expected, digest, check, threads)
