"""One mirror: `cycle()` = list both sides, plan, stage, verify, publish, record.

`syncd sync --once` runs one cycle per mirror; the daemon will run it in a loop. The stores
are opened and checked first, so a wrong endpoint, credentials, bucket or volume root fails
with one clear error before anything is listed or written.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from syncd import state
from syncd.config import Config, MirrorConfig
from syncd.errors import ConfigError
from syncd.lease.journal import NULL, Journal
from syncd.listing import Listing, Record
from syncd.plan import Plan, Policy, compute
from syncd.stores.base import Fence, OpenFence, Store
from syncd.stores.s3 import S3Store
from syncd.stores.volume import VolumeStore
from syncd.transfer import Log, Stats, Transfer


def policy_of(mirror: MirrorConfig) -> Policy:
    return Policy(
        include=mirror.include, exclude=mirror.exclude, delete=mirror.delete,
        max_delete_count=mirror.max_delete_count,
        max_delete_fraction=mirror.max_delete_fraction,
    )


@dataclass(slots=True)
class Sides:
    """The mirror's two stores, oriented by direction: data flows src -> dst."""

    s3: S3Store
    volume: VolumeStore
    root: Path
    pull: bool

    @property
    def src(self) -> Store:
        return self.s3 if self.pull else self.volume

    @property
    def dst(self) -> Store:
        return self.volume if self.pull else self.s3


@contextlib.asynccontextmanager
async def opened(config: Config, mirror: MirrorConfig, *, write: bool) -> AsyncIterator[Sides]:
    root = config.volume_root(mirror)
    if root is None:
        raise ConfigError(
            f"mirror {mirror.name!r} has no volume in datacenter "
            f"{config.active_datacenter()!r}", file=config.source, field="mirrors.volumes")
    t = config.transfer
    volume = VolumeStore(root, part_size=int(t.part_size),
                         multipart_threshold=int(t.multipart_threshold),
                         min_free_bytes=int(t.min_free_bytes), concurrency=t.concurrency)
    async with S3Store(config.s3, t, mirror.bucket, mirror.prefix) as s3:
        await asyncio.gather(s3.check(), volume.check(writable=write))
        yield Sides(s3, volume, root, mirror.direction == "pull")


async def listings(sides: Sides) -> tuple[Listing, Listing]:
    src, dst = await asyncio.gather(sides.src.list(), sides.dst.list())
    return src, dst


async def plan_for(sides: Sides, mirror: MirrorConfig) -> tuple[Plan, Record]:
    src, dst = await listings(sides)
    record = await state.load(sides.root, mirror.name)
    return compute(src, dst, record, policy_of(mirror)), record


async def cycle(
    config: Config, mirror: MirrorConfig, *, log: Log, fence: Fence | None = None,
    journal: Journal = NULL, on_plan: Callable[[Plan], None] | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> tuple[Plan, Stats]:
    fence = fence or OpenFence()
    async with opened(config, mirror, write=True) as sides:
        if sides.pull:
            fence.check()
            removed = await sides.volume.clean_temporaries()
            if removed:
                log.info("temporaries_removed", count=removed)
        plan, record = await plan_for(sides, mirror)
        if on_plan is not None:
            on_plan(plan)
        log.info("plan_computed", **plan.counts(), copy_bytes=plan.copy_bytes,
                 refused_deletes=plan.refused_deletes)
        transfer = Transfer(sides.src, sides.dst, record, fence,
                            concurrency=config.transfer.concurrency, log=log,
                            on_bytes=on_bytes, journal=journal)
        before = dict(record)
        try:
            stats = await transfer.run(plan)
        finally:
            await sides.dst.flush()  # renames durable before the record says they happened
            listed = {a.key for a in plan.actions}
            kept = {k: v for k, v in record.items() if k in listed}
            if kept != before:  # a no-op pass writes nothing
                fence.check()
                await state.save(sides.root, mirror.name, kept)
        return plan, stats
