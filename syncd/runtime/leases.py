"""Which lease guards which mirror, and the tasks that hold leases for a process.

Mirrors that write to the same volume root or bucket prefix share one lease. `Keeper` owns a
lease for a long-running process: it contends while another instance holds it (standby),
renews while it is ours, and announces each held generation as a `Session` whose `ended`
event fires the moment the generation is lost, so work under it can be cancelled.
`held_once` is the one-shot form for `syncd sync --once`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from syncd.backoff import next_delay
from syncd.config import DEFAULT_ENDPOINT, Config, MirrorConfig
from syncd.errors import ConfigError, LeaseHeld, LeaseLost, SyncdError
from syncd.lease.arbiter import Place, VolumeArbiter, keys_of
from syncd.lease.backend import Backend
from syncd.lease.journal import Journal
from syncd.lease.lease import Lease, LeaseFence
from syncd.lease.record import Timing, View, me
from syncd.lease.s3 import S3Lease
from syncd.stores.s3 import S3Store

Log = Any
T = TypeVar("T")
INFLIGHT_WAIT_S = 5.0  # release waits this long for a lease write under way, then cuts it


def timing_of(config: Config) -> Timing:
    c = config.lease
    return Timing(c.ttl_s, c.renew_interval_s, c.renew_deadline_s, c.skew_margin_s)


@dataclass(frozen=True, slots=True)
class Target:
    """What a lease guards. Equal targets share one lease: the same volume root, or the same
    bucket prefix at the same endpoint URL, whatever the endpoint is called. `name` is how
    operators read it, `endpoint` which table's settings reach it; neither is identity."""

    backend: str  # "volume" or "s3"
    place: str  # the volume root, or the endpoint URL ("" for AWS S3)
    bucket: str = ""  # s3: the prefix's bucket; volume: the bucket that may arbitrate it
    prefix: str = ""
    endpoint: str = field(default=DEFAULT_ENDPOINT, compare=False)
    name: str = field(default="", compare=False)
    arbiter_url: str = ""  # volume: that bucket's endpoint URL
    forced: bool = False  # volume: lease = "volume", the filesystem arbitrates whatever it is


def target_key(config: Config, mirror: MirrorConfig) -> Target:
    """What the mirror's lease guards: mirrors with equal targets share one lease."""
    if mirror.lease_backend == "volume":
        root = config.volume_root(mirror)
        if root is None:
            raise ConfigError(f"mirror {mirror.name!r} has no volume in datacenter "
                              f"{config.active_datacenter()!r}", file=config.source,
                              field="mirrors.volumes")
        endpoint, bucket = config.volume_arbiter(root)
        at = config.endpoint_named(endpoint)
        assert at is not None, "validated: every endpoint named exists"
        return Target("volume", str(root), bucket=bucket, endpoint=endpoint, name=str(root),
                      arbiter_url=at.endpoint_url or "", forced=mirror.lease == "volume")
    endpoint = config.endpoint_name(mirror)
    # `s3://bucket/prefix` on [s3], `NAME:s3://bucket/prefix` on a named endpoint: two
    # endpoints may well hold buckets of the same name.
    label = "" if endpoint == DEFAULT_ENDPOINT else f"{endpoint}:"
    return Target("s3", config.endpoint(mirror).endpoint_url or "", bucket=mirror.bucket,
                  prefix=mirror.prefix, endpoint=endpoint,
                  name=f"{label}s3://{mirror.bucket}/{mirror.prefix}")


