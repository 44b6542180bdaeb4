"""A pull pass carried out: each artifact built whole and switched, then the loose files.

`observe` reads what the plan needs (each artifact's current version, its manifest, a build
begun by an earlier pass); `pass_plan.plan_pull` decides; `execute` does what it says. For each
artifact the wanted version is named by its manifest when the bucket has one (and the bucket
agrees with it; otherwise it is still being pushed and the volume keeps what it has), else by
its listing. A version that differs from the current one is built in its own directory:
unchanged files seeded from the current version (hard-linked where the volume keeps links,
else copied and checked against the recorded checksum), the rest downloaded and verified;
only a build that holds exactly the wanted files, each verified, is switched in. Artifacts go
before loose files, so a loose file that names a version (a pointer) never goes live before
it. Every write to the volume (seeding, switching, pruning) follows a check of the fence.
An interrupted build is resumed by the next pass (same version, same directory).
"""

from __future__ import annotations

import asyncio
import time

from syncd import artifacts, status
from syncd.artifacts import LEGACY, Group, Manifest, ManifestError
from syncd.errors import IntegrityError
from syncd.listing import Listing, Recorded, fingerprint
from syncd.pass_plan import (
    ArtifactPlan,
    PassPlan,
    PulledArtifact,
    PullFacts,
    Step,
    after_artifacts,
    wanted,
)
from syncd.plan import Copy, Plan, Reason
from syncd.runtime.passes import Pass
from syncd.status import ArtifactStatus
from syncd.stores.versions import Versions
from syncd.stores.volume import VolumeStore
from syncd.transfer import Stats

MANIFEST_MAX_BYTES = 64 << 20


async def observe(run: Pass, src: Listing, dst: Listing) -> PullFacts:
    """What the plan needs to know of the volume beyond its listing, and (a daemon) how long
    each artifact's listing has stayed as it is. Reads only; a daemon notes what it saw."""
    seen: dict[str, PulledArtifact] = {}
    groups = artifacts.split(src, run.mirror.artifacts).groups
    stable = _stable(run, groups)
    for name, group in groups.items():
        versions = Versions(run.sides.volume, name)
        manifest: Manifest | str | None = None
        if group.manifest is not None:
            try:
                manifest = await _manifest(run, group)
            except ManifestError as exc:
                manifest = str(exc)
        before = run.status.artifacts.get(name)
        art = PulledArtifact(await versions.current(), manifest,
                             previous=before.wanted if before else None,
                             stable_s=stable.get(name))
        got = wanted(group, manifest)
        if not isinstance(got, str) and got[1] != art.current:
            art.built = await _built(versions, got[1])
        seen[name] = art
    return PullFacts(src, dst, run.record, seen, set(run.status.artifacts),
                     settle_s=run.mirror.quiet_s, marker=run.mirror.marker)


def _stable(run: Pass, groups: dict[str, Group]) -> dict[str, float]:
    """How long each artifact's listing has looked the same to this daemon; nothing in a
    one-shot run. The loop is woken when the first one still settling has settled."""
    sightings = run.memory.sightings
    if sightings is None:
        return {}
    now, settle_s = time.monotonic(), run.mirror.quiet_s
    stable = sightings.stable_s(
        {name: artifacts.listing_version(g.files) for name, g in groups.items()}, now)
    waiting = [settle_s - s for s in stable.values() if s < settle_s]
    run.memory.due = now + min(waiting) if waiting else None
    return stable


async def _built(versions: Versions, version: str) -> Listing | None:
    """What an earlier pass already built of `version`, or None if it began no build."""
    if not await asyncio.to_thread(versions.path(version).is_dir):
        return None
    return await versions.builder(version).list()


async def execute(run: Pass, plan: PassPlan) -> Stats:
    stats = Stats()
    for art in plan.artifacts:
        if run.stopping():
            break
        stats.add(await _step(run, art))
    unswitched = [a.name for a in plan.artifacts if a.step is Step.BUILD
                  and run.status.artifacts[a.name].state != status.READY]
    loose = plan.loose
    if unswitched:  # a loose file may point at one of them: it waits, as planned for
        loose = Plan(list(plan.loose.actions), plan.loose.refused_deletes)
        after_artifacts(loose)
        run.log.info("loose_files_wait", artifacts=unswitched)
    stats.add(await run.carry_out(run.sides.s3, run.sides.volume, loose))
    await _prune(run)
    return stats


