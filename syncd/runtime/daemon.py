"""`syncd run`: the one owner of every task, signal and lease of a long-running process.

Each mirror of this datacenter gets a loop that waits for its lease (standby while another
instance holds it), runs a pass under the lease's fence, and sleeps for the poll interval.
A pass is cancelled the moment its lease generation ends. SIGTERM/SIGINT stop the loops,
release every lease (so a standby takes over at once) and exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
from typing import Any

from syncd.config import Config, MirrorConfig
from syncd.errors import LeaseLost, SyncdError, first_error
from syncd.ops import logging as logs
from syncd.runtime import mirror as mirror_mod
from syncd.runtime.leases import Keeper, Leases, Session, target_key

Log = Any


async def _until(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()


async def _pass(config: Config, mirror: MirrorConfig, keeper: Keeper, session: Session,
                log: Log) -> None:
    """One pass under `session`, cancelled if the generation ends before it finishes.
    Mirrors sharing a target take turns: their passes share staging and the commit object."""
    async with keeper.turn:
        work = asyncio.create_task(mirror_mod.cycle(
            config, mirror, log=log, fence=session.fence, journal=keeper.lease.journal))
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
            return
        plan, stats = work.result()
        await keeper.lease.commit(session.fence.generation)
    log.info("pass_done", copied=stats.copied, bytes=stats.copied_bytes,
             deleted=stats.deleted, failed=stats.failed, gen=session.fence.generation,
             **plan.counts())


async def mirror_loop(config: Config, mirror: MirrorConfig, keeper: Keeper) -> None:
    log = logs.get(mirror=mirror.name, direction=mirror.direction)
    interval = config.daemon.poll_interval_s
    while True:
        session = await keeper.wait_session()
        try:
            await _pass(config, mirror, keeper, session, log)
        except LeaseLost as exc:
            log.error("pass_fenced", error=str(exc))
            if keeper.lease.gen == session.fence.generation:
                keeper.lease.lose(str(exc))
            await session.ended.wait()  # the keeper drops this generation and contends again
            continue
        except SyncdError as exc:
            log.error("pass_failed", error=str(exc), kind=type(exc).__name__)
        await _until(session.ended, interval * (0.9 + random.random() / 5))


async def run(config: Config, mirrors: list[MirrorConfig]) -> int:
    log = logs.get()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Leases(config, log) as leases:
        keepers: dict[tuple[str, ...], Keeper] = {}
        for m in mirrors:
            key = target_key(config, m)
            if key not in keepers:
                keepers[key] = Keeper(await leases.lease(m), log)
        log.info("daemon_started", mirrors=[m.name for m in mirrors], holder=leases.holder.id,
                 pid=leases.holder.pid)
        tasks = [asyncio.create_task(k.run(), name=f"lease {k.lease.target}")
                 for k in keepers.values()]
        tasks += [asyncio.create_task(mirror_loop(config, m, keepers[target_key(config, m)]),
                                      name=f"mirror {m.name}") for m in mirrors]
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in [*tasks, stopper]:
                t.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for keeper in keepers.values():
                await keeper.release()
        log.info("daemon_stopped")
        failures = [r for r in results if isinstance(r, BaseException)
                    and not isinstance(r, asyncio.CancelledError)]
        if failures and not stop.is_set():
            err = failures[0]
            if isinstance(err, BaseExceptionGroup):
                err = first_error(err)
            raise err
    return 0
