"""`syncd sync --once`: one pass over each chosen mirror, under its write lease, then an exit
code for the whole run.

Mirrors run one after another, each under a lease held only for its pass (`held_once`). A
failure that stops a pass (endpoint, credentials, bucket, full disk, lease) is raised at once
with its own exit code; files that failed on their own, or deletes the guard held back, let
the other mirrors go on and decide the exit code at the end (`failure`). A dry run plans and
prints, takes no lease and writes nothing. Lines go through `echo` (the CLI's stdout).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from syncd.config import Config, MirrorConfig
from syncd.errors import ExitCode, IntegrityError, PartialFailure, PlanRefused, SyncdError
from syncd.ops import logging as logs
from syncd.ops.progress import Bar
from syncd.pass_plan import PassPlan, describe_step
from syncd.plan import Adopt, Copy, Delete, Refuse, Skip
from syncd.runtime import mirror as mirror_mod
from syncd.runtime.leases import Leases, held_once, target_key
from syncd.transfer import Stats

Echo = Callable[[str], None]


async def sync_once(config: Config, mirrors: Sequence[MirrorConfig], *, dry_run: bool,
                    wait_lease_s: float, echo: Echo) -> int:
    """One pass over each of `mirrors`; 0, or the error that decides the exit code."""
    async with Leases(config, logs.get()) as leases:
        worst: SyncdError | None = None
        for m in mirrors:
            log = logs.get(mirror=m.name, direction=m.direction,
                           target=target_key(config, m).name, endpoint=config.endpoint_name(m))
            if dry_run:
                async with mirror_mod.opened(config, m, write=False) as sides:
                    passplan, _ = await mirror_mod.plan_for(sides, m, config)
                for line in plan_lines(m.name, passplan):
                    echo(line)
                continue
            left = await _pass(config, m, leases, log, wait_lease_s, echo)
            worst = worst or left
        if worst is not None:
            raise worst
    return 0


async def _pass(config: Config, m: MirrorConfig, leases: Leases, log: Any,
                wait_lease_s: float, echo: Echo) -> SyncdError | None:
    """One mirror's pass; what it leaves for the exit code (files failed, deletes held)."""
    bar = Bar(m.name)
    try:
        lease = await leases.lease(m)
        async with held_once(lease, log, wait_s=wait_lease_s) as fence:
            plan, stats = await mirror_mod.cycle(
                config, m, log=log, fence=fence, journal=leases.journal,
                on_plan=bar.start_for, on_bytes=bar.advance)
            await lease.commit(fence.generation)
    finally:
        bar.stop()
    echo(summary(m.name, stats))
    if stats.failed:
        return failure(m.name, stats)
    if plan.refused_deletes:
        return PlanRefused(f"mirror {m.name}: deletes held back: {plan.refused_deletes}")
    return None


def describe(action: Any) -> str:
    """One action of a plan, for a dry run: what, which key, and why."""
    if isinstance(action, Copy):
        return f"copy    {action.key}  ({action.reason}, {action.src.size} bytes)"
    if isinstance(action, Adopt):
        return f"verify  {action.key}  ({action.reason}: hash, copy only if different)"
    if isinstance(action, Delete):
        return f"delete  {action.key}  ({action.reason})"
    if isinstance(action, Refuse):
        return f"refuse  {action.key!r}  ({action.reason}: {action.detail})"
    return f"keep    {action.key}  ({action.reason})"


def plan_lines(name: str, passplan: PassPlan) -> list[str]:
    """The plan a pass would carry out, as the pass itself plans it (`pass_plan`)."""
    plan = passplan.flat()
    lines = [f"[{name}] {describe(action)}" for action in plan.actions
             if not (isinstance(action, Skip) and action.reason == "unchanged")]
    lines += [f"[{name}] {describe_step(art)}" for art in passplan.artifacts]
    counts = ", ".join(f"{v} {k}" for k, v in sorted(plan.counts().items())) or "nothing"
    lines.append(f"[{name}] plan: {counts}; {plan.copy_bytes} bytes to copy")
    if plan.refused_deletes:
        lines.append(f"[{name}] deletes held back: {plan.refused_deletes}")
    return lines


def summary(name: str, stats: Stats) -> str:
    mb = stats.copied_bytes / 1e6
    return (f"[{name}] {stats.copied} files, {mb:.1f} MB copied in {stats.elapsed_s:.1f}s "
            f"({mb / stats.elapsed_s:.1f} MB/s); {stats.verified} verified, "
            f"{stats.unverified} size-only; {stats.adopted} adopted, {stats.deleted} deleted, "
            f"{stats.refused} refused, {stats.failed} failed")


def failure(name: str, stats: Stats) -> SyncdError:
    """One line for the run. Files that failed on their own while the rest went on exit 10,
    whatever each failure was (a key deleted after the listing is not a missing bucket, 7;
    a file changed while read is not an unexpected failure, 1); 9 when every one of them
    failed its checksum, the alarm that bytes arrive damaged. A failure that stops the pass
    (endpoint, credentials, bucket, volume root, full disk) never gets here: it is raised
    with its own code."""
    first = f", first: {stats.errors[0]}" if stats.errors else ""
    err = PartialFailure(f"{stats.failed} file(s) of mirror {name} failed{first}")
    if stats.errors and all(isinstance(e, IntegrityError) for e in stats.errors):
        err.exit_code = ExitCode.INTEGRITY
    return err
