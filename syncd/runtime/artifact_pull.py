"""A pull pass: loose files one by one, then each artifact built whole and switched.

For each artifact the wanted version is named by its manifest when the bucket has one (and
the bucket agrees with it; otherwise it is still being pushed and the volume keeps what it
has), else by its listing. A version that differs from the current one is built in its own
directory: unchanged files seeded from the current version (hard-linked where the volume
keeps links, else copied and checked against the recorded checksum), the rest downloaded and
verified; only a build that holds exactly the wanted files, each verified, is switched in.
Every write to the volume (seeding, switching, pruning) follows a check of the lease's fence.
An interrupted build is resumed by the next pass (same version, same directory).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from syncd import artifacts, status
from syncd.artifacts import Group, Manifest, ManifestError
from syncd.errors import IntegrityError
from syncd.listing import Entry, Listing, Recorded, fingerprint
from syncd.plan import Plan, Policy
from syncd.runtime.passes import Pass, policy_of
from syncd.status import ArtifactStatus
from syncd.stores.versions import LEGACY, Versions
from syncd.stores.volume import VolumeStore
from syncd.transfer import Stats

MANIFEST_MAX_BYTES = 64 << 20
_BUILD_POLICY = Policy(delete=True, max_delete_count=1 << 62, max_delete_fraction=1.0)


@dataclass(slots=True)
class Build:
    group: Group
    version: str
    current: str | None
    files: dict[str, Entry]
    manifest: Manifest | None
    versions: Versions
    builder: VolumeStore
    plan: Plan
    status: ArtifactStatus


async def pull(run: Pass, src: Listing, dst: Listing,
               on_plan: Callable[[Plan], None] | None) -> tuple[Plan, Stats]:
    mirror = run.mirror
    ours, theirs = artifacts.split(src, mirror.artifacts), artifacts.split(dst, mirror.artifacts)
    loose = run.plan(ours.loose, theirs.loose, policy_of(mirror))
    builds = [b for g in sorted(ours.groups.values(), key=lambda g: g.name)
              if (b := await _intend(run, g)) is not None]
    whole = Plan(loose.actions + [a for b in builds for a in b.plan.actions],
                 loose.refused_deletes)
    if on_plan is not None:
        on_plan(whole)
    run.log.info("plan_computed", **whole.counts(), copy_bytes=whole.copy_bytes,
                 refused_deletes=whole.refused_deletes, artifacts=len(ours.groups),
                 building=[b.group.name for b in builds])
    stats = await run.transfer(run.sides.s3, run.sides.volume).run(loose)
    for build in builds:
        if run.stopping():
            break
        stats.add(await _build(run, build))
    await _gone(run, ours, src)
    await _prune(run)
    return whole, stats


async def _manifest(run: Pass, group: Group) -> Manifest:
    entry = group.manifest
    assert entry is not None
    cached = run.memory.manifests.get(entry.key)
    if cached is not None and entry.etag and cached[0] == entry.etag:
        return cached[1]
    if entry.size > MANIFEST_MAX_BYTES:
        raise ManifestError(f"{entry.key} is {entry.size} bytes; not a syncd manifest")
    got = await run.sides.s3.get_small(entry.key)
    if got is None:
        raise ManifestError(f"{entry.key} vanished")
    manifest = Manifest.from_bytes(got[0])
    if manifest.artifact != group.name:
        raise ManifestError(f"{entry.key} describes {manifest.artifact!r}, not {group.name!r}")
    run.memory.manifests[entry.key] = (entry.etag or got[1], manifest)
    return manifest


async def _intend(run: Pass, group: Group) -> Build | None:
    """The build a changed artifact needs, or None when it is current or must wait."""
    name = group.name
    st = run.status.artifacts.setdefault(name, ArtifactStatus(status.BUILDING))
    st.checked_wall = time.time()
    run.listed.update(f"{name}/{k}" for k in group.files)  # their record entries stay
    versions = Versions(run.sides.volume, name)
    current = await versions.current()
    st.current = None if current == LEGACY else current
    manifest: Manifest | None = None
    if group.manifest is not None:
        try:
            manifest = await _manifest(run, group)
        except ManifestError as exc:
            _hold(run, name, st, str(exc))
            return None
        why = artifacts.disagreement(manifest, group.files)
        if why is not None:
            _hold(run, name, st, why)
            return None
        files = {k: group.files[k] for k in manifest.files}
        version = manifest.version
    else:
        files, version = group.files, artifacts.listing_version(group.files)
    previous, st.wanted = st.wanted, version
    st.files, st.bytes = len(files), sum(e.size for e in files.values())
    if current == version:
        st.state, st.detail = status.READY, None
        return None
    if previous and previous not in (version, current):
        await versions.remove(previous, run.fence)  # a version the bucket no longer holds
    st.state, st.detail = status.BUILDING, f"building version {version}"
    await versions.prepare(version, run.fence)
    if current is not None:
        await _seed(run, versions, current, version, name, files)
    builder = versions.builder(version)
    plan = run.plan(artifacts.rebase(files, name), await builder.list(), _BUILD_POLICY)
    return Build(group, version, current, files, manifest, versions, builder, plan, st)


def _hold(run: Pass, name: str, st: ArtifactStatus, why: str) -> None:
    """The bucket does not hold a complete version: keep the current one, say why."""
    st.state, st.detail, st.wanted = status.HELD, why, None
    run.log.warning("artifact_held", artifact=name, reason=why)


async def _seed(run: Pass, versions: Versions, current: str, version: str, name: str,
                files: dict[str, Entry]) -> None:
    """Seed the files the wanted version shares with the current one (per the record). A
    copy has a fingerprint of its own: recorded with the checksum it was checked against,
    so the build's plan counts it as verified."""
    expected = {}
    for rel, entry in files.items():
        rec = run.record.get(f"{name}/{rel}")
        if rec is not None and rec.src == fingerprint(entry):
            expected[rel] = rec
    if not expected:
        return
    content = run.sides.volume.root / name if current == LEGACY else versions.content(current)
    seeded = await versions.seed(content, version, expected, run.fence, run.on_bytes)
    for rel, copy in seeded.copied.items():
        rec = expected[rel]
        run.record[f"{name}/{rel}"] = Recorded(rec.src, fingerprint(copy), rec.checksum,
                                               run.fence.generation)
    if seeded.linked or seeded.copied:
        run.log.info("artifact_seeded", artifact=name, version=version, linked=seeded.linked,
                     copied=len(seeded.copied), unchanged=len(expected),
                     links=seeded.how.links, fs=seeded.how.fs.name)


