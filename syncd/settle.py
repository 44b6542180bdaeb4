"""Which files on the volume have stopped changing, so a half-written checkpoint is not pushed.

The daemon judges by what it observed: a file is settled once its size, mtime and inode have
stayed the same for the quiet period of *its own* monotonic clock, so another host's clock
(network filesystems keep the writer's mtimes) cannot make a file look old. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from syncd.listing import Listing

Signature = tuple[int, int | None, int | None]


@dataclass(slots=True)
class Quiet:
    """Observed stability across passes of one daemon."""

    quiet_s: float
    _seen: dict[str, tuple[Signature, float]] = field(default_factory=dict)

    def unsettled(self, listing: Listing, now: float) -> tuple[set[str], float | None]:
        """Keys not yet settled, and the monotonic time the first of them will be."""
        seen: dict[str, tuple[Signature, float]] = {}
        waiting: set[str] = set()
        due: float | None = None
        for key, entry in listing.entries.items():
            sig = entry.stat_signature()
            before = self._seen.get(key)
            since = before[1] if before is not None and before[0] == sig else now
            seen[key] = (sig, since)
            if now - since < self.quiet_s:
                waiting.add(key)
                ready_at = since + self.quiet_s
                due = ready_at if due is None else min(due, ready_at)
        self._seen = seen
        return waiting, due

