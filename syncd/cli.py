"""Command line: parse, load config, call the runtime; any SyncdError -> one line + exit code.

Exit codes are `errors.ExitCode` (documented in the README). No traceback reaches the user for
an expected failure; an unexpected one is reported in one line too, with the log carrying
the detail.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from syncd import __version__
from syncd.errors import (
    ConfigError,
    ExitCode,
    IntegrityError,
    LeaseHeld,
    PartialFailure,
    PlanRefused,
    SyncdError,
)

# The heavy parts (pydantic, structlog, aiohttp, awscrt) are imported by the commands that
# use them: `syncd health` runs every 30 s as a container HEALTHCHECK and `syncd --version`
# answers scripts; neither should pay ~0.7 s of imports for a one-line answer.
if TYPE_CHECKING:
    from syncd import config as config_mod
    from syncd.lease.record import Timing, View
    from syncd.pass_plan import PassPlan
    from syncd.runtime.leases import Leases, Target
    from syncd.transfer import Stats

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Mirror model artifacts between S3-compatible buckets and volumes.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect the configuration.")
app.add_typer(config_app, name="config")
lease_app = typer.Typer(no_args_is_help=True, help="Inspect and break write leases.")
app.add_typer(lease_app, name="lease")

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Config file (default: $SYNCD_CONFIG).",
                 show_default=False),
]
MirrorOpt = Annotated[
    list[str] | None, typer.Option("--mirror", "-m", help="Only this mirror (repeatable).")
]


def _fail(message: str, code: int) -> None:
    typer.echo(f"syncd: error: {message}", err=True)
    raise typer.Exit(code)


def _run(main: Callable[[], Coroutine[Any, Any, int]]) -> None:
    import asyncio

    try:
        code = asyncio.run(main())
    except SyncdError as exc:
        _fail(str(exc), int(exc.exit_code))
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as exc:
        _fail(f"unexpected {type(exc).__name__}: {exc}", int(ExitCode.ERROR))
    raise typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"syncd {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    log_level: Annotated[str, typer.Option("--log-level", help="debug|info|warning|error")] = (
        "info"),
) -> None:
    if ctx.invoked_subcommand != "health":  # it logs nothing
        from syncd.ops import logging as logs

        logs.setup(log_level)


def _mirrors(cfg: config_mod.Config, names: list[str] | None) -> list[config_mod.MirrorConfig]:
    chosen = [cfg.mirror(n) for n in names] if names else list(cfg.mirrors)
    dc = cfg.active_datacenter()
    return [m for m in chosen if dc in m.volumes]


def _describe(action: Any) -> str:
    from syncd.plan import Adopt, Copy, Delete, Refuse

    if isinstance(action, Copy):
        return f"copy    {action.key}  ({action.reason}, {action.src.size} bytes)"
    if isinstance(action, Adopt):
        return f"verify  {action.key}  ({action.reason}: hash, copy only if different)"
    if isinstance(action, Delete):
        return f"delete  {action.key}  ({action.reason})"
    if isinstance(action, Refuse):
        return f"refuse  {action.key!r}  ({action.reason}: {action.detail})"
    return f"keep    {action.key}  ({action.reason})"


def _print_plan(name: str, passplan: PassPlan) -> None:
    """The plan a pass would carry out, as the pass itself plans it (`pass_plan`)."""
    from syncd.pass_plan import describe_step
    from syncd.plan import Skip

    plan = passplan.flat()
    for action in plan.actions:
        if not (isinstance(action, Skip) and action.reason == "unchanged"):
            typer.echo(f"[{name}] {_describe(action)}")
    for art in passplan.artifacts:
        typer.echo(f"[{name}] {describe_step(art)}")
    counts = ", ".join(f"{v} {k}" for k, v in sorted(plan.counts().items())) or "nothing"
    typer.echo(f"[{name}] plan: {counts}; {plan.copy_bytes} bytes to copy")
    if plan.refused_deletes:
        typer.echo(f"[{name}] deletes held back: {plan.refused_deletes}")


def _summary(name: str, stats: Stats) -> str:
    mb = stats.copied_bytes / 1e6
    return (f"[{name}] {stats.copied} files, {mb:.1f} MB copied in {stats.elapsed_s:.1f}s "
            f"({mb / stats.elapsed_s:.1f} MB/s); {stats.verified} verified, "
            f"{stats.unverified} size-only; {stats.adopted} adopted, {stats.deleted} deleted, "
            f"{stats.refused} refused, {stats.failed} failed")


@app.command()
def sync(
    once: Annotated[bool, typer.Option("--once", help="One pass over each mirror, then exit.")],
    config: ConfigOpt = None,
    mirror: MirrorOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; change nothing.")]
    = False,
    wait_lease: Annotated[float, typer.Option(
        "--wait-lease", metavar="SECONDS",
        help="Wait up to this long for another instance's write lease.")] = 0.0,
) -> None:
    """Bring every mirror of this datacenter in sync once."""
    from syncd import config as config_mod
    from syncd.ops import logging as logs
    from syncd.ops.progress import Bar
    from syncd.runtime import mirror as mirror_mod
    from syncd.runtime.leases import Leases, held_once, target_key

    if not once:
        _fail("sync runs one pass: pass --once", int(ExitCode.USAGE))

    async def main() -> int:
        cfg = config_mod.load(config)
        async with Leases(cfg, logs.get()) as leases:
            return await passes(cfg, leases)

    async def passes(cfg: config_mod.Config, leases: Leases) -> int:
        worst: SyncdError | None = None
        for m in _mirrors(cfg, mirror):
            log = logs.get(mirror=m.name, direction=m.direction,
                           target=target_key(cfg, m).name,
                           endpoint=cfg.endpoint_name(m))
            if dry_run:
                async with mirror_mod.opened(cfg, m, write=False) as sides:
                    passplan, _ = await mirror_mod.plan_for(sides, m, cfg)
                _print_plan(m.name, passplan)
                continue
            bar = Bar(m.name)
            try:
                lease = await leases.lease(m)
                async with held_once(lease, log, wait_s=wait_lease) as fence:
                    plan, stats = await mirror_mod.cycle(
                        cfg, m, log=log, fence=fence, journal=leases.journal,
                        on_plan=bar.start_for, on_bytes=bar.advance)
                    await lease.commit(fence.generation)
            finally:
                bar.stop()
            typer.echo(_summary(m.name, stats))
            if stats.failed:
                worst = worst or _failure(m.name, stats)
            elif plan.refused_deletes:
                worst = worst or PlanRefused(f"mirror {m.name}: deletes held back: "
                                             f"{plan.refused_deletes}")
        if worst is not None:
            raise worst
        return 0

    _run(main)


def _failure(name: str, stats: Stats) -> SyncdError:
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


@app.command()
def check(config: ConfigOpt = None, mirror: MirrorOpt = None) -> None:
    """Compare volume and bucket; print differences; exit 4 on drift."""
    from syncd import config as config_mod
    from syncd.runtime import drift
    from syncd.runtime import mirror as mirror_mod

    async def main() -> int:
        cfg = config_mod.load(config)
        found = 0
        for m in _mirrors(cfg, mirror):
            async with mirror_mod.opened(cfg, m, write=False) as sides:
                for difference in await drift.differences(sides, m, cfg):
                    found += 1
                    typer.echo(f"[{m.name}] {difference}")
        typer.echo(f"{found} difference(s)" if found else "in sync")
        return int(ExitCode.DRIFT) if found else 0

    _run(main)


@app.command()
def run(config: ConfigOpt = None, mirror: MirrorOpt = None) -> None:
    """Keep every mirror of this datacenter in sync until SIGTERM/SIGINT.

    Each mirror writes only under its write lease; an instance that cannot get the lease
    waits in standby and takes over when the holder stops or its lease expires."""
    from syncd import config as config_mod
    from syncd.runtime import daemon

    async def main() -> int:
        cfg = config_mod.load(config)
        if not daemon.select(cfg, mirror):
            raise ConfigError(f"no mirror has a volume in datacenter "
                              f"{cfg.active_datacenter()!r}", file=cfg.source)
        return await daemon.run(cfg, mirror)

    _run(main)


@app.command()
def wait(
    artifact: Annotated[str, typer.Argument(help="The artifact: its path relative to a pull "
                                                 "mirror's root, or its absolute path on the "
                                                 "volume.")],
    timeout: Annotated[float, typer.Option("--timeout", metavar="SECONDS",
                                           help="Give up after this long (exit 13).")] = 600.0,
    config: ConfigOpt = None,
    mirror: MirrorOpt = None,
) -> None:
    """Wait until an artifact is published and verified on the volume; print its directory.

    Exit 0 with the directory to load the artifact from; exit 13 on timeout.

    Load from the printed directory: it stays as it is, even when a newer version is
    published, for the mirror's keep_versions_s."""
    from syncd import config as config_mod
    from syncd.runtime import wait as wait_mod

    async def main() -> int:
        path = config or os.environ.get(config_mod.ENV_CONFIG)
        target = (wait_mod.from_config(config_mod.load(path), artifact, mirror) if path
                  else wait_mod.from_path(artifact))
        typer.echo(str(await wait_mod.wait(target, timeout)))
        return 0

    _run(main)


