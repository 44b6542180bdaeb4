"""`syncd run`: the one owner of every task, signal and lease of a long-running process.

Each mirror of this datacenter gets a loop (runtime/mirror_loop.py) that waits for its lease,
passes and waits again; one mirror failing never stops the others, and no transient error or
bug in a pass ends the process. A mirror loop that ends anyway while the daemon runs on is
dead, and the daemon stops vouching for itself: /healthz says so (503) at once and the
systemd watchdog ping stops, so an orchestrator or systemd restarts the process instead of
trusting a daemon that syncs nothing.

Tasks: one `asyncio.TaskGroup` owns every task of the process (heartbeat, watchdog ping, lease
keepers, mirror loops); each child contains its own failures, so a failing mirror or keeper
never cancels its siblings before the ordered shutdown: drain the mirrors, release the leases,
then stop the rest.

Signals: SIGTERM/SIGINT stop starting transfers, give those in flight `grace_s` to finish
(an unfinished download or upload resumes on the next start; a second signal skips the
grace), release every lease and exit 0. SIGHUP reloads the config file: an invalid one is
rejected with one log line and the old one keeps running; a valid one restarts the mirror
loops, keeping the leases of unchanged targets.

Operations: the HTTP endpoint (/metrics, /healthz, /readyz) is bound before anything else,
so a taken port fails the start at once. Under systemd (Type=notify) READY=1 is sent once
every lease is held, in standby or known unreachable; STATUS= follows the mirrors; WATCHDOG=1
comes from a task on the event loop, so a blocked loop gets the process restarted, and is
withheld while a mirror loop is dead, which gets it restarted the same way (WatchdogSec).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from syncd import config as config_mod
from syncd.config import Config, MirrorConfig
from syncd.errors import LeaseError, SyncdError, first_error
from syncd.lease.arbiter import Place, VolumeRecord
from syncd.ops import logging as logs
from syncd.ops.http import Server, Verdict
from syncd.ops.metrics import LeaseState, Metrics, MirrorState, Snapshot
from syncd.ops.notify import Notifier
from syncd.runtime import readiness
from syncd.runtime.health import Health, LoopWatchdog
from syncd.runtime.leases import Keeper, Leases, Target, target_key
from syncd.runtime.mirror_loop import MirrorLoop, first
from syncd.runtime.passes import Memory

Key = Target


def select(config: Config, names: list[str] | None) -> list[MirrorConfig]:
    """The mirrors this daemon runs: those named (or all) with a volume in its datacenter."""
    chosen = [config.mirror(n) for n in names] if names else list(config.mirrors)
    dc = config.active_datacenter()
    return [m for m in chosen if dc in m.volumes]


RELEASE_FORCED_S = 3.0  # lease releases after a second stop signal


class Daemon:
    def __init__(self, config: Config, names: list[str] | None) -> None:
        self.config = config
        self.names = names
        self.log = logs.get()
        self.health = Health(config.daemon.stall_s)
        self.metrics = Metrics(config.active_datacenter())
        self.metrics.watch(self.snapshot)
        self.notify = Notifier()
        self.ready_reader = readiness.Reader()
        self.mirrors: dict[str, MirrorConfig] = {}
        self.stopping = False
        self.wake = asyncio.Event()  # set to end every wait at once (stop, reload)
        self.keepers: dict[Key, Keeper] = {}
        self.keeper_tasks: dict[Key, asyncio.Task[None]] = {}
        self.loops: dict[str, asyncio.Task[None]] = {}
        self.memories: dict[str, Memory] = {}
        self._stop = asyncio.Event()
        self._force = asyncio.Event()  # a second stop signal: skip the grace period
        self._reload = asyncio.Event()
        self._group: asyncio.TaskGroup | None = None  # the owner of every task, while it runs
        self._failed = asyncio.Event()  # a keeper met an error no retry can fix
        self._fatal: BaseException | None = None  # that error: the daemon ends with it

    def _on_stop_signal(self) -> None:
        if self._stop.is_set():
            self.log.warning("stop_forced", detail="second signal: transfers in flight are "
                                                   "cancelled now and resume on the next start")
            self._force.set()
        self._stop.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal)
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)
        http = self._http()
        if http is not None:
            await http.start()
        watchdog = LoopWatchdog(self.health, self.log)
        try:
            await self._own(http)
        finally:
            watchdog.stop()
            if http is not None:
                await http.stop()
            self.notify.close()
        self.log.info("daemon_stopped")
        return 0

    async def _own(self, http: Server | None) -> None:
        """Run the daemon inside its one task group. The body's own error is raised once
        the group has closed, as itself: a caller sees a SyncdError, not a group of one."""
        failure: Exception | None = None
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                background = [group.create_task(self._tick(), name="heartbeat")]
                if self.notify.ping_every_s is not None:
                    background.append(group.create_task(
                        self._ping(self.notify.ping_every_s), name="watchdog-ping"))
                try:
                    await self._lifetime(http)
                except Exception as exc:
                    failure = exc
                finally:
                    for task in background:  # last: the mirrors drained, the leases released
                        task.cancel()
        except BaseExceptionGroup as group_error:  # a child the group could not contain
            raise first_error(group_error) from None
        finally:
            self._group = None
        if failure is not None:
            raise failure

    async def _lifetime(self, http: Server | None) -> None:
        """Start, serve until stopped, then the ordered shutdown: drain, release."""
        async with Leases(self.config, self.log) as leases:
            self.leases = leases
            try:
                await self._start(select(self.config, self.names))
                if await self._settled():
                    self.notify.ready(self.status_line())
                self.log.info("daemon_started", mirrors=sorted(self.loops),
                              holder=leases.holder.id, pid=leases.holder.pid,
                              http=f"{http.host}:{http.port}" if http else None)
                await self._serve()
            finally:
                self.notify.stopping()
                await self._drain()
                await self._release(list(self.keepers))

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """A child of the daemon's task group: every task has a parent and a name."""
        if self._group is None:
            work.close()
            raise RuntimeError(f"task {name!r} started outside the daemon's task group")
        return self._group.create_task(work, name=name)

    def _http(self) -> Server | None:
        address = self.config.http.address()
        if address is None:
            return None
        return Server(*address, metrics=self.metrics.render, health=self.healthz,
                      ready=self.readyz)

    async def _settled(self) -> bool:
        """Until every lease is held, in standby or known unreachable: True; False when a
        keeper fails or a stop comes first (then READY=1 would be a lie)."""
        waits = [k.settled.wait() for k in self.keepers.values()]
        await first(asyncio.gather(*waits), self._failed.wait(), self._stop.wait())
        return not self._failed.is_set() and not self._stop.is_set() and all(
            k.settled.is_set() for k in self.keepers.values())

    def healthz(self) -> Verdict:
        snap = self.health.snapshot()
        return Verdict(bool(snap["ok"]), snap)

    async def readyz(self) -> Verdict:
        return await self.ready_reader.check(self.config, list(self.mirrors.values()))

    def snapshot(self) -> Snapshot:
        """The live state the metrics serve at each scrape."""
        now = time.monotonic()
        mirrors = []
        for name, m in sorted(self.mirrors.items()):
            memory = self.memories.get(name) or Memory()
            beat = self.health.mirrors.get(name)
            keeper = self.keepers.get(target_key(self.config, m))
            mirrors.append(MirrorState(
                name, m.direction, memory.count_pending(), memory.lag_s(now),
                bool(beat and beat.stalled()), dict(memory.artifacts), memory.refused,
                memory.deletes_held, active=keeper is not None and keeper.holding))
        leases = [LeaseState(k.lease.target, k.holding, k.last_gen)
                  for k in self.keepers.values()]
        return Snapshot(mirrors, leases, self.health.loop_stuck_s())

    def status_line(self) -> str:
        """One line for systemctl status: what each mirror does, and the leases."""
        parts = []
        for name in sorted(self.mirrors):
            beat = self.health.mirrors.get(name)
            state = beat.state if beat else "starting"
            if beat and beat.stalled():
                state += " STALLED"
            elif beat and beat.last_error:
                state += " failing"
            parts.append(f"{name} {state}")
        held = sum(1 for k in self.keepers.values() if k.holding)
        return f"{'; '.join(parts)} | leases held {held}/{len(self.keepers)}"

    async def _serve(self) -> None:
        """Until SIGTERM/SIGINT; reloads on SIGHUP; raises what a keeper cannot recover from."""
        while not self._stop.is_set():
            self._reload.clear()
            await first(self._stop.wait(), self._reload.wait(), self._failed.wait())
            if (exc := self._fatal) is not None:
                raise first_error(exc) if isinstance(exc, BaseExceptionGroup) else exc
            if self._reload.is_set() and not self._stop.is_set():
                await self._reload_config()

    async def _keep(self, keeper: Keeper) -> None:
        """A keeper as a child of the task group: an error it cannot recover from is handed
        to `_serve`, which ends the daemon with it after the ordered shutdown; raised into
        the group, it would cancel the mirrors mid-transfer instead of draining them."""
        try:
            await keeper.run()
        except Exception as exc:
            if self._fatal is None:
                self._fatal = exc
            self._failed.set()

    async def _start(self, mirrors: list[MirrorConfig]) -> None:
        self.mirrors = {m.name: m for m in mirrors}
        for m in mirrors:
            key = target_key(self.config, m)
            if key not in self.keepers:
                lease = await self.leases.lease(m)
                keeper = Keeper(lease, lease.log,
                                observe=self.metrics.lease_changed)
                self.metrics.lease_known(lease.target)
                self.keepers[key] = keeper
                self.keeper_tasks[key] = self._spawn(self._keep(keeper),
                                                     f"lease {keeper.lease.target}")
            memory = self.memories.setdefault(m.name, Memory())
            loop = MirrorLoop(self, self.config, m, self.keepers[key], memory)
            self.loops[m.name] = self._spawn(loop.run(), f"mirror {m.name}")

    async def _drain(self) -> None:
        """Stop the mirror loops: no new transfer starts; those in flight get `grace_s`."""
        self.stopping = True
        self.wake.set()
        tasks = list(self.loops.values())
        if tasks:
            await first(asyncio.wait(tasks), self._force.wait(),
                         within=self.config.daemon.grace_s)
            pending = [t for t in tasks if not t.done()]
            if pending:
                self.log.warning("grace_expired", mirrors=sorted(
                    n for n, t in self.loops.items() if t in pending))
            for t in pending:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self.loops.clear()

    async def _release(self, keys: list[Key]) -> None:
        """Release leases, all at once and bounded: a hung endpoint must not hold the exit
        past systemd's TimeoutStopSec (such a lease simply expires). After a second stop
        signal the bound is short: the operator wants out now."""
        keepers = []
        for key in keys:
            task = self.keeper_tasks.pop(key, None)
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            keepers.append(self.keepers.pop(key))
        if not keepers:
            return
        forced = self._force.is_set()
        bound = RELEASE_FORCED_S if forced else self.config.lease.renew_deadline_s
        releases = asyncio.gather(*(self._release_one(k, bound) for k in keepers),
                                  return_exceptions=True)
        if not forced:  # a second signal now cuts the wait short
            await first(asyncio.shield(releases), self._force.wait())
        if not releases.done():
            await first(asyncio.shield(releases), within=RELEASE_FORCED_S)
            releases.cancel()  # what is left expires with its TTL
        await asyncio.gather(releases, return_exceptions=True)
        for outcome in () if releases.cancelled() else releases.result():
            if isinstance(outcome, BaseException):  # not a SyncdError: still one line
                self.log.warning("lease_release_failed", error=repr(outcome))
        for key in keys:
            await self.leases.forget(key)

    async def _release_one(self, keeper: Keeper, bound: float) -> None:
        try:
            async with asyncio.timeout(bound):
                await keeper.release()
        except (TimeoutError, SyncdError) as exc:
            self.log.warning("lease_release_failed", target=keeper.lease.target,
                             error=str(exc) or f"no answer within {bound:g} s")

    def _kept(self, new: Config, mirrors: list[MirrorConfig]) -> set[Key]:
        """The leases a reload keeps: same target and, on S3, the same endpoint settings
        (new credentials or timeouts need a new connection, so that lease is taken anew)."""
        settings = {k: self.config.endpoint_named(k.endpoint) for k in self.keepers}
        kept = set()
        for m in mirrors:
            key = target_key(new, m)
            if key.backend == "volume":  # its settings are those of the bucket arbitrating it
                same = settings.get(key) == new.endpoint_named(key.endpoint) and \
                    new.lease.force_volume == self.config.lease.force_volume
            else:
                same = settings.get(key) == new.endpoint(m)
            if same:
                kept.add(key)
        return kept

    async def _arbiters_agree(self, new: Config, mirrors: list[MirrorConfig]) -> None:
        """A reload that would arbitrate a volume elsewhere than the volume records is
        rejected before any lease is let go: the new lease would be refused, and the
        daemon would have dropped a working one for nothing."""
        for m in mirrors:
            key = target_key(new, m)
            if key.backend != "volume" or key in self.keepers:
                continue
            volume = VolumeRecord(Path(key.place))
            recorded = await asyncio.to_thread(volume.read)
            place = Place(key.arbiter_url, key.bucket)
            if recorded is not None and recorded.kind == "s3" and recorded.place != place:
                raise LeaseError(f"the lease of volume {key.place} is kept in "
                                 f"{recorded.describe()} (recorded in {volume.path}), but "
                                 f"the new config would keep it in {place.describe()}")

    async def _reload_config(self) -> None:
        """Any failure before the switch keeps the old config running: an exit here would
        only have systemd restart into the same bad file (issue 18)."""
        try:
            new = config_mod.load(self.config.source)
            mirrors = select(new, self.names)
            if not mirrors:
                raise SyncdError(f"no mirror has a volume in datacenter "
                                 f"{new.active_datacenter()!r}")
            await self._arbiters_agree(new, mirrors)
        except Exception as exc:  # not only SyncdError: a bug must not end the daemon
            error = str(exc) if isinstance(exc, SyncdError) else \
                f"unexpected {type(exc).__name__}: {exc}"
            self.log.error("config_rejected", error=error, kept=self.config.source)
            return
        self.notify.reloading()
        if new.http != self.config.http:
            self.log.warning("http_unchanged", detail="http.listen changes on restart only")
            new = new.model_copy(update={"http": self.config.http})
        await self._drain()
        if self._stop.is_set():  # a stop during the drain: the shutdown path takes over
            return
        self.stopping = False
        self.wake = asyncio.Event()
        kept = self._kept(new, mirrors)
        await self._release([k for k in self.keepers if k not in kept])
        self.config = new
        self.leases.config = new
        self.health.stall_s = new.daemon.stall_s
        for name in [n for n in self.memories if n not in {m.name for m in mirrors}]:
            del self.memories[name]
            self.health.mirrors.pop(name, None)
            self.metrics.mirror_gone(name)
        await self._start(mirrors)
        if await self._settled():
            self.notify.ready(self.status_line())
        self.log.info("config_reloaded", mirrors=sorted(self.loops))

    async def _ping(self, every_s: float) -> None:
        """WATCHDOG=1 from the event loop itself: a loop blocked longer than WatchdogSec
        sends nothing, and systemd restarts the process. A dead mirror loop withholds the
        ping as well (issue 18): the process is restarted the same way, unless a reload
        revives the loop first, and then the pings resume."""
        withheld = False
        while True:
            dead = self.health.dead()
            if not dead:
                self.notify.watchdog()
                if withheld:
                    self.log.info("watchdog_resumed")
            elif not withheld:
                self.log.critical("watchdog_withheld", dead=dead,
                                  detail=f"a mirror loop is dead: systemd restarts syncd "
                                         f"{2 * every_s:g} s (WatchdogSec) after the last ping, "
                                         f"unless a reload revives it first")
            withheld = bool(dead)
            await asyncio.sleep(every_s)

    async def _tick(self) -> None:
        reported: set[str] = set()
        line = ""
        while True:
            if line != (line := self.status_line()):
                self.notify.status(line)
            self.health.beat()
            stalled = set(self.health.stalled())
            for name in sorted(stalled - reported):
                self.log.error("mirror_stalled", mirror=name,
                               detail=self.health.snapshot()["mirrors"])
            reported = stalled
            await asyncio.sleep(1.0)


async def run(config: Config, names: list[str] | None) -> int:
    return await Daemon(config, names).run()
