"""Deterministic, incompressible data sets, generated once and cached on disk.

Every file's bytes come from ``random.Random(seed).randbytes`` in 8 MiB blocks (small "JSON"
files wrap random hex in a JSON object), so the same spec always yields the same bytes and
nothing compresses. A data set lives in ``<cache>/<key>/`` where the key is the set's name
plus a hash of its spec (paths, sizes, seeds): change a size or a seed and it is a new set.
``manifest.json`` (path -> size, SHA-256) is written last and marks a complete set.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
BLOCK = 8 * MiB
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1

# rel path -> (size, sha256 hex)
Manifest = dict[str, tuple[int, str]]


@dataclass(frozen=True, slots=True)
class FileSpec:
    rel: str
    size: int
    seed: str
    kind: str = "bin"  # "bin": raw PRNG bytes; "json": a JSON object holding PRNG hex


@dataclass(frozen=True, slots=True)
class Dataset:
    name: str
    files: tuple[FileSpec, ...]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def count(self) -> int:
        return len(self.files)

    @property
    def key(self) -> str:
        spec = json.dumps([[f.rel, f.size, f.seed, f.kind] for f in self.files],
                          separators=(",", ":")).encode()
        return f"{self.name}-{hashlib.sha256(spec).hexdigest()[:12]}"


@dataclass(frozen=True, slots=True)
class Sizes:
    """The knobs of one profile (full or quick), before --scale."""

    w1_bytes: int
    w2_count: int
    w2_size: int
    w3_shard: int
    w3_json: int
    w4_count: int
    w6_counts: tuple[int, int]
    w8_count: int

    def scaled(self, factor: float) -> Sizes:
        if factor == 1.0:
            return self

        def n(value: int, floor: int) -> int:
            return max(floor, round(value * factor))

        def b(value: int, floor: int) -> int:  # byte sizes stay multiples of 64 KiB
            return max(floor, round(value * factor / (64 * KiB)) * 64 * KiB)

        return Sizes(
            w1_bytes=b(self.w1_bytes, MiB), w2_count=n(self.w2_count, 10), w2_size=self.w2_size,
            w3_shard=b(self.w3_shard, MiB), w3_json=self.w3_json,
            w4_count=n(self.w4_count, 20),
            w6_counts=(n(self.w6_counts[0], 20), n(self.w6_counts[1], 40)),
            w8_count=n(self.w8_count, 20),
        )


FULL = Sizes(w1_bytes=2 * GiB, w2_count=1000, w2_size=MiB, w3_shard=512 * MiB, w3_json=20,
             w4_count=10_000, w6_counts=(10_000, 100_000), w8_count=10_000)
QUICK = Sizes(w1_bytes=64 * MiB, w2_count=100, w2_size=256 * KiB, w3_shard=16 * MiB,
              w3_json=20, w4_count=1000, w6_counts=(2000, 5000), w8_count=1000)

W3_SHARDS = 4
W5_CHANGED_SHARD = 1  # index of the shard W5 replaces (model-00002-of-00004)


def shard_name(index: int) -> str:
    return f"model/model-{index + 1:05d}-of-{W3_SHARDS:05d}.safetensors"


def _small_files(name: str, count: int, lo: int, hi: int, seed: str) -> Dataset:
    rng = random.Random(f"{seed}:sizes")
    files = tuple(
        FileSpec(f"d{i // 1000:03d}/obj-{i:06d}.bin", rng.randint(lo, hi), f"{seed}:{i}")
        for i in range(count)
    )
    return Dataset(name, files)


def count_label(count: int) -> str:
    if count >= 1000 and count % 1000 == 0:
        return f"{count // 1000}k"
    return str(count)


def build(sizes: Sizes) -> dict[str, Dataset]:
    """All data sets of one profile, by role: w1 w2 w3 w4 w6a w6b w8 w5shard."""
    w3_json_rng = random.Random("w3:json-sizes")
    w3_files = [FileSpec(shard_name(i), sizes.w3_shard, f"w3:shard:{i}")
                for i in range(W3_SHARDS)]
    w3_files += [
        FileSpec(f"model/config-{j:02d}.json", w3_json_rng.randint(KiB, 20 * KiB),
                 f"w3:json:{j}", "json")
        for j in range(sizes.w3_json)
    ]
    a, b = sizes.w6_counts
    return {
        "w1": Dataset("w1", (FileSpec("big/blob-000.bin", sizes.w1_bytes, "w1:0"),)),
        "w2": Dataset("w2", tuple(
            FileSpec(f"part-{i // 100:02d}/file-{i:04d}.bin", sizes.w2_size, f"w2:{i}")
            for i in range(sizes.w2_count))),
        "w3": Dataset("w3", tuple(w3_files)),
        "w4": _small_files("w4", sizes.w4_count, KiB, 4 * KiB, "w4"),
        "w6a": _small_files(f"w6-{count_label(a)}", a, 256, 2 * KiB, "w6"),
        "w6b": _small_files(f"w6-{count_label(b)}", b, 256, 2 * KiB, "w6"),
        # W8: what a small-object push looks like (thumbnails, shards of a dataset, logs)
        "w8": _small_files("w8", sizes.w8_count, 4 * KiB, 64 * KiB, "w8"),
        "w5shard": Dataset("w5shard", (
            FileSpec(shard_name(W5_CHANGED_SHARD), sizes.w3_shard, "w5:changed-shard"),)),
    }


# --- bytes ---------------------------------------------------------------------------------


def file_chunks(spec: FileSpec) -> Iterator[bytes]:
    """The file's bytes, in blocks of at most 8 MiB."""
    rng = random.Random(spec.seed)
    if spec.kind == "json":
        yield _json_bytes(spec, rng)
        return
    left = spec.size
    while left > 0:
        n = min(BLOCK, left)
        yield rng.randbytes(n)
        left -= n