def _health_url(config: Path | None) -> str:
    """The variable wins over the file (as in the daemon), so the container's HEALTHCHECK,
    which has it set, never parses the config."""
    from syncd.ops.address import DEFAULT_LISTEN, ENV_LISTEN, env_value, host_port

    raw = os.environ.get(ENV_LISTEN)
    listen = None if raw is None else str(env_value(raw))
    if listen is None:
        from syncd import config as config_mod

        path = config or os.environ.get(config_mod.ENV_CONFIG)
        listen = config_mod.load(path).http.listen if path else DEFAULT_LISTEN
    if not listen:
        raise ConfigError("the HTTP endpoint is off (http.listen is empty)", field="http.listen")
    try:
        host, port = host_port(listen)
    except ValueError as exc:
        raise ConfigError(str(exc), field="http.listen") from None
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # a wildcard: ask loopback
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/healthz"


@app.command()
def health(
    url: Annotated[str | None, typer.Option("--url", help="The /healthz URL (default: from "
                                                          "the config's http.listen).")] = None,
    timeout: Annotated[float, typer.Option("--timeout", metavar="SECONDS")] = 5.0,
    config: ConfigOpt = None,
) -> None:
    """Ask a running daemon whether it is healthy: exit 0 if so, 1 if not.

    For container HEALTHCHECKs and scripts: it reads /healthz at the config's http.listen.
    Every failure, a config it cannot read included, exits 1 (what HEALTHCHECK expects)."""
    try:
        target = url or _health_url(config)
    except SyncdError as exc:
        _fail(str(exc), int(ExitCode.ERROR))
    ok, line = _probe(target, timeout)
    if not ok:
        _fail(line, int(ExitCode.ERROR))
    typer.echo(line)