class Leases:
    """The leases of one process, one per target, with their backends' connections."""

    def __init__(self, config: Config, log: Log) -> None:
        self.config = config
        self.log = log
        self.holder = me(config.lease.instance_id)
        self.journal = Journal(config.lease.journal, self.holder.id)
        self._stack = contextlib.AsyncExitStack()
        self._leases: dict[Target, Lease] = {}
        self._stores: dict[Target, S3Store] = {}

    async def __aenter__(self) -> Leases:
        self._stack.callback(self.journal.close)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for key in list(self._stores):
            await self.forget(key)
        await self._stack.aclose()

    async def backend(self, key: Target) -> Backend:
        if key.backend == "volume":
            async def in_s3(volume_id: str) -> Backend:
                store = await self._store(key, "")
                return S3Lease(store, store.where, key.name, keys=keys_of(volume_id))
            return VolumeArbiter(Path(key.place), Place(key.arbiter_url, key.bucket), in_s3,
                                 timing_of(self.config), forced=key.forced,
                                 force_ok=self.config.lease.force_volume)
        store = await self._store(key, key.prefix)
        return S3Lease(store, store.where, key.name)

    async def _store(self, key: Target, prefix: str) -> S3Store:
        if key in self._stores:  # a volume's arbiter is probed before its id is recorded
            return self._stores[key]
        endpoint = self.config.endpoint_named(key.endpoint)
        assert endpoint is not None, "a target comes from a validated config"
        store = S3Store(endpoint, self.config.transfer, key.bucket, prefix,
                        endpoint=key.endpoint)
        await store.__aenter__()
        self._stores[key] = store
        return store

    async def forget(self, key: Target) -> None:
        """A released target's lease goes with its connection: a reload that changed the
        endpoint's URL or credentials must not arbitrate through the old one."""
        self._leases.pop(key, None)
        store = self._stores.pop(key, None)
        if store is not None:
            await store.close()

    async def lease(self, mirror: MirrorConfig) -> Lease:
        """The mirror's lease, created on first use (not yet prepared)."""
        key = target_key(self.config, mirror)
        if key not in self._leases:
            sharing = ",".join(m.name for m in self.config.mirrors
                               if self.config.volume_root(m) is not None
                               and target_key(self.config, m) == key)
            self._leases[key] = Lease(
                await self.backend(key), timing_of(self.config), self.holder,
                detect_dead=self.config.lease.detect_dead_holders, journal=self.journal,
                log=self.log.bind(target=key.name, mirror=sharing))
        return self._leases[key]


def describe_holder(lease: Lease, view: View) -> str:
    """One line on who holds a lease we could not take."""
    if view.record is None:
        what = f"its record is unreadable ({view.corrupt}); treated as held"
    else:
        r = view.record
        what = f"held by {r.holder.describe()}, generation {r.gen}"
    return (f"lease on {lease.target} {what}; it can be taken over in "
            f"{lease.takeover_in(view):.0f}s if no renewal is seen")


async def renewing(lease: Lease, log: Log) -> None:
    """Renew every `renew_interval_s` (sooner after a failure) until lost or cancelled."""
    interval = lease.timing.renew_interval_s
    while True:
        try:
            ok = await lease.renew()
        except LeaseLost as exc:
            log.error("lease_lost", target=lease.target, error=str(exc))
            return
        await asyncio.sleep(interval if ok else interval / 4)


@contextlib.asynccontextmanager
async def held_once(lease: Lease, log: Log, *, wait_s: float = 0.0) -> AsyncIterator[LeaseFence]:
    """Hold the lease for one pass: take it (waiting up to `wait_s` for it to become free),
    renew it meanwhile, release it after. LeaseHeld when another instance keeps it."""
    await lease.backend.prepare()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while (reason := await lease.try_acquire()) is None:
        assert lease.view is not None
        if loop.time() >= deadline:
            raise LeaseHeld(describe_holder(lease, lease.view),
                            hint="see `syncd lease status`; if its holder is gone for good, "
                                 "`syncd lease break TARGET --yes`")
        await asyncio.sleep(min(lease.timing.renew_interval_s, max(deadline - loop.time(), 0.05)))
    log.info("lease_acquired", target=lease.target, gen=lease.gen, reason=reason)
    renewer = asyncio.create_task(renewing(lease, log), name=f"renew {lease.target}")
    try:
        yield lease.fence()
    finally:
        renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewer
        await lease.release()
        log.info("lease_released", target=lease.target)


@dataclass(slots=True)
class Session:
    """One held generation: its fence, and an event set the moment it ends."""

    fence: LeaseFence
    ended: asyncio.Event = field(default_factory=asyncio.Event)


class KeeperState(StrEnum):
    STARTING = "starting"  # the first attempt has no outcome yet
    UNAVAILABLE = "unavailable"  # the lease backend cannot be reached; retrying
    STANDBY = "standby"  # another instance holds it
    HELD = "held"
    RELEASED = "released"  # given up at shutdown or because a reload dropped its mirrors