async def _build(run: Pass, build: Build) -> Stats:
    name, st = build.group.name, build.status
    stats = await run.transfer(run.sides.s3, build.builder).run(build.plan)
    await build.builder.flush()
    problem = await _incomplete(run, build, stats)
    if problem is not None:
        st.state = status.FAILED if stats.failed else status.BUILDING
        st.detail = problem
        run.log.warning("artifact_not_published", artifact=name, version=build.version,
                        reason=problem)
        return stats
    with run.journal.write("switch", name, run.fence.generation):
        kept = await build.versions.switch(build.version, run.fence)
    now = time.time()
    retired = run.status.retired.setdefault(name, {})
    for old in (build.current, kept):
        if old is not None and old != LEGACY:
            retired[old] = now
    retired.pop(build.version, None)
    st.state, st.current, st.detail = status.READY, build.version, None
    run.log.info("artifact_published", artifact=name, version=build.version,
                 previous=build.current, files=len(build.files), bytes=st.bytes)
    return stats


async def _incomplete(run: Pass, build: Build, stats: Stats) -> str | None:
    """Why the build must not be switched in, or None when it is exactly the wanted version."""
    if stats.failed:
        return f"{stats.failed} file(s) failed, first: {stats.errors[0].message}"
    if run.stopping():
        return "stopping; the build resumes on the next start"
    have = await build.builder.list()
    want = artifacts.rebase(build.files, build.group.name)
    for key, entry in want.entries.items():
        got = have.get(key)
        if got is None or got.size != entry.size:
            return f"{key} is missing from the build"
        rec = run.record.get(key)
        if rec is None or rec.src != fingerprint(entry) or rec.dst != fingerprint(got):
            return f"{key} was not verified in this build"
        if build.manifest is not None:
            named = build.manifest.files[key[len(build.group.name) + 1:]].checksum
            if rec.checksum != named:
                why = f"{key}: checksum {rec.checksum} differs from the manifest's {named}"
                error = IntegrityError(why, store=run.sides.s3.name, key=key)
                stats.failed += 1
                stats.errors.append(error)  # the run names it and exits 9, as for a copy
                run.meter.failed(error)
                return why
    extra = sorted(set(have.entries) - set(want.entries))
    if extra:
        return f"{extra[0]} should not be in the build"
    return None


async def _gone(run: Pass, ours: artifacts.Split, src: Listing) -> None:
    """Artifacts the volume has and the source no longer lists."""
    for name in sorted(set(run.status.artifacts) - set(ours.groups)):
        st = run.status.artifacts[name]
        if not run.mirror.delete:
            st.state, st.detail, st.wanted = status.GONE, "absent from the source; kept " \
                "(delete is off)", None
            continue
        if not src.complete or not src.entries:
            st.state, st.detail = status.GONE, "absent from an incomplete or empty listing: kept"
            continue
        versions = Versions(run.sides.volume, name)
        with run.journal.write("delete", name, run.fence.generation):
            await versions.unlink(run.fence)
        if st.current:
            run.status.retired.setdefault(name, {})[st.current] = time.time()
        del run.status.artifacts[name]
        run.log.info("artifact_removed", artifact=name, version=st.current)


async def _prune(run: Pass) -> None:
    """Remove versions retired longer than `keep_versions_s` ago (readers that resolved them
    had that long), and unknown ones after the same delay."""
    now, grace = time.time(), run.mirror.keep_versions_s
    for name in sorted(set(run.status.artifacts) | set(run.status.retired)):
        st = run.status.artifacts.get(name)
        keep = {st.current, st.wanted} if st else set()
        retired = run.status.retired.setdefault(name, {})
        versions = Versions(run.sides.volume, name)
        on_disk = await versions.on_disk()
        for version in on_disk:
            if version in keep:
                continue
            since = retired.setdefault(version, now)
            if now - since >= grace:
                await versions.remove(version, run.fence)
                del retired[version]
                run.log.info("version_pruned", artifact=name, version=version)
        for version in [v for v in retired if v in keep or v not in on_disk]:
            del retired[version]
        if not retired:
            del run.status.retired[name]
