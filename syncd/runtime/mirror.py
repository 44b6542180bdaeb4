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
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from syncd import artifacts, state, status
from syncd.config import Config, MirrorConfig
from syncd.errors import ConfigError, SyncdError
from syncd.lease.journal import NULL, Journal
from syncd.listing import Listing, Record
from syncd.plan import Plan, Reason, Skip, compute
from syncd.resume import ResumeBook
from syncd.runtime import leftovers
from syncd.runtime.artifact_pull import pull
from syncd.runtime.artifact_push import push
from syncd.runtime.passes import Memory, Pass, Sides, policy_of
from syncd.stores.base import Fence, OpenFence
from syncd.stores.s3 import STALE_UPLOAD_S, S3Store
from syncd.stores.versions import LEGACY, Versions
from syncd.stores.volume import VolumeStore
from syncd.transfer import NO_METER, Log, Meter, Stats

CLEAN_EVERY_S = 3600.0  # how often a daemon looks for abandoned multipart uploads
HELD = frozenset({Reason.NOT_SETTLED, Reason.ARTIFACT_INCOMPLETE})


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


@dataclass(slots=True)
class View:
    """The volume as readers see it: each artifact link's current version listed in place,
    and the store each such artifact's files are read through (its version directory: the
    volume store never follows the link itself)."""

    listing: Listing
    holders: dict[str, VolumeStore] = field(default_factory=dict)  # artifact -> its version

    def holder(self, key: str, volume: VolumeStore) -> VolumeStore:
        """The store that reads `key` (a mirror key) as a reader would find it."""
        for name, store in self.holders.items():
            if key.startswith(f"{name}/"):
                return store
        return volume


async def volume_view(sides: Sides, mirror: MirrorConfig, listing: Listing) -> View:
    """The volume as readers see it (see `View`)."""
    if not mirror.artifacts:
        return View(listing)
    view = View(Listing(dict(listing.entries), listing.complete, dict(listing.refused)))
    for key in list(view.listing.refused):
        versions = Versions(sides.volume, key)
        current = await versions.current()
        if current is None or current == LEGACY:
            continue
        del view.listing.refused[key]
        builder = versions.builder(current)
        view.listing.entries.update((await builder.list()).entries)
        view.holders[key] = builder
    return view


async def plan_view(sides: Sides, mirror: MirrorConfig) -> tuple[Plan, Record, View]:
    """One flat plan over every file, and the volume it was planned against."""
    src, dst = await listings(sides)
    if sides.pull:
        view = await volume_view(sides, mirror, dst)
    else:
        dst.entries = {k: e for k, e in dst.entries.items() if not artifacts.is_manifest(k)}
        view = View(dst)
    record = await state.load(sides.root, mirror.name)
    return compute(src, view.listing, record, policy_of(mirror)), record, view


async def plan_for(sides: Sides, mirror: MirrorConfig) -> tuple[Plan, Record]:
    """One flat plan over every file (dry runs)."""
    plan, record, _ = await plan_view(sides, mirror)
    return plan, record


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
) -> tuple[Plan, Stats]:
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
        run = Pass(config, mirror, sides, fence, journal, log,
                   await state.load(sides.root, mirror.name, src.entries),
                   await status.load(sides.root, mirror.name), memory or Memory(), on_bytes,
                   stopping, meter)
        before = dict(run.record)
        status_before = status.content(run.status)
        try:
            if sides.pull:
                plan, stats = await pull(run, src, dst, on_plan)
            else:
                plan, stats = await push(run, src, dst, on_plan)
        except SyncdError as exc:
            run.status.error = str(exc)
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
                await state.save(sides.root, mirror.name, kept)
            now = time.time()
            if (status.content(run.status) != status_before
                    or now - run.status.updated_wall > status.REFRESH_S):
                run.status.updated_wall = now  # a no-op pass writes nothing most times
                with contextlib.suppress(OSError):  # not LeaseLost: a fenced pass is told
                    await status.save(sides.root, run.status, fence)
        return plan, stats
