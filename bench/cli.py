"""``python -m bench``: parse options, set up data + server + proxy, run, report, clean up.

Exit code: 0 when every run of every tool was checked complete and byte-identical, 1 when
any run FAILED (wrong or incomplete result, non-zero exit, timeout), 2 for a bad command
line or a harness that could not start, 130 on Ctrl-C (after cleaning up).
"""

from __future__ import annotations

import argparse
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

from bench import report, rest, workloads
from bench.measure import stop_live_child
from bench.proxy import CountingProxy, self_test
from bench.records import RunRecord
from bench.runner import Bench, say, seed_remote
from bench.scenarios import Scenario, plan, run_scenario
from bench.server import (
    Credentials,
    LocalServer,
    ensure_bucket,
    find_binary,
    host_port,
    s3_client,
)
from bench.tools import ALL_TOOLS, S3Loc, Target, Tool, make_tools
from bench.workloads import GiB, KiB, Materialized, MiB, materialize

ALL_WORKLOADS = ("W1", "W1c", "W2", "W3", "W4", "W5", "W6", "W7")
ROLES = {"W1": ("w1",), "W1c": ("w1",), "W2": ("w2",), "W3": ("w3",), "W4": ("w4",),
         "W5": ("w3", "w5shard"), "W6": ("w6a", "w6b"), "W7": ("w4",)}
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
        description="Benchmark syncd against s5cmd and rclone on a local rclone serve s3 "
                    "(or --endpoint). See bench/README.md.")
    p.add_argument("--quick", action="store_true",
                   help="small sizes, 1 run: a smoke test (a couple of minutes on 2 cores)")
    p.add_argument("--runs", type=int, default=None,
                   help="timed runs per workload and tool (default: 3, quick: 1)")
    p.add_argument("--workloads", type=_csv(ALL_WORKLOADS), default=list(ALL_WORKLOADS),
                   help="comma-separated subset of W1..W7 (default: all)")
    p.add_argument("--tools", type=_csv(ALL_TOOLS), default=list(ALL_TOOLS),
                   help=f"comma-separated subset of {','.join(ALL_TOOLS)} (default: all)")
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
    p.add_argument("--endpoint", default=None, metavar="URL",
                   help="use this S3 endpoint instead of a local rclone serve s3 "
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
    args = p.parse_args(argv)
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
    }
    return "; ".join(parts[wl] for wl in chosen)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@dataclass(eq=False)
class Live:
    """What must be stopped on the way out, whatever happens."""

    servers: list[LocalServer] = field(default_factory=list)
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
            what = "curl" if tool.family == "limit" else tool.family
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

    # --- the endpoint ---
    server: LocalServer | None = None
    if args.endpoint:
        creds = Credentials.from_environment()
        endpoint = args.endpoint.rstrip("/")
        client = s3_client(endpoint, creds)
        ensure_bucket(client, args.bucket)
        for role in roles:
            if role != "w5shard":
                n = seed_remote(client, S3Loc(args.bucket, f"src/{mats[role].dataset.key}"),
                                mats[role])
                if n:
                    say(f"bench: uploaded {n} objects of {mats[role].dataset.key}")
        server_version = f"external endpoint {endpoint}"
    else:
        binary = find_binary("rclone")
        if binary is None:
            say("bench: error: rclone not found next to the interpreter nor on PATH; "
                "install it or pass --endpoint URL")
            return 2
        root = workdir / "s3"
        shutil.rmtree(root, ignore_errors=True)
        bucket_dir = root / args.bucket
        bucket_dir.mkdir(parents=True)
        for role in roles:
            if role != "w5shard":
                workloads.link_tree(mats[role], bucket_dir / "src" / mats[role].dataset.key)
        if "W5" in args.workloads:
            for run in range(args.runs):
                workloads.link_tree(mats["w3"], bucket_dir / "w5" / session / f"r{run + 1}")
        server = LocalServer(binary, workdir / "server", root)
        server.start()
        live.servers.append(server)
        creds = server.creds
        endpoint = server.endpoint_url
        client = s3_client(endpoint, creds)
        server_version = f"local rclone serve s3 on {endpoint} ({server.version()})"

    # --- the counting proxy (plain http only: a TCP relay cannot pass TLS to a 2nd name) ---
    proxy: CountingProxy | None = None
    count_target: Target | None = None
    if endpoint.startswith("http://"):
        host, port = host_port(endpoint)
        proxy = CountingProxy(host, port)
        proxy.start()
        live.proxies.append(proxy)
        problem = self_test(proxy, lambda url: s3_client(url, creds, attempts=1), args.bucket,
                            f"bench-proxy-selftest/{session}")
        if problem:
            notes.append(f"{problem}; request counts are not reported")
            proxy = None
        else:
            count_target = Target(proxy.endpoint_url, creds, workdir)
    else:
        notes.append("https endpoint: requests are not counted (the proxy relays plain http)")

    versions = {t.name: t.version() for t in tools
                if t.family != "limit" and not t.tuned}
    if any(t.family == "limit" for t in tools):
        curl = next(t for t in tools if t.family == "limit")
        versions["curl (limit)"] = curl.version()

    bench = Bench(workdir=workdir, session=session, bucket=args.bucket,
                  target=Target(endpoint, creds, workdir), client=client, tools=tools,
                  mats=mats, runs=args.runs, server=server, proxy=proxy,
                  count_target=count_target, rest_window_s=args.rest_window_s, notes=notes)
    if "W7" in args.workloads and not any(t.family == "syncd" for t in tools):
        notes.append("W7 (the daemon at rest) runs syncd only, which --tools left out")

    def label(role: str) -> str:
        return f"W6-{workloads.count_label(mats[role].dataset.count)}"

    scenarios = plan(args.workloads, args.directions, label,
                     small_push=args.small_push)
    for run in range(args.runs):
        say(f"bench: run {run + 1}/{args.runs}")
        for sc in scenarios:
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
    if server is not None:  # bucket data is hard links and pushes: nothing worth keeping
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)

    meta = {
        "machine": report.machine_info(versions, load_at_start),
        "settings": {
            "mode": "quick" if args.quick else "full", "runs": args.runs, "scale": args.scale,
            "workloads": args.workloads, "tools": args.tools, "directions": args.directions,
            "small_push": args.small_push, "rest_window_s": args.rest_window_s,
            "endpoint": server_version, "session": session,
            "data": describe(sizes, args.workloads, args.rest_window_s) + (
                "" if args.small_push or "push" not in args.directions
                or not {"W4", "W6"} & set(args.workloads)
                else "; W4 and W6 pull only (--small-push to push)"),
            "elapsed_s": round(time.monotonic() - started, 1),
        },
        "datasets": {role: {"key": m.dataset.key, "files": m.dataset.count,
                            "bytes": m.dataset.total_bytes} for role, m in mats.items()},
    }
    order = _order(scenarios, tools)
    rows = report.build_rows(order, bench.records)
    text = report.markdown(meta, rows, bench.records, bench.notes)
    report.emit(text, args.markdown)
    report.write_json(args.json_path, meta, rows, bench.records, bench.notes)
    failures = sum(not r.ok for r in bench.records)
    say(f"bench: {len(bench.records)} runs, {failures} failed, "
        f"{time.monotonic() - started:.0f}s; JSON in {args.json_path}")
    return 1 if failures else 0


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
