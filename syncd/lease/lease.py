"""One write lease: when it may be taken, holding it, and the fence every publish checks.

The rules (docs/leases.md has the reasoning and the guarantees):
- A contender takes a lease that is absent, released, held by a process it can prove dead
  (same kernel and pid namespace, pid gone), or whose record it has watched stay unchanged
  for `max(ttl) + skew_margin` by its *own* monotonic clock, measured between reads (from
  the read that first showed the record to the start of the latest one that still does).
  Wall-clock times in records are for operators only, so clocks that disagree cannot cause
  an early takeover.
- A corrupt record is held-but-silent: only that observed-stillness rule frees it.
- A holder counts validity from the *start* of its last successful renewal; once
  `renew_deadline` has passed without one, `check()` fails and nothing more is published.
  `renew_deadline < ttl + skew_margin`, so the holder has stopped before anyone takes over.
- Losing a generation is final. The holder drops it and contends again like anyone else.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from syncd.errors import LeaseHeld, LeaseLost, SyncdError
from syncd.lease.backend import Backend
from syncd.lease.journal import NULL, Journal
from syncd.lease.record import Holder, LeaseRecord, Timing, View, holder_dead

_UNSEEN = object()


class Lease:
    def __init__(
        self, backend: Backend, timing: Timing, holder: Holder, *, detect_dead: bool = True,
        journal: Journal = NULL, log: Any = None,
        clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
    ) -> None:
        self.backend = backend
        self.timing = timing
        self.holder = holder
        self.detect_dead = detect_dead
        self.journal = journal
        self.log = log
        self._clock = clock
        self._wall = wall
        self.record: LeaseRecord | None = None
        self._held_as = ""  # the identity of the generation held
        self._token: Any = None
        self._renewed_at = 0.0
        self._lost: str | None = None
        self._dropped: int = 0  # the generation we last held and lost: ours to take again
        self._seen: Any = _UNSEEN
        self._seen_at = 0.0  # when a read first showed the current token (its end)
        self._read_at = 0.0  # when the latest read began
        self.view: View | None = None

    @property
    def target(self) -> str:
        return self.backend.target

    @property
    def identity(self) -> str:
        """What the lease is, the same on every host (a volume's root differs from mount to
        mount; its S3 lease object does not): what journals name, so audits compare one
        lease across hosts. The one it was acquired as while held (a volume's arbiter may
        be decided anew after a loss)."""
        return self._held_as or str(getattr(self.backend, "identity", self.target))

    @property
    def gen(self) -> int:
        return self.record.gen if self.record else 0

    @property
    def held(self) -> bool:
        return self.record is not None and self._lost is None

    # --- contending --------------------------------------------------------------------------

    async def observe(self) -> View:
        started = self._clock()
        view = await self.backend.read()
        if view.token != self._seen:
            self._seen, self._seen_at = view.token, self._clock()
        self._read_at = started
        self.view = view
        return view

    def takeover_reason(self, view: View) -> str | None:
        """Why this lease may be taken now, or None while someone may still be writing."""
        if not view.exists:
            return "free"
        record = view.record
        if record is not None:
            if record.released:
                return "released"
            if record.holder == self.holder and record.gen == self._dropped:
                return "our own lost generation"
            if self.detect_dead and holder_dead(record.holder, self.holder):
                return "holder process is gone"
        if self.quiet_for() >= self.timing.takeover_after(record.ttl_s if record else None):
            return "expired"
        return None

    def quiet_for(self) -> float:
        """How long the record has provably shown no change, by our clock: from the end of
        the read that first showed it to the *start* of the latest read that still did.
        Never up to "now": a standby paused after a read (SIGSTOP, a frozen VM) must not
        count its own pause as the holder's silence, since the holder may have renewed all
        along."""
        if self._seen is _UNSEEN:
            return 0.0
        return max(0.0, self._read_at - self._seen_at)

    def takeover_in(self, view: View) -> float:
        record = view.record
        return max(0.0, self.timing.takeover_after(record.ttl_s if record else None)
                   - self.quiet_for())

    async def try_acquire(self) -> str | None:
        """One attempt: the reason it was taken, or None (held elsewhere, or lost a race)."""
        assert self.record is None, "already holding"
        view = await self.observe()
        reason = self.takeover_reason(view)
        if reason is None:
            return None
        wall, started = self._wall(), self._clock()
        record = LeaseRecord(target=self.target, gen=view.next_gen, holder=self.holder,
                             ttl_s=self.timing.ttl_s, acquired_wall=wall, renewed_wall=wall)
        try:
            token = await self.backend.create(view, record)
        except BaseException:
            self._dropped = record.gen  # it may have been won after all: ours to retake
            raise
        if token is None:
            return None
        self.record, self._token, self._renewed_at, self._lost = record, token, started, None
        self._held_as = str(getattr(self.backend, "identity", self.target))
        before = view.record.holder if view.record else None
        self.journal.event("acquired", gen=record.gen, target=self.identity, reason=reason,
                           previous=before.id if before else None,
                           previous_pid=before.pid if before else None,
                           previous_nonce=before.nonce if before else None, **self._window())
        return reason

    # --- holding -----------------------------------------------------------------------------

    def _window(self) -> dict[str, float]:
        """The validity window for the journal: from the start of the latest successful
        renewal (or of the acquisition) to the last moment the fence lets a publication by."""
        return {"start": self._renewed_at,
                "valid_until": self._renewed_at + self.timing.renew_deadline_s}

    def valid_for(self) -> float:
        """Seconds this holder may still publish without another successful renewal."""
        if not self.held:
            return 0.0
        return self.timing.renew_deadline_s - (self._clock() - self._renewed_at)

    def lose(self, reason: str) -> None:
        if self.record is not None and self._lost is None:
            self._lost = reason
            self.journal.event("lost", gen=self.record.gen, target=self.identity, reason=reason)

    @property
    def lost_reason(self) -> str | None:
        return self._lost

    def drop(self) -> None:
        """Forget a lost generation, so this instance contends again."""
        if self.record is not None:
            self._dropped = self.record.gen
        self.record, self._token, self._lost, self._held_as = None, None, None, ""

    def check(self, gen: int) -> None:
        """The fence: raise LeaseLost unless generation `gen` is still ours and provably
        valid. Cheap and synchronous; called right before every publication."""
        if self.record is None or self.record.gen != gen:
            raise LeaseLost(f"lease on {self.target}: generation {gen} is no longer held")
        if self._lost is None:
            age = self._clock() - self._renewed_at
            if age >= self.timing.renew_deadline_s:
                self.lose(f"not renewed for {age:.1f}s (renew_deadline_s is "
                          f"{self.timing.renew_deadline_s:g})")
            elif self.backend.superseded(self.record):
                self.lose(f"generation {gen} is no longer ours (a newer one exists, or "
                          "another holder's record is there)")
        if self._lost is not None:
            raise LeaseLost(f"lease on {self.target} lost: {self._lost}")

    def fence(self) -> LeaseFence:
        assert self.record is not None, "not holding"
        return LeaseFence(self, self.record.gen)

    async def renew(self) -> bool:
        """One renewal. True on success; False on a transient failure inside the deadline;
        LeaseLost when the lease is gone (superseded, or the deadline passed)."""
        record = self.record
        assert record is not None, "not holding"
        self.check(record.gen)
        started = self._clock()
        new = record.renewed(self._wall())
        try:
            token = await self.backend.renew(new, self._token)
        except LeaseLost as exc:
            self.lose(str(exc))
            raise
        except SyncdError as exc:
            if self.log is not None:
                self.log.warning("lease_renew_failed", target=self.target, gen=record.gen,
                                 error=str(exc), valid_for_s=round(self.valid_for(), 1))
            self.check(record.gen)  # past the deadline: lost
            return False
        self.check(record.gen)  # the deadline passed while the write was in flight
        # the window never moves back, even if a slower, earlier renewal ever ended last
        self.record, self._token = new, token
        self._renewed_at = max(self._renewed_at, started)
        self.journal.event("renewed", gen=record.gen, target=self.identity, **self._window())
        return True

    async def commit(self, gen: int) -> None:
        """Have the store stamp a pass of generation `gen` (S3 rejects a stale one)."""
        self.check(gen)
        record = self.record
        assert record is not None
        try:
            await self.backend.commit(record)
        except LeaseLost as exc:
            self.lose(str(exc))
            raise

    async def release(self) -> None:
        """Hand the lease back at once (a successor need not wait for the TTL)."""
        record = self.record
        if record is None:
            return
        if self._lost is None:
            self._lost = "released"  # fence first: nothing publishes once successors may
            fenced = self._clock()
            try:
                await self.backend.renew(record.release(self._wall()), self._token)
                self.journal.event("released", gen=record.gen, target=self.identity,
                                   fenced_at=fenced)
            except SyncdError as exc:
                if self.log is not None:
                    self.log.warning("lease_release_failed", target=self.target,
                                     gen=record.gen, error=str(exc))
        self.record, self._token, self._lost, self._held_as = None, None, None, ""

    # --- breaking -----------------------------------------------------------------------------

    async def force_release(self) -> Broken | None:
        """`syncd lease break`: write the next generation as released, so whoever held the
        lease is fenced out and any instance may take over at once. None when there is no
        lease to break (found by a read, which writes nothing); LeaseHeld when the record
        changed while breaking it (someone acquired or renewed: look again)."""
        if not (await self.backend.read()).exists:
            return None
        await self.backend.prepare()
        view = await self.backend.read()
        wall = self._wall()
        record = LeaseRecord(target=self.target, gen=view.next_gen, holder=self.holder,
                             ttl_s=self.timing.ttl_s, acquired_wall=wall, renewed_wall=wall,
                             released=True)
        if await self.backend.create(view, record) is None:
            raise LeaseHeld(f"lease on {self.target} changed while breaking it; "
                            "look at `syncd lease status` and try again")
        return Broken(view, record)


@dataclass(frozen=True, slots=True)
class Broken:
    """A lease broken by an operator: what was found, and the released generation written."""

    found: View
    written: LeaseRecord

    @property
    def previous(self) -> str:
        """Who held the broken generation, or why its record could not be read."""
        record = self.found.record
        return record.holder.describe() if record else f"({self.found.corrupt})"


@dataclass(frozen=True, slots=True)
class LeaseFence:
    """The `Fence` of a held lease generation (see stores/base.py)."""

    lease: Lease
    generation: int

    @property
    def target(self) -> str:
        """The lease's identity, as journal lines name it."""
        return self.lease.identity

    def check(self) -> None:
        self.lease.check(self.generation)
