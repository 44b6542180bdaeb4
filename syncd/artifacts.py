"""Artifacts: directories published as one unit, and the manifests that describe them. Pure.

A model is many files (shards, config, tokenizer); a worker must see all of one version or
all of another. A mirror declares its artifacts as globs over directory paths; a key belongs
to the shallowest directory above it that matches. On push, an artifact is uploaded only when
complete, and its manifest (`<artifact>/.syncd-manifest.json`: every file with its size,
ETag and checksum) is written last; on pull, a manifest that disagrees with the listing means
the artifact is still being pushed, so the volume keeps the version it has.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from syncd.keys import glob_match, unsafe_reason
from syncd.listing import Entry, Listing

MANIFEST_NAME = ".syncd-manifest.json"
LEGACY = "legacy"  # an artifact that is a plain directory syncd has not taken over
MANIFEST_VERSION = 1


class ManifestError(ValueError):
    """A manifest object that is not one syncd wrote (or was damaged)."""


def is_manifest(key: str) -> bool:
    return key.rpartition("/")[2] == MANIFEST_NAME


def manifest_key(artifact: str) -> str:
    return f"{artifact}/{MANIFEST_NAME}"


def artifact_of(key: str, patterns: Iterable[str]) -> str | None:
    """The shallowest directory above `key` that some pattern matches, or None."""
    parts = key.split("/")[:-1]
    pats = tuple(patterns)
    for i in range(1, len(parts) + 1):
        directory = "/".join(parts[:i])
        if any(glob_match(p, directory) for p in pats):
            return directory
    return None


@dataclass(slots=True)
class Group:
    """One artifact's files (keys relative to the artifact) and its manifest entry if any."""

    name: str
    files: dict[str, Entry] = field(default_factory=dict)
    manifest: Entry | None = None


@dataclass(slots=True)
class Split:
    """A listing cut into the files outside any artifact and one group per artifact."""

    loose: Listing
    groups: dict[str, Group]


def split(listing: Listing, patterns: tuple[str, ...]) -> Split:
    loose = Listing(complete=listing.complete, refused=dict(listing.refused),
                    unreadable=dict(listing.unreadable))
    groups: dict[str, Group] = {}
    if not patterns:  # shared, not copied, unless a manifest must be left out
        manifests = [k for k in listing.entries if is_manifest(k)]
        loose.entries = listing.entries
        if manifests:
            loose.entries = dict(listing.entries)
            for k in manifests:
                del loose.entries[k]
        return Split(loose, groups)
    for key, entry in listing.entries.items():
        name = artifact_of(key, patterns) if unsafe_reason(key) is None else None
        if name is None:  # an unsafe key stays loose, where the planner refuses it
            if not is_manifest(key):
                loose.entries[key] = entry
            continue
        group = groups.setdefault(name, Group(name))
        rel = key[len(name) + 1:]
        if rel == MANIFEST_NAME:
            group.manifest = entry
        else:
            group.files[rel] = entry
    return Split(loose, groups)


def rebase(entries: Mapping[str, Entry], prefix: str) -> Listing:
    """Entries re-keyed to `prefix/key` (an artifact's files as mirror-relative keys)."""
    return Listing.of(replace(e, key=f"{prefix}/{k}") for k, e in entries.items())


def listing_version(files: Mapping[str, Entry]) -> str:
    """A version name derived from what the listing says (keys, sizes, ETags)."""
    h = hashlib.sha256()
    for key in sorted(files):
        e = files[key]
        # a time only where the ETag names no content (listing.weak_etag): the names of
        # versions with content ETags stay what they were
        when = f"\0{e.last_modified}" if e.last_modified is not None else ""
        h.update(f"{key}\0{e.size}\0{e.etag or ''}{when}\n".encode())
    return "l-" + h.hexdigest()[:20]


@dataclass(frozen=True, slots=True)
class FileRecord:
    size: int
    etag: str
    checksum: str  # "algo:value", syncd's own checksum of the bytes


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a pushed artifact holds. Its bytes depend only on the files, so an unchanged
    artifact's manifest is never rewritten, not even by a new lease holder: the writer's
    generation goes with the object (x-amz-meta-syncd-gen), as on every other object."""

    artifact: str
    files: dict[str, FileRecord]

    def to_bytes(self) -> bytes:
        body = {
            "syncd_manifest": MANIFEST_VERSION, "artifact": self.artifact,
            "files": {k: {"size": f.size, "etag": f.etag, "checksum": f.checksum}
                      for k, f in sorted(self.files.items())},
        }
        return json.dumps(body, indent=1, sort_keys=True).encode()

    @property
    def version(self) -> str:
        """Depends only on the files, so re-writing an unchanged manifest changes nothing."""
        h = hashlib.sha256()
        for key, f in sorted(self.files.items()):
            h.update(f"{key}\0{f.size}\0{f.checksum}\n".encode())
        return "m-" + h.hexdigest()[:20]

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        try:
            body = json.loads(data)
            version = body.get("syncd_manifest")
            if type(version) is not int or version != MANIFEST_VERSION:
                raise ManifestError(f"unknown manifest version {version!r}")
            files = {str(k): FileRecord(_size(v["size"]), str(v["etag"]), str(v["checksum"]))
                     for k, v in body["files"].items()}
            return cls(str(body["artifact"]), files)  # a "gen" of older writers is ignored
        except ManifestError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError,
                RecursionError) as exc:
            raise ManifestError(f"unreadable manifest: {exc}") from None


def _size(value: object) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"size {value!r} is not a byte count")
    return value


def disagreement(manifest: Manifest, files: Mapping[str, Entry]) -> str | None:
    """Why the listing does not (yet) hold exactly the files the manifest names, or None.

    Files the manifest does not name are ignored: they belong to a version being pushed."""
    for key, rec in sorted(manifest.files.items()):
        entry = files.get(key)
        if entry is None:
            return f"{key} is named by the manifest but not in the bucket"
        if entry.size != rec.size or (rec.etag and entry.etag and entry.etag != rec.etag):
            return f"{key} in the bucket differs from the manifest (a new version is being pushed?)"
    return None


def incomplete(groups: Mapping[str, Group], unsettled: set[str],
               marker: str | None) -> dict[str, str]:
    """Artifacts on the volume that must not be pushed yet, with the reason: without a marker
    file configured, an artifact is complete once all its files are settled; with one, once
    the marker is there."""
    out: dict[str, str] = {}
    for name, group in groups.items():
        if marker is not None:
            if marker not in group.files:
                out[name] = f"waiting for its marker file {marker}"
        else:
            waiting = sorted(k for k in group.files if f"{name}/{k}" in unsettled)
            if waiting:
                out[name] = f"{len(waiting)} file(s) still changing, first {waiting[0]}"
    return out


def manifest_for(name: str, group: Group,
                 published: Mapping[str, tuple[int, str, str]]) -> Manifest | None:
    """The manifest of a pushed artifact, or None while any of its files is not published.
    `published` maps each mirror key to (size, ETag, checksum) as it was published."""
    files: dict[str, FileRecord] = {}
    for rel in group.files:
        got = published.get(f"{name}/{rel}")
        if got is None:
            return None
        files[rel] = FileRecord(*got)
    return Manifest(name, files)
