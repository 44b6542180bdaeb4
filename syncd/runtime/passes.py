"""What one pass of one mirror works with, shared by the flat pass (mirror.py) and the
artifact passes (artifact_pull.py, artifact_push.py) without importing each other."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from syncd import artifacts, settle, status
from syncd.checkpoint import Checkpoint
from syncd.config import Config, MirrorConfig
from syncd.lease.journal import Journal
from syncd.listing import Record
from syncd.plan import Plan, Policy, Reason
from syncd.stores.base import Fence, Store
from syncd.stores.s3 import S3Store
from syncd.stores.volume import VolumeStore
from syncd.transfer import NO_METER, Log, Meter, Stats, Transfer

FAILING = "(pass failing)"  # the pending entry that ages while whole passes fail


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


@dataclass(slots=True)
class Sightings:
    """Pull: since when (this daemon's monotonic clock) each artifact's listing has looked as
    it does now (its keys, sizes and ETags, as `artifacts.listing_version` names them). A
    plain uploader's half-written version is a listing that keeps changing; one that stayed
    put for the mirror's settle period is taken as whole."""

    since: dict[str, tuple[str, float]] = field(default_factory=dict)

    def stable_s(self, listed: Mapping[str, str], now: float) -> dict[str, float]:
        """How long each artifact of this pass's listing (name -> listing version) has been
        unchanged; artifacts no longer listed are forgotten."""
        seen: dict[str, tuple[str, float]] = {}
        for name, version in listed.items():
            before = self.since.get(name)
            seen[name] = before if before is not None and before[0] == version else (version,
                                                                                     now)
        self.since = seen
        return {name: now - since for name, (_, since) in seen.items()}


@dataclass(slots=True)
class Memory:
    """What a daemon remembers about one mirror between passes."""

    quiet: settle.Quiet | None = None  # push: observed stability of the volume's files
    sightings: Sightings | None = None  # pull: of each artifact's listing (None: one-shot)
    manifests: dict[str, tuple[str, artifacts.Manifest]] = field(default_factory=dict)
    due: float | None = None  # when the next waiting file or artifact settles (monotonic)
    cleaned: float | None = None  # push: when abandoned uploads were last looked for
    pending: dict[str, float] = field(default_factory=dict)  # unsynced -> first seen (mono)
    artifacts: dict[str, int] = field(default_factory=dict)  # pull: artifacts by state
    refused: int = 0  # keys the last pass refused
    deletes_held: int = 0  # deletes the guard held back in the last pass
    swept: int | None = None  # the lease generation whose first pass removed leftovers

    def lag_s(self, now: float) -> float:
        return now - min(self.pending.values()) if self.pending else 0.0

    def count_pending(self) -> int:
        return len(self.pending) - (FAILING in self.pending)

    def failing(self, now: float) -> None:
        """A whole pass failed: what it would have synced is unknown, and ages from now."""
        self.pending.setdefault(FAILING, now)


@dataclass(slots=True)
class Pass:
    """Everything one cycle of one mirror works with."""

    config: Config
    mirror: MirrorConfig
    sides: Sides
    fence: Fence
    journal: Journal
    log: Log
    record: Record
    status: status.MirrorStatus
    memory: Memory
    on_bytes: Callable[[int], None] | None
    stopping: Callable[[], bool]
    meter: Meter = NO_METER
    listed: set[str] = field(default_factory=set)  # keys whose record entries stay
    checkpoint: Checkpoint | None = None  # saves `record` while the pass publishes

    def transfer(self, src: Store, dst: Store) -> Transfer:
        return Transfer(src, dst, self.record, self.fence,
                        concurrency=self.config.transfer.concurrency, log=self.log,
                        on_bytes=self.on_bytes, journal=self.journal, stopping=self.stopping,
                        meter=self.meter, checkpoint=self.checkpoint)

    async def carry_out(self, src: Store, dst: Store, plan: Plan) -> Stats:
        """Run `plan` from `src` to `dst`: first the deletes that clear a path a copy needs
        (a file replacing a directory, or the reverse), then everything else."""
        first = [a for a in plan.deletes if a.reason == Reason.PATH_REPLACED]
        if not first:
            return await self.transfer(src, dst).run(plan)
        clearing = Plan(list(first))
        stats = await self.transfer(src, dst).run(clearing)
        if stats.failed or self.stopping():
            return stats
        done = {id(a) for a in first}
        rest = Plan([a for a in plan.actions if id(a) not in done], plan.refused_deletes)
        stats.add(await self.transfer(src, dst).run(rest))
        return stats
