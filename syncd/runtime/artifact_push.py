"""A push pass carried out: settled files go up; each complete artifact gets its manifest
last.

A file still changing (not settled, see `settle.py`) is neither uploaded nor allowed to cause
a delete. An artifact is pushed only once complete (all its files settled, or its marker file
present); its manifest, naming every file with the size, ETag and checksum that was
published, is written after all of them, so a puller in another datacenter that trusts
manifests never takes a half-pushed artifact. `observe` reads what the plan needs,
`pass_plan.plan_push` decides, `execute` carries it out.
"""

from __future__ import annotations

import hashlib
import time

from syncd import artifacts, status
from syncd.artifacts import Split
from syncd.listing import Listing, fingerprint
from syncd.pass_plan import ArtifactPlan, PassPlan, PushFacts, Step
from syncd.runtime.passes import Pass
from syncd.status import ArtifactStatus
from syncd.transfer import Stats


def observe(run: Pass, src: Listing, dst: Listing) -> PushFacts:
    """A daemon waits for quiet; a one-shot run uploads what is there when it is asked to
    (a file that changes while it is read is still refused)."""
    unsettled: set[str] = set()
    if run.memory.quiet is not None:
        data = Listing({k: e for k, e in src.entries.items() if not artifacts.is_manifest(k)})
        unsettled, run.memory.due = run.memory.quiet.unsettled(data, time.monotonic())
    return PushFacts(src, dst, run.record, unsettled, run.mirror.marker)


async def execute(run: Pass, plan: PassPlan, dst: Listing) -> Stats:
    stats = await run.carry_out(run.sides.volume, run.sides.s3, plan.loose)
    if run.stopping():
        return stats
    theirs = artifacts.split(dst, run.mirror.artifacts)
    for art in plan.artifacts:
        if art.step is Step.REMOVE:
            await _unpublish(run, art.name)
        elif art.step is not Step.KEEP:
            await _manifest(run, art, theirs, stats)
    return stats


async def _manifest(run: Pass, art: ArtifactPlan, theirs: Split, stats: Stats) -> None:
    name = art.name
    st = run.status.artifacts.setdefault(name, ArtifactStatus(status.HELD))
    st.checked_wall = time.time()
    st.files, st.bytes = len(art.files), art.bytes
    if art.step is Step.HOLD:
        st.state, st.detail = status.HELD, art.detail
        return
    published: dict[str, tuple[int, str, str]] = {}
    for rel, entry in art.files.items():
        rec = run.record.get(f"{name}/{rel}")
        if rec is not None and rec.src == fingerprint(entry) and rec.checksum:
            published[f"{name}/{rel}"] = (entry.size, rec.dst.partition(":")[2], rec.checksum)
    group = artifacts.Group(name, art.files)
    manifest = artifacts.manifest_for(name, group, published)
    if manifest is None:  # a planned file failed (or was not uploaded): no manifest yet
        st.state = status.FAILED if stats.failed else status.BUILDING
        st.detail = "not every file is uploaded yet"
        return
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


async def _unpublish(run: Pass, name: str) -> None:
    """The manifest of an artifact the volume no longer has goes with it (delete on)."""
    key = artifacts.manifest_key(name)
    with run.journal.write("delete", [key], run.fence) as w:
        await run.sides.s3.delete([key], w.fence)
    run.status.artifacts.pop(name, None)
    run.log.info("manifest_deleted", artifact=name)
