"""One mirror: `cycle()` = list both sides, plan, stage, verify, publish, record.

`syncd sync --once` runs one cycle per mirror; the daemon runs them in a loop and keeps a
`Memory` per mirror between them. The stores are opened and checked first, so a wrong
endpoint, credentials, bucket or volume root fails with one clear error before anything is
listed or written. Files outside any artifact are planned and copied one by one; artifacts
are published whole (`runtime/artifact_pull.py`, `runtime/artifact_push.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import replace
from pathlib import Path

from syncd import published, status
from syncd.checkpoint import Checkpoint
from syncd.config import Config, MirrorConfig
from syncd.errors import ConfigError, SyncdError
from syncd.lease.journal import NULL, Journal
from syncd.listing import Listing, Record
from syncd.ops import logging as logs
from syncd.pass_plan import PassPlan, Step, plan_pull, plan_push
from syncd.plan import Plan, Policy, Reason, Skip
from syncd.runtime import artifact_pull, artifact_push, leftovers
from syncd.runtime.passes import Memory, Pass, Sides, policy_of
from syncd.stores.base import Fence, OpenFence
from syncd.stores.resume import ResumeBook
from syncd.stores.s3 import STALE_UPLOAD_S, S3Store
from syncd.stores.versions import Versions
from syncd.stores.volume import VolumeStore
from syncd.transfer import NO_METER, Log, Meter, Stats

PATH_MAX = 4096  # Linux: bytes of a path, its NUL included
VERSION_SLOT = "m-" + "0" * 20  # as long as any version name (artifacts.Manifest.version)
CLEAN_EVERY_S = 3600.0  # how often a daemon looks for abandoned multipart uploads
HELD = frozenset({Reason.NOT_SETTLED, Reason.ARTIFACT_INCOMPLETE, Reason.AFTER_ARTIFACTS})


def note_pending(memory: Memory, plan: Plan, stats: Stats, st: status.MirrorStatus,
                 now: float) -> None:
    """What the pass left unsynced (failed, still being written, artifacts not at their
    wanted version), each with when it was first seen, for the lag metric."""
    memory.refused = len(plan.refused)
    memory.deletes_held = sum(1 for a in plan.of_type(Skip) if a.reason == Reason.DELETE_GUARD)
    keys = {a.key for a in plan.of_type(Skip) if a.reason in HELD}
    keys.update(k for e in stats.errors if isinstance(k := getattr(e, "key", None), str))
    keys.update(f"artifact:{n}" for n, a in st.artifacts.items()
                if not a.ready and a.state != status.GONE)
    memory.pending = {k: memory.pending.get(k, now) for k in keys}
    memory.artifacts = {}
    for art in st.artifacts.values():
        if art.state != status.GONE:
            memory.artifacts[art.state] = memory.artifacts.get(art.state, 0) + 1


@contextlib.asynccontextmanager
async def opened(config: Config, mirror: MirrorConfig, *, write: bool,
                 fence: Fence | None = None) -> AsyncIterator[Sides]:
    root = config.volume_root(mirror)
    if root is None:
        raise ConfigError(
            f"mirror {mirror.name!r} has no volume in datacenter "
            f"{config.active_datacenter()!r}", file=config.source, field="mirrors.volumes")
    t = config.transfer
    volume = VolumeStore(root, part_size=int(t.part_size),
                         multipart_threshold=int(t.multipart_threshold),
                         min_free_bytes=int(t.min_free_bytes), concurrency=t.concurrency,
                         direct_io=t.direct_io)
    book = ResumeBook(volume.meta_dir / "uploads") if mirror.direction == "push" else None
    async with S3Store(config.endpoint(mirror), t, mirror.bucket, mirror.prefix, resume=book,
                       endpoint=config.endpoint_name(mirror)) as s3:
        await asyncio.gather(s3.check(), volume.check(writable=write, fence=fence))
        yield Sides(s3, volume, root, mirror.direction == "pull")


async def listings(sides: Sides) -> tuple[Listing, Listing]:
    src, dst = await asyncio.gather(sides.src.list(), sides.dst.list())
    return src, dst


def policy_for(sides: Sides, mirror: MirrorConfig) -> Policy:
    """The mirror's policy plus what its destination imposes: a volume is a tree whose
    absolute paths must stay under PATH_MAX."""
    policy = policy_of(mirror)
    if not sides.pull:
        return policy
    return replace(policy, tree=True, max_key_bytes=key_budget(sides.root))


def key_budget(root: Path) -> int:
    """How many bytes a key may have so that `root/key` stays under PATH_MAX."""
    return max(0, PATH_MAX - 1 - len(os.fsencode(root)) - 1)


def _build_budgets(sides: Sides, names: Iterable[str]) -> dict[str, int | None]:
    """Inside a version directory a key sits deeper than under the root."""
    return {name: key_budget(Versions(sides.volume, name).path(VERSION_SLOT)) for name in names}


async def plan_pass(run: Pass, src: Listing, dst: Listing) -> PassPlan:
    """Observe what the plan needs, then plan: reads only, so a dry run calls it too."""
    policy = policy_for(run.sides, run.mirror)
    if run.sides.pull:
        facts = await artifact_pull.observe(run, src, dst)
        budgets = _build_budgets(run.sides, facts.artifacts)
        plan = plan_pull(facts, policy, run.mirror.artifacts, budgets)
    else:
        plan = plan_push(artifact_push.observe(run, src, dst), policy, run.mirror.artifacts)
    run.listed.update(plan.keys())
    return plan


async def plan_for(sides: Sides, mirror: MirrorConfig, config: Config) -> tuple[PassPlan, Record]:
    """The plan a pass would carry out now (dry runs): nothing is written."""
    src, dst = await listings(sides)
    run = Pass(config, mirror, sides, OpenFence(), NULL, logs.get(mirror=mirror.name),
               await published.load(sides.root, mirror.name, src.entries),
               await status.load(sides.root, mirror.name), Memory(), None, lambda: False)
    return await plan_pass(run, src, dst), run.record


def _steps(plan: PassPlan) -> dict[Step, int]:
    counts: dict[Step, int] = {}
    for art in plan.artifacts:
        counts[art.step] = counts.get(art.step, 0) + 1
    return counts


async def _abort_abandoned(s3: S3Store, log: Log) -> None:
    """Multipart uploads nobody will complete (a crash long ago) cost storage: abort them."""
    try:
        aborted = await s3.abort_stale_uploads(STALE_UPLOAD_S)
    except SyncdError as exc:
        log.warning("abandoned_uploads_not_cleaned", error=str(exc))
        return
    if aborted:
        log.info("abandoned_uploads_aborted", count=aborted)


async def cycle(
    config: Config, mirror: MirrorConfig, *, log: Log, fence: Fence | None = None,
    journal: Journal = NULL, on_plan: Callable[[Plan], None] | None = None,
    on_bytes: Callable[[int], None] | None = None, memory: Memory | None = None,
    stopping: Callable[[], bool] = lambda: False, meter: Meter = NO_METER,
    planned: Callable[[PassPlan], None] | None = None,
) -> tuple[Plan, Stats]:
    """One pass. `on_plan` sees its file actions (progress bars), `planned` the whole plan."""
    fence = fence or OpenFence()
    async with opened(config, mirror, write=True, fence=fence) as sides:
        fence.check()
        if sides.pull:
            removed = await sides.volume.clean_temporaries(fence)
            if removed:
                log.info("temporaries_removed", count=removed)
        elif memory is None or memory.cleaned is None or (
                time.monotonic() - memory.cleaned > CLEAN_EVERY_S):
            await _abort_abandoned(sides.s3, log)
            if memory is not None:
                memory.cleaned = time.monotonic()
        if memory is None or memory.swept != fence.generation:  # a new holder: leftovers?
            swept = await leftovers.sweep(sides.volume, mirror, fence)
            if swept:
                log.info("leftovers_removed", count=swept, gen=fence.generation)
            if memory is not None:
                memory.swept = fence.generation
        src, dst = await listings(sides)
        for path, why in sorted({**src.unreadable, **dst.unreadable}.items()):
            log.warning("path_unreadable", path=path, reason=why, store=sides.volume.name)
        run = Pass(config, mirror, sides, fence, journal, log,
                   await published.load(sides.root, mirror.name, src.entries),
                   await status.load(sides.root, mirror.name), memory or Memory(), on_bytes,
                   stopping, meter)
        run.checkpoint = Checkpoint(sides.root, mirror.name, run.record, fence, log=log)
        before = dict(run.record)
        status_before = status.content(run.status)
        try:
            passplan = await plan_pass(run, src, dst)
            plan = passplan.flat()
            if on_plan is not None:
                on_plan(plan)
            if planned is not None:
                planned(passplan)
            run.log.info("plan_computed", **plan.counts(), copy_bytes=plan.copy_bytes,
                         refused_deletes=plan.refused_deletes,
                         artifacts={str(k): n for k, n in _steps(passplan).items()})
            if sides.pull:
                stats = await artifact_pull.execute(run, passplan)
            else:
                stats = await artifact_push.execute(run, passplan, dst)
        except SyncdError as exc:
            run.status.error = str(exc)
            raise
        except Exception as exc:  # the loop logs it with its traceback; /readyz says what
            run.status.error = f"unexpected {type(exc).__name__}: {exc}"
            raise
        else:
            note_pending(run.memory, plan, stats, run.status, time.monotonic())
            run.status.error = stats.errors[0].message if stats.errors else None
            run.status.deletes_refused = plan.refused_deletes
            if not stats.failed:
                run.status.last_ok_wall = time.time()
        finally:
            await sides.dst.flush()  # renames durable before the record says they happened
            dropped = [k for k in run.record if k not in run.listed]
            if dropped or run.record != before:  # a no-op pass writes nothing
                kept = dict(run.record)
                for k in dropped:
                    del kept[k]
                fence.check()
                await published.save(sides.root, mirror.name, kept)
            now = time.time()
            if (status.content(run.status) != status_before
                    or now - run.status.updated_wall > status.REFRESH_S):
                run.status.updated_wall = now  # a no-op pass writes nothing most times
                with contextlib.suppress(OSError):  # not LeaseLost: a fenced pass is told
                    await status.save(sides.root, run.status, fence)
        return plan, stats
