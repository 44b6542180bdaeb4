"""W7, the daemon at rest: ``syncd run`` over objects already in sync, as shipped.

The issue's target: under 2 % of one core, averaged over a minute, with 10,000 objects in
sync and the default poll interval. What runs, for syncd only (s5cmd and rclone have no
daemon mode):

- prime: ``syncd sync --once`` of the W4 set into a fresh volume (untimed, checked);
- ``syncd run -c CFG``: the same pull mirror with default ``[daemon]`` settings (a pass every
  30 s with +-10 % jitter: never shortened here), the volume lease like every syncd run of
  the harness, its HTTP endpoint on a free port, JSON logs, its requests through the counting
  proxy;
- from its first ``pass_done`` log line, the window (60 s; 35 s with --quick, the shortest
  that always holds a periodic pass): CPU = utime+stime from /proc/<pid>/stat, passes =
  ``pass_done`` lines, requests = the proxy's count, the server's CPU; RSS from
  /proc/<pid>/status (VmHWM: the peak over the daemon's life, first pass included);
- SIGTERM: it must exit 0 within its grace period (30 s); then the volume must still be
  complete and byte-identical.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.measure import Background, CpuTimes, proc_cpu, proc_memory_kib
from bench.records import REST, TRANSFER, RunRecord
from bench.runner import Bench, say, timeout_for
from bench.tools import S3Loc, Tool
from bench.workloads import Materialized

if TYPE_CHECKING:
    from bench.scenarios import Scenario

TARGET_PCT = 2.0  # of one core, averaged over the window
POLL_INTERVAL_S = 30.0  # syncd's default [daemon] poll_interval_s: the config leaves it be
GRACE_S = 30.0  # syncd's default [daemon] grace_s
FULL_WINDOW_S = 60.0
QUICK_WINDOW_S = 35.0  # > 1.1 x the poll interval: at least one periodic pass falls in it
TICK_S = 1.0


class EventLog:
    """syncd's JSON log lines on stderr, read as they are appended (a partial last line
    waits for the next read)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def read(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except OSError:
            return []
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        events = []
        for line in lines:
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    events.append(event)
        return events


def count(events: list[dict[str, Any]], name: str) -> int:
    return sum(1 for e in events if e.get("event") == name)


def row_name(label: str) -> str:
    return f"{label} at rest"


def at_rest(b: Bench, sc: Scenario, run: int) -> None:
    """Prime a volume, then measure ``syncd run`` at rest on it (see the module doc)."""
    tool = next((t for t in b.tools if t.family == "syncd" and t.available), None)
    if tool is None:
        return
    row, mat, src = row_name(sc.label), b.mats[sc.role], b.src_loc(sc.role)
    b.warm(src)
    case = b.case_dir(run, sc.slug, tool.name)
    dest = case / "dest"
    dest.mkdir()

    def record(phase: str, kind: str) -> RunRecord:
        return RunRecord(run=run, row=row, workload=sc.workload, direction=sc.direction,
                         tool=tool.name, phase=phase, kind=kind,
                         bytes=mat.dataset.total_bytes, files=mat.dataset.count)

    try:
        prime = record("prime", TRANSFER)
        inv = tool.pull(b.target, src, dest, resync=False, conf_dir=case, tag="prime")
        b.timed(prime, inv, case, "prime")
        b.check_pull(prime, dest, mat.manifest)
        rec = record("timed", REST)
        if prime.ok:
            _measure(b, rec, tool, src, dest, case, mat)
        else:
            rec.fail("not run: the first sync failed")
        b.records.append(rec)
        d = rec.daemon
        got = (f"{d['cpu_pct']:.2f}% CPU, {d['passes']} passes, {rec.requests} requests"
               if d is not None else "not measured")
        say(f"  r{run + 1} {row:<16} pull {tool.name:<13} window {rec.wall_s or 0:8.2f}s  "
            f"{got}  {'ok' if rec.ok else 'FAILED'}")
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def _measure(b: Bench, rec: RunRecord, tool: Tool, src: S3Loc, dest: Path, case: Path,
             mat: Materialized) -> None:
    counted = b.proxy is not None and b.count_target is not None
    target = b.count_target if counted and b.count_target is not None else b.target
    inv = tool.daemon(target, src, dest, conf_dir=case)
    rec.argv, rec.log_dir = inv.argv, str(case)
    started = time.monotonic()
    child = Background.start(inv.argv, env=inv.env, cwd=case, log_dir=case, name="run")
    log = EventLog(child.stderr)
    try:
        if not _first_pass(child, log, timeout_for(rec.bytes, rec.files), rec):
            return
        first_pass_s = time.monotonic() - started
        _window(b, rec, child, log, counted)
        if rec.daemon is not None:
            rec.daemon["first_pass_s"] = round(first_pass_s, 2)
        code, took = child.terminate(GRACE_S)
        rec.returncode = code
        if rec.daemon is not None:
            rec.daemon["stop_s"] = round(took, 2)
        if code is None:
            rec.fail(f"still running {GRACE_S:.0f}s (its grace period) after SIGTERM")
        elif code != 0:
            rec.fail(f"exit code {code} after SIGTERM: {child.tail()}")
    finally:
        child.close()
    b.check_pull(rec, dest, mat.manifest)


def _first_pass(child: Background, log: EventLog, timeout_s: float, rec: RunRecord) -> bool:
    """Poll the log until the first ``pass_done`` (with a deadline, no fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if count(log.read(), "pass_done"):
            return True
        if not child.alive():
            rec.fail(f"exited before its first pass finished: {child.tail()}")
            return False
        time.sleep(0.05)
    rec.timed_out = True
    rec.fail(f"no pass_done within {timeout_s:.0f}s: {child.tail()}")
    return False


def _window(b: Bench, rec: RunRecord, child: Background, log: EventLog,
            counted: bool) -> None:
    pid = child.pid
    log.read()  # what was logged up to now is not the window's
    cpu0 = proc_cpu(pid)
    srv0 = b.server.sample() if b.server is not None else None
    req0 = b.proxy.count() if counted and b.proxy is not None else None
    t0 = time.monotonic()
    end = t0 + b.rest_window_s
    trace: list[tuple[float, float]] = [(0.0, 0.0)]  # (s into the window, CPU s so far)
    events: list[dict[str, Any]] = []
    while cpu0 is not None and (now := time.monotonic()) < end:
        time.sleep(min(TICK_S, end - now))
        events += log.read()
        cpu = proc_cpu(pid)
        if cpu is None or not child.alive():
            break
        trace.append((round(time.monotonic() - t0, 2), round(cpu.total_s - cpu0.total_s, 3)))
    cpu1 = proc_cpu(pid)
    elapsed = time.monotonic() - t0
    memory = proc_memory_kib(pid)
    srv1 = b.server.sample() if b.server is not None else None
    req1 = b.proxy.count() if counted and b.proxy is not None else None
    events += log.read()
    if cpu0 is None or cpu1 is None or not child.alive():
        rec.fail(f"exited during the window: {child.tail()}")
        return
    _fill(rec, elapsed, cpu0, cpu1, memory, events, trace)
    if srv0 is not None and srv1 is not None:
        rec.server_cpu_s = round(srv1.cpu_s - srv0.cpu_s, 3)
        rec.server_wchar = srv1.wchar - srv0.wchar
        rec.server_rchar = srv1.rchar - srv0.rchar
    if req0 is not None and req1 is not None:
        got = req1.minus(req0)
        rec.requests, rec.methods = got.requests, got.methods
        rec.proxy_bytes_to_client = got.bytes_to_client
        rec.proxy_bytes_to_server = got.bytes_to_server


def _fill(rec: RunRecord, elapsed: float, cpu0: CpuTimes, cpu1: CpuTimes,
          memory: dict[str, int], events: list[dict[str, Any]],
          trace: list[tuple[float, float]]) -> None:
    """The window's numbers onto ``rec``: the common columns, and ``rec.daemon``."""
    cpu_s = cpu1.total_s - cpu0.total_s
    rec.wall_s = round(elapsed, 3)
    rec.user_s = round(cpu1.user_s - cpu0.user_s, 3)
    rec.sys_s = round(cpu1.sys_s - cpu0.sys_s, 3)
    rec.maxrss_kib = memory.get("VmHWM")
    errors = sorted({str(e.get("event")) for e in events
                     if e.get("level") in ("error", "critical")})
    rec.daemon = {
        "window_s": round(elapsed, 3), "cpu_s": round(cpu_s, 3),
        "cpu_pct": round(cpu_s / elapsed * 100, 3), "target_pct": TARGET_PCT,
        "passes": count(events, "pass_done"), "poll_interval_s": POLL_INTERVAL_S,
        "vmrss_kib": memory.get("VmRSS"), "vmhwm_kib": memory.get("VmHWM"),
        "warnings": sum(1 for e in events if e.get("level") == "warning"),
        "errors": errors, "cpu_trace": trace,
    }
    if errors:  # nothing changes at rest: an error means something is wrong
        rec.fail(f"logged error(s) at rest: {', '.join(errors)}")