async def _step(run: Pass, art: ArtifactPlan) -> Stats:
    name = art.name
    if art.step in (Step.REMOVE, Step.KEEP):
        await _gone(run, art)
        return Stats()
    st = run.status.artifacts.setdefault(name, ArtifactStatus(status.BUILDING))
    st.checked_wall = time.time()
    st.current = None if art.current == LEGACY else art.current
    if art.step is Step.HOLD:  # the bucket does not hold a complete version: keep ours
        st.state, st.detail, st.wanted = status.HELD, art.detail, None
        run.log.warning("artifact_held", artifact=name, reason=art.detail)
        return Stats()
    st.wanted, st.files, st.bytes = art.version, len(art.files), art.bytes
    if art.step is Step.READY:
        st.state, st.detail = status.READY, None
        return Stats()
    st.state, st.detail = status.BUILDING, art.detail
    return await _build(run, art, st)


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


async def _seed(run: Pass, versions: Versions, art: ArtifactPlan) -> None:
    """Seed the files the plan shares with the current version. A copy has a fingerprint of
    its own: recorded with the checksum it was checked against, so it counts as verified."""
    name, current, version = art.name, art.current, art.version
    assert version is not None
    expected = {}
    for seed in art.seeds:
        rec = run.record.get(seed.key)
        if rec is not None and rec.src == fingerprint(seed.src):
            expected[seed.key[len(name) + 1:]] = rec
    if not expected:
        return
    assert current is not None
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


async def _build(run: Pass, art: ArtifactPlan, st: ArtifactStatus) -> Stats:
    name, version = art.name, art.version
    assert version is not None
    versions = Versions(run.sides.volume, name)
    if art.drop is not None:
        await versions.remove(art.drop, run.fence)  # a version the bucket no longer holds
    await versions.prepare(version, run.fence)
    builder = versions.builder(version)
    todo = art.plan
    if art.seeds:
        await _seed(run, versions, art)
        have = await builder.list()
        missed = [Copy(s.key, Reason.SOURCE_CHANGED, s.src) for s in art.seeds
                  if s.key not in have.entries]  # moved since it was recorded: downloaded
        if missed:
            todo = Plan([*art.plan.actions, *missed], art.plan.refused_deletes)
    stats = await run.carry_out(run.sides.s3, builder, todo)
    await builder.flush()
    problem = await _incomplete(run, art, builder, stats)
    if problem is not None:
        st.state = status.FAILED if stats.failed else status.BUILDING
        st.detail = problem
        run.log.warning("artifact_not_published", artifact=name, version=version,
                        reason=problem)
        return stats
    with run.journal.write("switch", name, run.fence.generation):
        kept = await versions.switch(version, run.fence)
    now = time.time()
    retired = run.status.retired.setdefault(name, {})
    for old in (art.current, kept):
        if old is not None and old != LEGACY:
            retired[old] = now
    retired.pop(version, None)
    st.state, st.current, st.detail = status.READY, version, None
    run.log.info("artifact_published", artifact=name, version=version,
                 previous=art.current, files=len(art.files), bytes=st.bytes)
    return stats


async def _incomplete(run: Pass, build: ArtifactPlan, builder: VolumeStore,
                      stats: Stats) -> str | None:
    """Why the build must not be switched in, or None when it is exactly the wanted version."""
    if stats.failed:
        return f"{stats.failed} file(s) failed, first: {stats.errors[0].message}"
    if run.stopping():
        return "stopping; the build resumes on the next start"
    have = await builder.list()
    want = artifacts.rebase(build.files, build.name)
    for key, entry in want.entries.items():
        got = have.get(key)
        if got is None or got.size != entry.size:
            return f"{key} is missing from the build"
        rec = run.record.get(key)
        if rec is None or rec.src != fingerprint(entry) or rec.dst != fingerprint(got):
            return f"{key} was not verified in this build"
        if build.manifest is not None:
            named = build.manifest.files[key[len(build.name) + 1:]].checksum
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


async def _gone(run: Pass, art: ArtifactPlan) -> None:
    """An artifact the volume has and the source no longer lists: removed or kept."""
    st = run.status.artifacts.get(art.name)
    if st is None:
        return
    if art.step is Step.KEEP:
        st.state, st.detail, st.wanted = status.GONE, art.detail, None
        return
    versions = Versions(run.sides.volume, art.name)
    with run.journal.write("delete", art.name, run.fence.generation):
        await versions.unlink(run.fence)
    if st.current:
        run.status.retired.setdefault(art.name, {})[st.current] = time.time()
    del run.status.artifacts[art.name]
    run.log.info("artifact_removed", artifact=art.name, version=st.current)


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
