"""A push pass: settled files go up; each complete artifact gets its manifest last.

A file still changing (not settled, see `settle.py`) is neither uploaded nor allowed to cause
a delete. An artifact is pushed only once complete (all its files settled, or its marker file
present); its manifest, naming every file with the size, ETag and checksum that was
published, is written after all of them, so a puller in another datacenter that trusts
manifests never takes a half-pushed artifact.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from syncd import artifacts, status
from syncd.artifacts import Split
from syncd.listing import Listing, fingerprint
from syncd.plan import Plan, Reason
from syncd.runtime.passes import Pass, policy_of
from syncd.status import ArtifactStatus
from syncd.transfer import Stats


def _data(listing: Listing) -> Listing:
    """A listing without manifests: those are syncd's, never data to copy or delete."""
    return Listing({k: e for k, e in listing.entries.items() if not artifacts.is_manifest(k)},
                   listing.complete, dict(listing.refused))


def _unsettled(run: Pass, src: Listing) -> set[str]:
    """A daemon waits for quiet; a one-shot run uploads what is there when it is asked to
    (a file that changes while it is read is still refused)."""
    if run.memory.quiet is None:
        return set()
    waiting, run.memory.due = run.memory.quiet.unsettled(src, time.monotonic())
    return waiting


def _held(ours: Split, theirs: Split, waiting: dict[str, str],
          unsettled: set[str]) -> dict[str, Reason]:
    held = {k: Reason.NOT_SETTLED for k in unsettled if k in ours.loose.entries}
    for split in (ours, theirs):
        for name in waiting:
            if name in split.groups:
                held.update((f"{name}/{rel}", Reason.ARTIFACT_INCOMPLETE)
                            for rel in split.groups[name].files)
    return held


async def push(run: Pass, src: Listing, dst: Listing,
               on_plan: Callable[[Plan], None] | None) -> tuple[Plan, Stats]:
    mirror = run.mirror
    theirs = artifacts.split(dst, mirror.artifacts)  # with the manifests the bucket holds
    src, dst = _data(src), _data(dst)
    unsettled = _unsettled(run, src)
    ours = artifacts.split(src, mirror.artifacts)
    waiting = artifacts.incomplete(ours.groups, unsettled, mirror.marker)
    held = _held(ours, theirs, waiting, unsettled)
    plan = run.plan(src, dst, policy_of(mirror), held.get)
    if on_plan is not None:
        on_plan(plan)
    run.log.info("plan_computed", **plan.counts(), copy_bytes=plan.copy_bytes,
                 refused_deletes=plan.refused_deletes, unsettled=len(unsettled),
                 artifacts_waiting=sorted(waiting))
    stats = await run.transfer(run.sides.volume, run.sides.s3).run(plan)
    if not run.stopping():
        await _manifests(run, ours, theirs, waiting, stats)
        await _gone(run, ours, theirs, src)
    return plan, stats


async def _manifests(run: Pass, ours: Split, theirs: Split, waiting: dict[str, str],
                     stats: Stats) -> None:
    for name, group in sorted(ours.groups.items()):
        st = run.status.artifacts.setdefault(name, ArtifactStatus(status.HELD))
        st.checked_wall = time.time()
        st.files, st.bytes = len(group.files), sum(e.size for e in group.files.values())
        if name in waiting:
            st.state, st.detail = status.HELD, waiting[name]
            continue
        published: dict[str, tuple[int, str, str]] = {}
        for rel, entry in group.files.items():
            rec = run.record.get(f"{name}/{rel}")
            if rec is not None and rec.src == fingerprint(entry) and rec.checksum:
                published[f"{name}/{rel}"] = (entry.size, rec.dst.partition(":")[2],
                                              rec.checksum)
        manifest = artifacts.manifest_for(name, group, published)
        if manifest is None:
            st.state = status.FAILED if stats.failed else status.BUILDING
            st.detail = "not every file is uploaded yet"
            continue
        st.wanted = manifest.version
        body = manifest.to_bytes()
        there = theirs.groups.get(name)
        same = (there is not None and there.manifest is not None
                and there.manifest.etag == hashlib.md5(body, usedforsecurity=False).hexdigest())
        if not same:
            key = artifacts.manifest_key(name)
            run.fence.check()
            with run.journal.write("publish", key, run.fence) as w:
                await run.sides.s3.put_small(key, body, fence=w.fence,
                                             generation=run.fence.generation)
            run.log.info("manifest_published", artifact=name, version=manifest.version,
                         files=len(manifest.files))
        st.state, st.current, st.detail = status.READY, manifest.version, None


async def _gone(run: Pass, ours: Split, theirs: Split, src: Listing) -> None:
    """Manifests of artifacts the volume no longer has: deleted with them (delete on)."""
    for name, group in sorted(theirs.groups.items()):
        if name in ours.groups or group.manifest is None:
            continue
        if not (run.mirror.delete and src.complete and src.entries):
            continue
        key = artifacts.manifest_key(name)
        with run.journal.write("delete", [key], run.fence) as w:
            await run.sides.s3.delete([key], w.fence)
        run.status.artifacts.pop(name, None)
        run.log.info("manifest_deleted", artifact=name)
