"""`syncd check`: every difference between the bucket and what readers find on the volume,
each named as what it is.

It starts from the plan a pass would carry out now (`mirror.plan_for`, the same as `sync
--dry-run`): what the pass would copy is missing or differs, what it would delete (or may not)
is extra, what it refuses or holds is said with its reason. An artifact is compared as readers
see it: the wanted version's files against the version its link names now. A listing only
stats, and a file can stat fine yet fail to open (a hard link one FUSE host lost once another
removed its other name, issue 17), so on a pull mirror every file the plan calls unchanged is
opened and its first byte read. A file whose fingerprint moved is hashed through the store
that holds it, an artifact's version directory and never the artifact's link: the volume store
follows no symlink.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import StrEnum

from syncd import artifacts
from syncd.artifacts import LEGACY
from syncd.config import Config, MirrorConfig
from syncd.listing import Listing, Record
from syncd.pass_plan import BUILD_POLICY, ArtifactPlan, Step
from syncd.plan import Action, Adopt, Copy, Reason, Refuse, Skip, compute
from syncd.runtime.mirror import plan_for
from syncd.runtime.passes import Sides
from syncd.stores.base import Store
from syncd.stores.versions import Versions
from syncd.stores.volume import VolumeStore
from syncd.transfer import same_bytes

READERS = 16  # files opened at once (a network volume answers each open in a round trip)
HELD = frozenset({Reason.NOT_SETTLED, Reason.ARTIFACT_INCOMPLETE, Reason.AFTER_ARTIFACTS})


class Kind(StrEnum):
    MISSING = "missing"  # the source has it, the volume does not
    DIFFERS = "differs"  # both have it, with other bytes (or bytes nobody vouched for)
    UNREADABLE = "unreadable"  # listed on the volume, but it cannot be read
    EXTRA = "extra"  # the volume has it, the source does not
    REFUSED = "refused"  # a source key syncd will not write (unsafe, path conflict)
    HELD = "held"  # not synced on purpose yet (still changing, incomplete artifact)


@dataclass(frozen=True, slots=True)
class Difference:
    kind: Kind
    key: str
    detail: str | None = None

    def __str__(self) -> str:
        if self.kind is Kind.REFUSED:
            return f"{self.kind:<8} {self.key!r} ({self.detail})"
        line = f"{self.kind:<8} {self.key}"
        return f"{line} ({self.detail})" if self.detail else line


async def differences(sides: Sides, mirror: MirrorConfig, config: Config) -> list[Difference]:
    """What `check` reports for one mirror, in plan order; empty when in sync."""
    passplan, record = await plan_for(sides, mirror, config)
    judged: list[tuple[Action, Store]] = [(a, sides.dst) for a in passplan.loose.actions]
    found: list[Difference] = []
    if sides.pull:
        for art in passplan.artifacts:
            found.extend(await _artifact(sides, art, record, judged))
    turns = asyncio.Semaphore(READERS)

    async def judge(action: Action, holder: Store) -> Difference | None:
        async with turns:
            return await _judge(sides, holder, action)
    per_file = await asyncio.gather(*(judge(a, h) for a, h in judged))
    return [d for d in per_file if d is not None] + found


async def _artifact(sides: Sides, art: ArtifactPlan, record: Record,
                    judged: list[tuple[Action, Store]]) -> list[Difference]:
    """An artifact as readers find it: its current version against the wanted one."""
    if art.step is Step.HOLD:
        return [Difference(Kind.HELD, art.name, art.detail)]
    if art.step in (Step.REMOVE, Step.KEEP):
        return [Difference(Kind.EXTRA, art.name, art.detail)]
    holder: Store = sides.volume
    have = Listing()
    if art.current == LEGACY:
        have = Listing({k: e for k, e in (await sides.volume.list()).entries.items()
                        if k.startswith(f"{art.name}/")})
    elif art.current is not None:
        builder = Versions(sides.volume, art.name).builder(art.current)
        holder, have = builder, await builder.list()
    want = artifacts.rebase(art.files, art.name)
    judged.extend((a, holder) for a in compute(want, have, record, BUILD_POLICY).actions)
    return []


async def _judge(sides: Sides, holder: Store, action: Action) -> Difference | None:
    if isinstance(action, Refuse):
        return Difference(Kind.REFUSED, action.key, action.detail)
    if isinstance(action, Copy):
        return Difference(Kind.MISSING if action.reason == Reason.NEW else Kind.DIFFERS,
                          action.key)
    if isinstance(action, Skip) and action.reason in HELD:
        return Difference(Kind.HELD, action.key, str(action.reason))
    if isinstance(action, Skip) and action.reason == Reason.UNREADABLE:
        return Difference(Kind.UNREADABLE, action.key, "under a path the volume cannot read")
    if isinstance(action, Skip) and action.reason != Reason.UNCHANGED:
        return Difference(Kind.EXTRA, action.key)
    if not isinstance(action, Adopt | Skip):  # a Delete
        return Difference(Kind.EXTRA, action.key)
    if not sides.pull:  # the volume is the source: its own files are not drift
        if isinstance(action, Adopt) and await same_bytes(
                sides.src, action.src, sides.dst, action.dst) is None:
            return Difference(Kind.DIFFERS, action.key)
        return None
    assert isinstance(holder, VolumeStore)
    why = await holder.unreadable(action.key)
    if why is not None:
        return Difference(Kind.UNREADABLE, action.key, why)
    if isinstance(action, Adopt) and await same_bytes(
            sides.src, action.src, holder, action.dst) is None:
        return Difference(Kind.DIFFERS, action.key)
    return None
