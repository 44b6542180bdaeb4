"""`syncd manifest write`: the manifest of an artifact someone else uploaded (issue 19).

A pull builds a version from its manifest at once, and checks every file it downloads
against the checksum the manifest names; without one it must wait for the listing to settle
(docs/manifest.md). This writes one for an artifact already in the bucket, the way syncd's
own push does: every file with its size, ETag and CRC64NVME, then the manifest last.

A file's CRC64NVME comes from its HEAD when the object vouches for one of the whole object
(syncd's own metadata, or an S3 full-object checksum); otherwise the object is read once and
hashed, and what was read is checked against any other full-object checksum it vouches for
(an S3 checksum or a single-part MD5 ETag). An object that vouches for none (a multipart
upload without checksums, a weak ETag) is hashed as read, and counted: the manifest then
vouches for those bytes. The listing is taken again after hashing: if the artifact changed
meanwhile nothing is written. The manifest is written with a conditional PUT (If-None-Match,
or If-Match on the manifest it replaces), so two writers never both win.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from syncd import artifacts
from syncd.artifacts import FileRecord, Group, Manifest
from syncd.config import Config, MirrorConfig
from syncd.errors import ConfigError, IntegrityError, SourceChanged
from syncd.listing import Algo, Checksum, Entry, fingerprint
from syncd.stores.s3 import S3Store
from syncd.verify import OWN_ALGO, Digest


@dataclass(slots=True)
class Written:
    key: str  # the manifest's object key, as s3://bucket/prefix/key
    manifest: Manifest
    hashed: int = 0  # files read and hashed (no CRC64NVME in their HEAD)
    unchecked: int = 0  # of those, files that vouched for nothing to check the read against
    unchanged: bool = False  # the bucket already held this very manifest


def mirror_for(config: Config, artifact: str, name: str | None) -> MirrorConfig:
    """The mirror whose artifacts `artifact` is one of: named, or the only one that fits."""
    if name is not None:
        mirror = config.mirror(name)
        if _artifact_of(mirror, artifact) != artifact:
            raise ConfigError(f"{artifact!r} is not an artifact of mirror {mirror.name} "
                              f"(artifacts = {list(mirror.artifacts)})", file=config.source)
        return mirror
    fits = [m for m in config.mirrors if _artifact_of(m, artifact) == artifact]
    if len(fits) != 1:
        which = ", ".join(m.name for m in fits) if fits else "none"
        raise ConfigError(f"{artifact!r} must be an artifact of exactly one mirror (matches: "
                          f"{which}); name it with --mirror", file=config.source)
    return fits[0]


def _artifact_of(mirror: MirrorConfig, artifact: str) -> str | None:
    return artifacts.artifact_of(f"{artifact.strip('/')}/x", mirror.artifacts)


async def write(config: Config, mirror: MirrorConfig, artifact: str) -> Written:
    artifact = artifact.strip("/")
    async with S3Store(config.endpoint(mirror), config.transfer, mirror.bucket, mirror.prefix,
                       endpoint=config.endpoint_name(mirror)) as store:
        await store.check()
        group = await _group(store, mirror, artifact)
        out = Written(f"{store.name.rstrip('/')}/{artifacts.manifest_key(artifact)}",
                      Manifest(artifact, {}))
        for rel, entry in sorted(group.files.items()):
            checksum = await _checksum(store, entry, out)
            out.manifest.files[rel] = FileRecord(entry.size, entry.etag or "", str(checksum))
        again = await _group(store, mirror, artifact)
        if _shape(again) != _shape(group):
            raise SourceChanged(f"{artifact} changed while its manifest was made; nothing "
                                "written, run it again once the upload is done",
                                store=store.name, key=artifact)
        await _put(store, out, group.manifest)
        return out


async def _group(store: S3Store, mirror: MirrorConfig, artifact: str) -> Group:
    group = artifacts.split(await store.list(), mirror.artifacts).groups.get(artifact)
    if group is None or not group.files:
        raise SourceChanged(f"no object under {artifact}/ to describe",
                            store=store.name, key=artifact)
    return group


def _shape(group: Group) -> dict[str, str]:
    return {k: fingerprint(e) for k, e in group.files.items()}


async def _checksum(store: S3Store, entry: Entry, out: Written) -> Checksum:
    """The file's CRC64NVME: as its HEAD vouches for it, else hashed from its bytes."""
    source = await store.open(entry)
    claim = await source.vouched()
    if type(claim) is Checksum and claim.algo is OWN_ALGO:
        return claim
    # a composite claim (a subclass) holds only per part: the read is not checked against it
    check = claim if type(claim) is Checksum else None
    algos: set[Algo] = {OWN_ALGO} | ({check.algo} if check else set())
    digest = Digest(algos)
    async for chunk in source.read():
        digest.update(chunk)
    await source.identity()  # a version that changed while read is SourceChanged
    got = digest.results()
    if digest.length != entry.size:
        raise SourceChanged(f"{entry.key}: read {digest.length} bytes, listed {entry.size}",
                            store=store.name, key=entry.key)
    if check is not None and got[check.algo] != check.value:
        raise IntegrityError(f"{entry.key}: read bytes with {check.algo} {got[check.algo]}, "
                             f"the object vouches for {check.value}; no manifest written",
                             store=store.name, key=entry.key)
    out.hashed += 1
    out.unchecked += check is None
    return Checksum(OWN_ALGO, got[OWN_ALGO])


async def _put(store: S3Store, out: Written, existing: Entry | None) -> None:
    key = artifacts.manifest_key(out.manifest.artifact)
    body = out.manifest.to_bytes()
    if existing is not None:
        got = await store.get_small(key)
        if got is not None and got[0] == body:
            out.unchanged = True
            return
    await store.put_small(key, body, if_match=existing.etag if existing else None,
                          if_none_match=existing is None)


def summary(out: Written, echo: Callable[[str], None]) -> None:
    files = len(out.manifest.files)
    what = "unchanged" if out.unchanged else "written"
    echo(f"{out.key}: {what}, {files} file(s), version {out.manifest.version}")
    if out.hashed:
        echo(f"{out.hashed} file(s) had no CRC64NVME to take from their HEAD and were read "
             "and hashed")
    if out.unchecked:
        echo(f"{out.unchecked} file(s) vouched for no whole-object checksum: the manifest "
             "vouches for the bytes read now")