def _probe(target: str, timeout: float) -> tuple[bool, str]:
    """GET /healthz, bypassing any proxy from the environment: (healthy, one line)."""
    import http.client
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(target, timeout=timeout) as reply:
            code, raw = reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        code, raw = exc.code, exc.read()
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return False, f"no answer from {target}: {getattr(exc, 'reason', None) or exc}"
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return False, f"{target} (HTTP {code}) did not answer like syncd's /healthz"
    mirrors = body.get("mirrors")
    mirrors = mirrors if isinstance(mirrors, dict) else {}
    if code != 200:
        stalled = [n for n, m in mirrors.items() if isinstance(m, dict) and m.get("stalled")]
        return False, (f"unhealthy (HTTP {code}): event loop late {body.get('loop_stuck_s')}s,"
                       f" stalled mirrors: {', '.join(stalled) or 'none'}")
    return True, f"healthy ({len(mirrors)} mirrors)"


def _lease_rows(cfg: config_mod.Config) -> dict[Target, list[config_mod.MirrorConfig]]:
    from syncd.runtime.leases import target_key

    rows: dict[Target, list[config_mod.MirrorConfig]] = {}
    for m in _mirrors(cfg, None):
        rows.setdefault(target_key(cfg, m), []).append(m)
    return rows


def _status(key: Target, mirrors: list[str], view: View, now: float,
            timing: Timing) -> dict[str, Any]:
    """One target's lease as `lease status` reports it. A one-shot read cannot observe
    silence (takeover needs `takeover_after_s` of it, watched by a standby's own clock), so
    the ages are the record's wall-clock times against ours: for operators only. A holder not
    renewed for its TTL by that measure is "silent", never "held" with a negative expiry."""
    row: dict[str, Any] = {"target": key.name, "backend": key.backend, "mirrors": mirrors,
                           "gen": view.gen, "state": "free", "holder": None}
    record = view.record
    if view.corrupt is not None:
        row.update(state="corrupt", detail=view.corrupt)
    elif record is not None:
        age = now - record.renewed_wall
        row.update(
            state="released" if record.released else "held" if age < record.ttl_s
            else "silent",
            holder={"id": record.holder.id, "host": record.holder.host,
                    "pid": record.holder.pid},
            acquired_age_s=round(max(0.0, now - record.acquired_wall), 1),
            renewed_age_s=round(max(0.0, age), 1),
            ttl_s=record.ttl_s,
            takeover_after_s=timing.takeover_after(record.ttl_s),
            beat=record.beat,  # changes with every renewal: two reads tell a live holder
        )
        if row["state"] == "held":
            row["expires_in_s"] = round(record.ttl_s - max(0.0, age), 1)
        if age < -1.0:  # its clock is ahead of ours: ages are not what they seem
            row["clock_ahead_s"] = round(-age, 1)
    return row