def _json_bytes(spec: FileSpec, rng: random.Random) -> bytes:
    head = json.dumps({"file": spec.rel, "seed": spec.seed})[:-1] + ', "data": "'
    tail = '"}\n'
    fill = spec.size - len(head) - len(tail)
    if fill < 0:
        raise ValueError(f"{spec.rel}: {spec.size} bytes is too small for its JSON frame")
    data = (head + rng.randbytes(fill // 2 + 1).hex()[:fill] + tail).encode()
    assert len(data) == spec.size
    return data


def file_bytes(spec: FileSpec) -> bytes:
    return b"".join(file_chunks(spec))


# --- the on-disk cache -----------------------------------------------------------------------


def sha256_file(path: Path) -> tuple[int, str]:
    """(size, SHA-256 hex) of a file: small files in one read, big ones in 8 MiB blocks."""
    h = hashlib.sha256()
    size = 0
    with path.open("rb", buffering=0) as f:
        if os.fstat(f.fileno()).st_size <= BLOCK:
            data = f.readall()
            h.update(data)
            return len(data), h.hexdigest()
        buf = bytearray(BLOCK)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
            size += n
    return size, h.hexdigest()


def read_manifest(directory: Path) -> Manifest | None:
    try:
        data = json.loads((directory / MANIFEST).read_bytes())
        if data.get("version") != MANIFEST_VERSION:
            return None
        return {k: (int(v[0]), str(v[1])) for k, v in data["files"].items()}
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def _write_manifest(directory: Path, key: str, manifest: Mapping[str, tuple[int, str]]) -> None:
    body = {"version": MANIFEST_VERSION, "key": key,
            "files": {k: list(v) for k, v in sorted(manifest.items())}}
    tmp = directory / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(body, separators=(",", ":")))
    os.replace(tmp, directory / MANIFEST)


@dataclass(frozen=True, slots=True)
class Materialized:
    """A data set on disk: its directory (files only, plus the manifest) and its manifest."""

    dataset: Dataset
    root: Path
    manifest: Manifest

    def paths(self) -> Iterator[tuple[str, Path]]:
        for spec in self.dataset.files:
            yield spec.rel, self.root / spec.rel


def materialize(dataset: Dataset, cache: Path) -> tuple[Materialized, bool]:
    """The data set's cached copy, generating it first when missing or incomplete.

    Returns (materialized, generated_now).
    """
    root = cache / dataset.key
    manifest = read_manifest(root)
    if manifest is not None and _sizes_match(dataset, root, manifest):
        return Materialized(dataset, root, manifest), False
    tmp = cache / f".{dataset.key}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    made: Manifest = {}
    for spec in dataset.files:
        path = tmp / spec.rel
        path.parent.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        with path.open("wb") as f:
            for block in file_chunks(spec):
                h.update(block)
                f.write(block)
        made[spec.rel] = (spec.size, h.hexdigest())
    _write_manifest(tmp, dataset.key, made)
    os.replace(tmp, root)
    return Materialized(dataset, root, made), True


def _sizes_match(dataset: Dataset, root: Path, manifest: Manifest) -> bool:
    if set(manifest) != {f.rel for f in dataset.files}:
        return False
    for spec in dataset.files:
        try:
            if (root / spec.rel).stat().st_size != spec.size:
                return False
        except OSError:
            return False
    return True


def link_tree(src: Materialized, dest: Path, *, skip: frozenset[str] = frozenset()) -> None:
    """Recreate the data set's files under ``dest`` as hard links (copies across devices).

    Files must never be modified in place through ``dest``: a writer must replace them.
    """
    made_dirs: set[Path] = set()
    for rel, path in src.paths():
        if rel in skip:
            continue
        target = dest / rel
        if target.parent not in made_dirs:
            target.parent.mkdir(parents=True, exist_ok=True)
            made_dirs.add(target.parent)
        try:
            os.link(path, target)
        except OSError:
            shutil.copyfile(path, target)
