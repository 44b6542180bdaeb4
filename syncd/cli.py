"""Command line: parse, load config, call the runtime; any SyncdError -> one line + exit code.

Exit codes are `errors.ExitCode` (documented in the README). No traceback reaches the user for
an expected failure; an unexpected one is reported in one line too, with the log carrying
its traceback. The one-shot loop is runtime/oneshot.py, breaking a lease is the lease's own
operation (`Lease.force_release`), and `lease status` rows are lease/report.py.
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
from syncd.errors import ConfigError, ExitCode, SyncdError

# The heavy parts (pydantic, structlog, aiohttp, awscrt) are imported by the commands that
# use them: `syncd health` runs every 30 s as a container HEALTHCHECK and `syncd --version`
# answers scripts; neither should pay ~0.7 s of imports for a one-line answer.
if TYPE_CHECKING:
    from syncd import config as config_mod
    from syncd.runtime.leases import Target

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Mirror model artifacts between S3-compatible buckets and volumes.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect the configuration.")
app.add_typer(config_app, name="config")
lease_app = typer.Typer(no_args_is_help=True, help="Inspect and break write leases.")
app.add_typer(lease_app, name="lease")
manifest_app = typer.Typer(no_args_is_help=True,
                           help="Write the manifest of an artifact uploaded by other tools.")
app.add_typer(manifest_app, name="manifest")

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
        _log_unexpected(exc)
        _fail(f"unexpected {type(exc).__name__}: {exc}", int(ExitCode.ERROR))
    raise typer.Exit(code)


def _log_unexpected(exc: Exception) -> None:
    """A bug or a failure syncd does not know yet: the user gets one line, the log gets the
    traceback to report it with (as the `exception` field, in JSON lines and console alike)."""
    import traceback

    from syncd.ops import logging as logs

    logs.get().error("unexpected_error", error=f"{type(exc).__name__}: {exc}",
                     exception="".join(traceback.format_exception(exc)).rstrip("\n"))


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
    from syncd.runtime import oneshot

    if not once:
        _fail("sync runs one pass: pass --once", int(ExitCode.USAGE))

    async def main() -> int:
        cfg = config_mod.load(config)
        return await oneshot.sync_once(cfg, _mirrors(cfg, mirror), dry_run=dry_run,
                                       wait_lease_s=wait_lease, echo=typer.echo)

    _run(main)


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


@lease_app.command("status")
def lease_status(
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Show every write lease of this datacenter's mirrors: holder, generation, age, expiry."""
    from syncd import config as config_mod
    from syncd.lease import report
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
                row = report.row(key.name, key.backend, names, view, time.time(), lease.timing)
                arbiter = getattr(lease.backend, "arbiter", "")
                if arbiter:  # a volume's: its filesystem, or the S3 bucket that holds it
                    row["arbiter"] = arbiter
                typer.echo(json.dumps(row) if as_json else report.line(row))
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
            broken = await lease.force_release()
            if broken is None:
                typer.echo(f"{lease.target}: no lease to break")
                return 0
            log.warning("lease_broken", target=lease.target, gen=broken.found.gen,
                        holder=broken.previous, new_gen=broken.written.gen)
            typer.echo(f"{lease.target}: broke generation {broken.found.gen} held by "
                       f"{broken.previous}; generation {broken.written.gen} is released")
        return 0

    _run(main)


@manifest_app.command("write")
def manifest_write(
    artifact: Annotated[str, typer.Argument(help="The artifact's path relative to its "
                                                 "mirror's prefix (tiny-llama).")],
    config: ConfigOpt = None,
    mirror: Annotated[str | None, typer.Option(
        "--mirror", "-m", help="The mirror whose bucket holds it (default: the only mirror "
                               "the artifact belongs to).")] = None,
) -> None:
    """Describe an artifact already uploaded (docs/manifest.md): every file with its size,
    ETag and CRC64NVME (from its HEAD, else hashed by reading it), the manifest written last
    with a conditional PUT. A pull then builds exactly that version, at once."""
    from syncd import config as config_mod
    from syncd.runtime import manifests

    async def main() -> int:
        cfg = config_mod.load(config)
        chosen = manifests.mirror_for(cfg, artifact, mirror)
        manifests.summary(await manifests.write(cfg, chosen, artifact), typer.echo)
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
