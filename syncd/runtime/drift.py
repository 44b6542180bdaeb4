"""`syncd check`: every difference between the bucket and what readers find on the volume,
each named as what it is.

The volume is seen as readers see it, each artifact's link resolved to its current version
(`mirror.volume_view`). A listing only stats, and a file can stat fine yet fail to open (a
hard link one FUSE host lost once another removed its other name, issue 17), so on a pull
mirror every file the plan calls unchanged is opened and its first byte read. A file whose
fingerprint moved is hashed through the store that holds it, an artifact's version directory
and never the artifact's link: the volume store follows no symlink, and reading through one
used to surface as "path conflicts" instead of drift.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import StrEnum

from syncd.config import MirrorConfig
from syncd.plan import Action, Adopt, Copy, Reason, Refuse, Skip
from syncd.runtime.mirror import View, plan_view
from syncd.runtime.passes import Sides
from syncd.transfer import same_bytes

READERS = 16  # files opened at once (a network volume answers each open in a round trip)


class Kind(StrEnum):
    MISSING = "missing"  # the source has it, the volume does not
    DIFFERS = "differs"  # both have it, with other bytes (or bytes nobody vouched for)
    UNREADABLE = "unreadable"  # listed on the volume, but it cannot be read
    EXTRA = "extra"  # the volume has it, the source does not
    REFUSED = "refused"  # a source key syncd will not write (unsafe, path conflict)


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


async def differences(sides: Sides, mirror: MirrorConfig) -> list[Difference]:
    """What `check` reports for one mirror, in key order; empty when in sync."""
    plan, _, view = await plan_view(sides, mirror)
    turns = asyncio.Semaphore(READERS)

    async def judge(action: Action) -> Difference | None:
        async with turns:
            return await _judge(sides, view, action)
    found = await asyncio.gather(*(judge(a) for a in plan.actions))
    return [d for d in found if d is not None]


async def _judge(sides: Sides, view: View, action: Action) -> Difference | None:
    if isinstance(action, Refuse):
        return Difference(Kind.REFUSED, action.key, action.detail)
    if isinstance(action, Copy):
        return Difference(Kind.MISSING if action.reason == Reason.NEW else Kind.DIFFERS,
                          action.key)
    if isinstance(action, Skip) and action.reason != Reason.UNCHANGED:
        return Difference(Kind.EXTRA, action.key)
    if not isinstance(action, Adopt | Skip):  # a Delete
        return Difference(Kind.EXTRA, action.key)
    if not sides.pull:  # the volume is the source: its own files are not drift
        if isinstance(action, Adopt) and await same_bytes(
                sides.src, action.src, sides.dst, action.dst) is None:
            return Difference(Kind.DIFFERS, action.key)
        return None
    holder = view.holder(action.key, sides.volume)
    why = await holder.unreadable(action.key)
    if why is not None:
        return Difference(Kind.UNREADABLE, action.key, why)
    if isinstance(action, Adopt) and await same_bytes(
            sides.src, action.src, holder, action.dst) is None:
        return Difference(Kind.DIFFERS, action.key)
    return None
