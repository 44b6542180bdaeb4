"""One mirror's loop in `syncd run`: wait for the lease, pass, wait for the next reason to pass.

The loop waits for its lease (standby while another instance holds it), runs a pass under the
lease's fence, and waits for the next one: the poll interval (with jitter), the moment a
waiting file settles, or a change event on a push mirror's volume (watchfiles; a full rescan
still runs every interval, because events miss writes made by other hosts of a network
filesystem). A failing pass is retried with backoff and jitter, and no transient error ends
the loop. Nor does a bug: a pass that raises anything unexpected is logged with its traceback
(once per distinct failure), counted (`syncd_pass_crashes_total`) and retried like any failed
pass. A loop that ends anyway while the daemon runs on is dead: its beat says so at once, so
/healthz turns 503 and the systemd watchdog ping stops (runtime/daemon.py), and the process
is restarted instead of trusted while it syncs nothing.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import traceback
from pathlib import Path
from typing import Any, Protocol

from syncd.backoff import next_delay
from syncd.config import Config, MirrorConfig
from syncd.errors import LeaseLost, SyncdError
from syncd.keys import RESERVED_DIR
from syncd.ops import logging as logs
from syncd.ops.metrics import Metrics
from syncd.plan import Plan
from syncd.runtime import mirror as mirror_mod
from syncd.runtime.health import Beat, Health
from syncd.runtime.leases import Keeper, Session
from syncd.runtime.passes import Memory, Sightings
from syncd.settle import Quiet
from syncd.transfer import Stats

CRASHES_REMEMBERED = 64  # distinct unexpected failures per loop whose traceback was logged


class Owner(Protocol):
    """What a loop reads of the daemon that runs it (runtime/daemon.py's `Daemon`)."""

    health: Health
    metrics: Metrics
    stopping: bool  # no new pass starts; the loop returns
    wake: asyncio.Event  # set to end every wait at once (stop, reload)


async def first(*aws: Any, within: float | None = None) -> None:
    """Wait until the first of several awaitables finishes (or the timeout); cancel the rest."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)).rstrip()


def _signature(exc: BaseException) -> str:
    """What makes two unexpected failures the same one: class, message and where it was
    raised. A repeat logs one line; its traceback was logged the first time."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
    return f"{type(exc).__qualname__}: {exc} at {where}"


def _outside_reserved(root: Path) -> Any:
    def keep(_change: object, path: str) -> bool:
        rel = os.path.relpath(path, root)
        return rel.split(os.sep, 1)[0] != RESERVED_DIR
    return keep


class MirrorLoop:
    """One mirror, forever: wait for the lease, pass, wait for the next reason to pass."""

    def __init__(self, daemon: Owner, config: Config, mirror: MirrorConfig, keeper: Keeper,
                 memory: Memory) -> None:
        self.daemon = daemon
        self.config = config
        self.mirror = mirror
        self.keeper = keeper
        self.memory = memory
        self.beat: Beat = daemon.health.mirror(mirror.name)
        self.beat.start()
        endpoint = config.endpoint_name(mirror)
        self.meter = daemon.metrics.mirror(
            mirror.name, mirror.direction, endpoint=endpoint,
            endpoint_url=config.endpoint(mirror).endpoint_url or "", bucket=mirror.bucket,
            prefix=mirror.prefix)
        self.poke = asyncio.Event()  # a change event on the volume (push)
        self.log = logs.get(mirror=mirror.name, direction=mirror.direction,
                            target=keeper.lease.target, endpoint=endpoint)
        self.crashes: set[str] = set()  # signatures whose traceback was logged

    async def run(self) -> None:
        """The loop as a child of the daemon's task group: whatever ends it ends here, so the
        group never cancels the other mirrors over it. Ending before the daemon stops is
        death, which /healthz reports. KeyboardInterrupt and SystemExit mean "end the
        process" and keep that meaning."""
        try:
            await self._loop()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling():  # the drain or the group cancelled us
                raise
            self._died("a stray CancelledError ended the loop", None)  # nobody cancelled us
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # contained: the group would cancel the other mirrors
            self._died(f"{type(exc).__name__}: {exc}", exc)
        else:
            if not self.daemon.stopping:
                self._died("the loop returned while the daemon runs on", None)

    def _died(self, why: str, exc: BaseException | None) -> None:
        self.beat.dead(why)
        self.log.critical("mirror_loop_died", error=why,
                          detail="/healthz reports 503 until a restart or a reload",
                          **({"exception": _traceback(exc)} if exc is not None else {}))

    def _crashed(self, exc: Exception, retry: int) -> str:
        """An unexpected failure of a pass: contained, counted and retried. Its traceback is
        logged the first time; an identical repeat is one line."""
        error = f"unexpected {type(exc).__name__}: {exc}"
        signature = _signature(exc)
        fields: dict[str, object] = {"repeated": True}
        if signature not in self.crashes:
            if len(self.crashes) >= CRASHES_REMEMBERED:
                self.crashes.clear()
            self.crashes.add(signature)
            fields = {"exception": _traceback(exc)}
        self.log.error("pass_crashed", error=error, kind=type(exc).__name__, retry=retry,
                       **fields)
        self.meter.crashed()
        return error

    async def _loop(self) -> None:
        attempt = 0
        watcher = None
        if self.mirror.direction == "push":
            if self.memory.quiet is None:
                self.memory.quiet = Quiet(self.mirror.quiet_s)
            watcher = asyncio.create_task(self.watch(), name=f"watch {self.mirror.name}")
        elif self.memory.sightings is None:  # pull: a listing must stay put across polls
            self.memory.sightings = Sightings()
        try:
            while not self.daemon.stopping:
                self.beat.standby()
                session = await self._session()
                if session is None:
                    return
                self.beat.waiting()
                error: str | None = None
                began = time.monotonic()
                try:
                    done = await self._pass(session)
                except LeaseLost as exc:
                    self.log.error("pass_fenced", error=str(exc))
                    if self.keeper.lease.gen == session.fence.generation:
                        self.keeper.lease.lose(str(exc))
                    self.beat.done(str(exc))
                    self.meter.passed(time.monotonic() - began, result="fenced")
                    await first(session.ended.wait(), self.daemon.wake.wait())
                    continue
                except SyncdError as exc:
                    error = str(exc)
                    self.log.error("pass_failed", error=error, kind=type(exc).__name__,
                                   retry=attempt + 1)
                    self.meter.failed(exc)
                    self.meter.passed(time.monotonic() - began, result="failed")
                    self.memory.failing(time.monotonic())
                except Exception as exc:  # a bug, not a store or lease error: still a retry
                    error = self._crashed(exc, attempt + 1)
                    self.meter.passed(time.monotonic() - began, result="failed")
                    self.memory.failing(time.monotonic())
                else:
                    if done is not None:
                        self.meter.passed(time.monotonic() - began,
                                          result="partial" if done[1].failed else "ok")
                self.beat.done(error)
                delay = self._next_delay(attempt if error else None)
                attempt = attempt + 1 if error else 0
                self.beat.idle(delay)
                await first(session.ended.wait(), self.poke.wait(), self.daemon.wake.wait(),
                             within=delay)
                self.poke.clear()
        finally:
            if watcher is not None:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)

    async def _session(self) -> Session | None:
        """The next held generation, or None when the daemon stops or reloads first."""
        got = asyncio.ensure_future(self.keeper.wait_session())
        await first(got, self.daemon.wake.wait())
        return None if got.cancelled() else got.result()

    def _next_delay(self, failed_attempt: int | None) -> float:
        interval = self.config.daemon.poll_interval_s
        if failed_attempt is not None:
            cap = min(self.config.daemon.retry_max_s, interval)
            delay = max(0.2, next_delay(failed_attempt, base=1.0, cap=cap,
                                        rand=random.random()))
        else:
            delay = interval * (0.9 + random.random() / 5)
        if self.memory.due is not None:
            delay = min(delay, max(0.05, self.memory.due - time.monotonic()))
        return delay

    async def _pass(self, session: Session) -> tuple[Plan, Stats] | None:
        """One pass under `session`, cancelled if the generation ends before it finishes
        (None then). Mirrors sharing a target take turns: their passes share staging and
        the commit."""
        keeper, log = self.keeper, self.log
        async with keeper.turn:
            self.beat.passing()  # the stall clock starts once the pass may move bytes
            work = asyncio.create_task(mirror_mod.cycle(
                self.config, self.mirror, log=log, fence=session.fence,
                journal=keeper.lease.journal, memory=self.memory, on_bytes=self.beat.progress,
                stopping=lambda: self.daemon.stopping, meter=self.meter))
            ended = asyncio.create_task(session.ended.wait())
            try:
                await asyncio.wait({work, ended}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                ended.cancel()
                if not work.done():
                    work.cancel()
                    log.warning("pass_cancelled", reason="lease generation ended or stopping")
                await asyncio.wait({work})  # its cleanup finishes; our own cancel still raises
            if work.cancelled():
                return None
            plan, stats = work.result()
            await keeper.lease.commit(session.fence.generation)
        log.info("pass_done", copied=stats.copied, bytes=stats.copied_bytes,
                 streamed=stats.streamed_bytes, resumed=stats.resumed_bytes,
                 deleted=stats.deleted, failed=stats.failed, gen=session.fence.generation,
                 **plan.counts())
        return plan, stats

    async def watch(self) -> None:
        """Poke the loop on change events under the volume root (syncd's own dir aside)."""
        from watchfiles import awatch

        root = self.config.volume_root(self.mirror)
        assert root is not None
        try:
            async for _ in awatch(root, watch_filter=_outside_reserved(root), debounce=200,
                                  step=50, recursive=True):
                self.poke.set()
        except Exception as exc:  # the periodic rescan still runs
            self.log.warning("watch_failed", error=str(exc) or type(exc).__name__)