def _status_line(row: dict[str, Any]) -> str:
    via = f" via {row['arbiter']}" if row.get("arbiter") else ""
    head = f"{row['target']} [{row['backend']} lease{via}; {', '.join(row['mirrors'])}]"
    if row["state"] == "corrupt":
        return f"{head}: unreadable record, treated as held ({row['detail']})"
    if row["holder"] is None:
        return f"{head}: free" + (f" (last generation {row['gen']})" if row["gen"] else "")
    h = row["holder"]
    who = f"{h['id']} (host {h['host']}, pid {h['pid']})"
    if row["state"] == "released":
        return f"{head}: released by {who}, generation {row['gen']}"
    ahead = (f"; its wall clock is {row['clock_ahead_s']:.0f}s ahead of ours"
             if "clock_ahead_s" in row else "")
    standby = (f"a standby takes over only after it has itself seen no renewal for "
               f"{row['takeover_after_s']:.0f}s")
    if row["state"] == "silent":
        return (f"{head}: silent: not renewed for {row['renewed_age_s']:.0f}s by its wall "
                f"clock (ttl {row['ttl_s']:g}s{ahead}), last held by {who}, generation "
                f"{row['gen']}, heartbeat {row['beat']} (if it changes between two looks, "
                f"the holder is alive and its clock behind ours); {standby}")
    return (f"{head}: held by {who}, generation {row['gen']}, acquired "
            f"{row['acquired_age_s']:.0f}s ago, renewed {row['renewed_age_s']:.0f}s ago, "
            f"expires in {row['expires_in_s']:.0f}s unless renewed (by its wall clock"
            f"{ahead}; {standby})")