class Keeper:
    """Holds one lease for a long-running process (standby until it can take it).

    `settled` is set once the first attempt has an outcome (held, standby, or the backend
    unreachable and being retried): the daemon reports READY then. `observe` hears every
    transition ("acquired", "lost", "released") for the metrics."""

    def __init__(self, lease: Lease, log: Log,
                 observe: Callable[[str, str], None] = lambda _t, _e: None) -> None:
        self.lease = lease
        self.log = log
        self.session: Session | None = None
        self.turn = asyncio.Lock()  # one pass at a time on this target
        self.settled = asyncio.Event()
        self.last_gen = 0  # the generation this instance last held
        self.state = KeeperState.STARTING
        self._observe = observe
        self._changed = asyncio.Event()
        self._inflight: asyncio.Future[Any] | None = None  # the lease write under way

    @property
    def holding(self) -> bool:
        """Held and not yet past its deadline: the only state in which this instance works."""
        return self.state == KeeperState.HELD and self.lease.held

    def _lost(self) -> None:
        if self.state == KeeperState.HELD:  # a failed acquire lost nothing it had
            self._observe(self.lease.target, "lost")
        self.state = KeeperState.STANDBY

    async def wait_session(self) -> Session:
        while self.session is None or self.session.ended.is_set():
            self._changed.clear()
            await self._changed.wait()
        return self.session

    def _announce(self, session: Session | None) -> None:
        if self.session is not None:
            self.session.ended.set()
        self.session = session
        self._changed.set()

    async def run(self) -> None:
        """Forever: prepare the backend, then contend/renew. Errors a retry cannot fix
        (unsupported server, unwritable lease) are raised; transient ones are retried."""
        lease, log = self.lease, self.log
        interval = lease.timing.renew_interval_s
        attempt = 0
        while True:
            try:
                await lease.backend.prepare()
                break
            except SyncdError as exc:
                if not exc.retryable:
                    raise
                log.warning("lease_unavailable", target=lease.target, error=str(exc))
                self.state = KeeperState.UNAVAILABLE
                self.settled.set()
                await asyncio.sleep(next_delay(attempt, base=interval, cap=60.0,
                                               rand=random.random()))
                attempt += 1
        last_holder: object = None
        while True:
            if lease.record is not None and not lease.held:
                log.error("lease_lost", target=lease.target, gen=lease.gen,
                          reason=lease.lost_reason)
                self._announce(None)
                self._lost()
                lease.drop()
            if lease.record is None:
                self.state = KeeperState.STANDBY
                try:
                    reason = await self._shielded(lease.try_acquire())
                except LeaseLost as exc:
                    log.error("lease_lost", target=lease.target, error=str(exc))
                    self._lost()
                    lease.drop()
                    reason = None
                except SyncdError as exc:
                    log.warning("lease_unavailable", target=lease.target, error=str(exc))
                    self.state = KeeperState.UNAVAILABLE
                    reason = None
                if reason is not None:
                    log.info("lease_acquired", target=lease.target, gen=lease.gen,
                             reason=reason)
                    self.state, self.last_gen = KeeperState.HELD, lease.gen
                    self._observe(lease.target, "acquired")
                    self._announce(Session(lease.fence()))
                    last_holder = None
                elif lease.view is not None and self.state == KeeperState.STANDBY:
                    holder = lease.view.record.holder if lease.view.record else lease.view.corrupt
                    if holder != last_holder:
                        log.info("lease_standby", detail=describe_holder(lease, lease.view))
                        last_holder = holder
                self.settled.set()
                await asyncio.sleep(interval * (0.75 + random.random() / 2))
                continue
            ok = False
            with contextlib.suppress(LeaseLost):
                ok = await self._shielded(lease.renew())
            if lease.held:
                await asyncio.sleep(interval if ok else interval / 4)
            else:
                await asyncio.sleep(0)

    async def _shielded(self, write: Coroutine[Any, Any, T]) -> T:
        """A lease write survives the cancellation of `run`: cut off mid-flight it may have
        landed on the server while we never learn its new version, and the release that
        follows would then be refused (or an acquisition left for the TTL to expire)."""
        task = asyncio.ensure_future(write)
        self._inflight = task
        task.add_done_callback(self._write_done)
        return await asyncio.shield(task)

    def _write_done(self, task: asyncio.Future[Any]) -> None:
        if not task.cancelled():
            task.exception()  # seen here: `run` may be gone (a LeaseLost dropped the lease)
        if self._inflight is task:
            self._inflight = None

    async def release(self) -> None:
        inflight = self._inflight
        if inflight is not None:
            try:  # its outcome lands in the lease; a write that does not end is given up
                await asyncio.wait([inflight], timeout=INFLIGHT_WAIT_S)
            finally:
                inflight.cancel()
        self._announce(None)
        if self.lease.record is not None:
            await self.lease.release()
            self.state = KeeperState.RELEASED
            self._observe(self.lease.target, "released")
            self.log.info("lease_released", target=self.lease.target)