@lease_app.command("status")
def lease_status(
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Show every write lease of this datacenter's mirrors: holder, generation, age, expiry."""
    from syncd import config as config_mod
    from syncd.ops import logging as logs
    from syncd.runtime.leases import Leases


    async def main() -> int:
        cfg = config_mod.load(config)
        failed: SyncdError | None = None
        async with Leases(cfg, logs.get()) as leases:
            for key, ms in _lease_rows(cfg).items():
                names = [m.name for m in ms]
                lease = await leases.lease(ms[0])
                try:  # one target that cannot be read (unmounted, refused) hides no other
                    view = await lease.backend.read()
                except SyncdError as exc:
                    failed = failed or exc
                    row = {"target": key.name, "backend": key.backend, "mirrors": names,
                           "state": "error", "error": str(exc)}
                    typer.echo(json.dumps(row) if as_json else
                               f"{key.name} [{key.backend} lease; {', '.join(names)}]: "
                               f"cannot read it: {exc}")
                    continue
                row = _status(key, names, view, time.time(), lease.timing)
                arbiter = getattr(lease.backend, "arbiter", "")
                if arbiter:  # a volume's: its filesystem, or the S3 bucket that holds it
                    row["arbiter"] = arbiter
                typer.echo(json.dumps(row) if as_json else _status_line(row))
        return int(failed.exit_code) if failed else 0

    _run(main)


@lease_app.command("break")
def lease_break(
    target: Annotated[str, typer.Argument(help="A mirror name or a target as `lease status` "
                                               "shows it.")],
    yes: Annotated[bool, typer.Option("--yes", help="Really break it.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Force-release a lease: the next generation is written as released, so the old holder
    is fenced out and any instance may take over at once. Use only when the holder is gone."""
    from syncd import config as config_mod
    from syncd.lease.record import LeaseRecord
    from syncd.ops import logging as logs
    from syncd.runtime.leases import Leases

    if not yes:
        _fail("breaking a lease can let two writers in if its holder is still running; "
              "pass --yes if you are sure", int(ExitCode.USAGE))

    async def main() -> int:
        cfg = config_mod.load(config)
        rows = _lease_rows(cfg)
        chosen = [k for k, ms in rows.items()
                  if target == k.name or target in {m.name for m in ms}]
        if not chosen:
            known = ", ".join(k.name for k in rows)
            raise ConfigError(f"no lease target or mirror named {target!r} (targets: {known})",
                              file=cfg.source)
        log = logs.get()
        async with Leases(cfg, log) as leases:
            lease = await leases.lease(rows[chosen[0]][0])
            if not (await lease.backend.read()).exists:  # a look writes nothing
                typer.echo(f"{lease.target}: no lease to break")
                return 0
            await lease.backend.prepare()
            view = await lease.backend.read()
            now = time.time()
            record = LeaseRecord(target=lease.target, gen=view.next_gen, holder=leases.holder,
                                 ttl_s=lease.timing.ttl_s, acquired_wall=now, renewed_wall=now,
                                 released=True)
            if await lease.backend.create(view, record) is None:
                raise LeaseHeld(f"lease on {lease.target} changed while breaking it; "
                                "look at `syncd lease status` and try again")
            old = view.record.holder.describe() if view.record else f"({view.corrupt})"
            log.warning("lease_broken", target=lease.target, gen=view.gen, holder=old,
                        new_gen=record.gen)
            typer.echo(f"{lease.target}: broke generation {view.gen} held by {old}; "
                       f"generation {record.gen} is released")
        return 0

    _run(main)


@config_app.command("validate")
def config_validate(
    path: Annotated[Path | None, typer.Argument(help="Config file (default: $SYNCD_CONFIG).")]
    = None,
    config: ConfigOpt = None,
) -> None:
    """Validate a config file; print the effective mirrors of this datacenter."""
    from syncd import config as config_mod

    try:
        cfg = config_mod.load(path or config)
        dc = cfg.active_datacenter()
    except SyncdError as exc:
        _fail(str(exc), int(exc.exit_code))
    typer.echo(f"{cfg.source}: ok (datacenter {dc})")
    for m in cfg.mirrors:
        root = m.volumes.get(dc)
        if not root:
            typer.echo(f"  {m.name}: {m.direction} s3://{m.bucket}/{m.prefix} <-> (no volume "
                       "in this datacenter: not run here)")
            continue
        name, s3 = cfg.endpoint_name(m), cfg.endpoint(m)
        typer.echo(f"  {m.name}: {m.direction} s3://{m.bucket}/{m.prefix} <-> {root} via "
                   f"endpoint {name} ({s3.location()}; {s3.credential_source()})")


@app.command()
def demo(
    directory: Annotated[Path, typer.Option("--dir", help="Where the demo keeps its files.")]
    = Path("demo"),
    endpoint: Annotated[str | None, typer.Option(
        "--endpoint", show_default=False,
        help="Use this S3 endpoint instead of a local server (default: "
             "$SYNCD_S3__ENDPOINT_URL; credentials from the AWS chain).")] = None,
    bucket: Annotated[str, typer.Option("--bucket", help="Bucket to seed and sync.")]
    = "syncd-demo",
) -> None:
    """Run the whole job end to end against a local S3-compatible server."""
    from syncd import demo as demo_mod

    _run(lambda: demo_mod.run(directory, endpoint=endpoint, bucket=bucket, echo=typer.echo))


def main() -> None:
    try:
        app()
    except SystemExit as exc:
        sys.exit(exc.code)
