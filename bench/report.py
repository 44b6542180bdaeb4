# ruff: noqa: T201
"""The results: a markdown table (stdout, optionally a file) and a JSON file of every run."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.records import REST, SECONDS, RunRecord
from bench.tools import PEERS

MB = 1_000_000
GiB = 1 << 30
SMALL_FILE_BYTES = 256 * 1024  # below this average, files/s says more than MB/s


# --- the machine --------------------------------------------------------------------------


def _first_match(path: str, key: str) -> str | None:
    try:
        with open(path) as f:
            for line in f:
                name, _, value = line.partition(":")
                if name.strip() == key:
                    return value.strip()
    except OSError:
        return None
    return None


def loadavg() -> list[float] | None:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return None


def machine_info(versions: dict[str, str], load_at_start: list[float] | None) -> dict[str, Any]:
    mem = _first_match("/proc/meminfo", "MemTotal")
    mem_gib = round(int(mem.split()[0]) / (1 << 20), 1) if mem else None
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 0
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "hostname": platform.node(),
        "nproc": usable,
        "memory_gib": mem_gib,
        "cpu_model": _first_match("/proc/cpuinfo", "model name") or platform.processor(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
        "loadavg_start": load_at_start,
        "loadavg_end": loadavg(),
    }


# --- aggregation ---------------------------------------------------------------------------


@dataclass(slots=True)
class Row:
    row: str
    direction: str
    tool: str
    kind: str
    server: str = ""
    records: list[RunRecord] = field(default_factory=list)
    ratio: float | None = None
    best_peer: str | None = None

    @property
    def ok_records(self) -> list[RunRecord]:
        return [r for r in self.records if r.status == "ok" and r.wall_s]

    @property
    def na(self) -> str | None:
        """Why the server could not serve this row, when no run could."""
        if self.records and all(r.na for r in self.records):
            return self.records[0].error or "not applicable"
        return None

    @property
    def failed(self) -> int:
        return sum(not r.ok for r in self.records)

    def values(self) -> list[float]:
        """MB/s for transfer rows, seconds for seconds rows, % of one core for the daemon at
        rest: the row's metric per ok run."""
        out = []
        for r in self.ok_records:
            assert r.wall_s is not None
            if self.kind == REST:
                out.append(float((r.daemon or {})["cpu_pct"]))
            else:
                out.append(r.wall_s if self.kind == SECONDS else r.bytes / MB / r.wall_s)
        return out

    @property
    def median(self) -> float | None:
        vals = self.values()
        return statistics.median(vals) if vals else None

    def med(self, attr: str) -> float | None:
        vals = [getattr(r, attr) for r in self.ok_records if getattr(r, attr) is not None]
        return statistics.median(vals) if vals else None

    @property
    def clean(self) -> bool:
        return bool(self.records) and self.failed == 0

    def to_json(self) -> dict[str, Any]:
        vals = self.values()
        return {
            "server": self.server, "row": self.row, "direction": self.direction,
            "tool": self.tool, "not_applicable": self.na,
            "unit": UNITS.get(self.kind, "MB/s"),
            "median": self.median, "min": min(vals) if vals else None,
            "max": max(vals) if vals else None, "runs": len(self.records),
            "failed": self.failed, "ratio_vs_best_peer": self.ratio,
            "best_peer": self.best_peer, "median_wall_s": self.med("wall_s"),
            "max_rss_mib": _max_rss(self.ok_records),
            "median_client_cpu_s": self.med("cpu_s"),
            "median_server_cpu_s": self.med("server_cpu_s"),
            "requests": _requests(self.records),
            "median_moved_bytes": self.med("moved_bytes"),
            **({"daemon": self.rest_json()} if self.kind == REST else {}),
        }

    def rest_json(self) -> dict[str, Any]:
        """The daemon-at-rest numbers of every run, and whether the target was met."""
        runs = [r.daemon for r in self.records if r.daemon]
        pct = self.values()
        target = runs[0]["target_pct"] if runs else None
        hwm = [d["vmhwm_kib"] for d in runs if d.get("vmhwm_kib")]
        rss = [d["vmrss_kib"] for d in runs if d.get("vmrss_kib")]
        return {
            "cpu_pct_median": statistics.median(pct) if pct else None,
            "cpu_pct_max": max(pct) if pct else None, "target_pct": target,
            "target_met": bool(pct) and self.clean and target is not None
                          and max(pct) < target,
            "window_s": [d["window_s"] for d in runs],
            "passes": [d["passes"] for d in runs],
            "requests": [r.requests for r in self.records if r.daemon],
            "poll_interval_s": runs[0]["poll_interval_s"] if runs else None,
            "max_rss_mib": round(max(hwm) / 1024, 1) if hwm else None,
            "rss_at_end_mib": round(max(rss) / 1024, 1) if rss else None,
            "first_pass_s": [d.get("first_pass_s") for d in runs],
            "stop_s": [d.get("stop_s") for d in runs],
            "exit_codes": [r.returncode for r in self.records if r.daemon],
        }


def _max_rss(records: Iterable[RunRecord]) -> float | None:
    vals = [r.maxrss_kib for r in records if r.maxrss_kib is not None]
    return round(max(vals) / 1024, 1) if vals else None


def _requests(records: Iterable[RunRecord]) -> int | None:
    for r in records:
        if r.requests is not None:
            return r.requests
    return None


def build_rows(order: Sequence[tuple[str, str, str]], records: Sequence[RunRecord],
               servers: Sequence[str] = ("",)) -> list[Row]:
    """One row per server and (row, direction, tool) in ``order``, with its timed runs."""
    rows = {(srv, *key): Row(key[0], key[1], key[2], "", srv)
            for srv in servers for key in order}
    for rec in records:
        key = (rec.server, rec.row, rec.direction, rec.tool)
        if rec.phase == "timed" and key in rows:
            rows[key].records.append(rec)
            rows[key].kind = rec.kind
    by_case: dict[tuple[str, str, str], list[Row]] = {}
    for row in rows.values():
        by_case.setdefault((row.server, row.row, row.direction), []).append(row)
    for group in by_case.values():
        _ratio(group)
    return list(rows.values())


def _ratio(group: list[Row]) -> None:
    """syncd / best peer: >= 1.0 means syncd wins (MB/s: syncd/peer; seconds: peer/syncd)."""
    syncd = next((r for r in group if r.tool == "syncd"), None)
    peers = [r for r in group if r.tool in PEERS and r.clean and r.median]
    if syncd is None or not peers or not syncd.clean or not syncd.median:
        return
    if syncd.kind == SECONDS:
        best = min(peers, key=lambda r: r.median or 0.0)
        syncd.ratio = (best.median or 0.0) / syncd.median
    else:
        best = max(peers, key=lambda r: r.median or 0.0)
        syncd.ratio = syncd.median / (best.median or 1.0)
    syncd.best_peer = best.tool


# --- markdown -----------------------------------------------------------------------------


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _metric(row: Row, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f} s" if row.kind == SECONDS else f"{value:.1f} MB/s"


def small_files(rec: RunRecord) -> bool:
    return rec.bytes / max(rec.files, 1) < SMALL_FILE_BYTES


def _files_per_s(row: Row) -> str:
    """For transfer rows of many small files, files/s says more than MB/s."""
    recs = row.ok_records
    if row.kind == SECONDS or not recs or not (recs[0].files >= 1000 or small_files(recs[0])):
        return ""
    rate = statistics.median(r.files / r.wall_s for r in recs if r.wall_s)
    return f" ({rate:.0f} files/s)"


UNITS = {SECONDS: "s", REST: "% of one core"}
SERVER_TITLES = {"rclone": "Server: rclone serve s3", "seaweedfs": "Server: SeaweedFS",
                 "external": "Server: external endpoint"}
HEADER = ("| workload | dir | tool | median | min-max | vs best peer | wall s | max RSS MB "
          "| client CPU s | CPU s/GiB | server CPU s | requests | moved MB | check |")
RULE = "|" + "---|" * 14


def row_line(row: Row) -> str:
    vals = row.values()
    span = (f"{_metric(row, min(vals))} - {_metric(row, max(vals))}" if len(vals) > 1
            else "-")
    if row.tool == "syncd":
        ratio = (f"**{row.ratio:.2f}x** ({row.best_peer})" if row.ratio is not None
                 else ("FAILED" if row.failed else "-"))
    else:
        ratio = ""
    cpu = row.med("cpu_s")
    per_gib = None
    if row.kind != SECONDS and cpu is not None and row.records:
        per_gib = cpu / (row.records[0].bytes / GiB)
    moved = row.med("moved_bytes")
    na = row.na
    if not row.records:
        check = "not run"
    elif na is not None:
        check = f"n/a: {na[:160]}"
    elif row.failed:
        check = f"**FAILED** {row.failed}/{len(row.records)}"
    else:
        level = (row.records[0].check or {}).get("level", "bytes")
        check = f"ok {len(row.records)}/{len(row.records)}" + (" (sizes)" if level == "sizes"
                                                                 else "")
    tool = "limit (curl)" if row.tool == "limit" else row.tool
    median = _metric(row, row.median) + _files_per_s(row) if row.median is not None else (
        "FAILED" if row.failed else "n/a" if na is not None else "-")
    reqs = _requests(row.records)
    return (f"| {row.row} | {row.direction} | {tool} | {median} | {span} | {ratio} | "
            f"{_num(row.med('wall_s'), 2)} | {_num(_max_rss(row.ok_records))} | "
            f"{_num(cpu, 2)} | {_num(per_gib, 2)} | {_num(row.med('server_cpu_s'), 2)} | "
            f"{'-' if reqs is None else reqs} | {_num(None if moved is None else moved / MB)}"
            f" | {check} |")


def markdown(meta: dict[str, Any], rows: Sequence[Row], records: Sequence[RunRecord],
             notes: Sequence[str], charts: Mapping[tuple[str, str], str] | None = None) -> str:
    """The report; ``charts`` maps (row, direction) to a chart's path relative to it."""
    m = meta["machine"]
    s = meta["settings"]
    lines = [
        f"# syncd benchmark ({s['mode']}, {s['runs']} run{'s' if s['runs'] != 1 else ''})",
        "",
        f"- date: {m['date']}",
        f"- machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB RAM, "
        f"Linux {m['kernel']}, Python {m['python']}; load average "
        f"{_load(m['loadavg_start'])} at start, {_load(m['loadavg_end'])} at the end",
        f"- endpoint: {s['endpoint']}",
    ]
    for name, version in m["versions"].items():
        lines.append(f"- {name}: {version}")
    lines.append(f"- data: {s['data']}")
    main = [r for r in rows if r.kind != REST]
    servers = list(dict.fromkeys(r.server for r in main))
    for server in servers:  # W7 alone has only its own table
        if len(servers) > 1 or server:
            lines += ["", f"## {SERVER_TITLES.get(server, server)}"]
        lines += ["", HEADER, RULE, *(row_line(r) for r in main if r.server == server)]
    if main:
        lines += ["", "Columns: median/min-max are MB/s (workload bytes / wall time) or seconds "
                  "(no-op and W5 re-syncs); *vs best peer* is syncd over the best clean s5cmd/"
                  "rclone/boto3-crt variant (>= 1.0: syncd wins); *n/a*: the server cannot "
                  "serve that row (the reason follows); *max RSS* of the client process; *CPU* "
                  "is user+system of the client; *server CPU* and *moved MB* (bytes the server "
                  "wrote: sent on a pull, stored on a push) come from the server's /proc "
                  "counters; *requests* were counted by a proxy on a repeat of the no-op "
                  "(first run)."]
    summaries = [r for r in records if r.tool == "syncd" and r.phase == "timed"
                 and r.workload == "W5" and r.syncd_summary]
    if summaries:
        lines += ["", "syncd on W5 (its own summary line):"]
        for r in summaries:
            sm = r.syncd_summary or {}
            lines.append(f"- run {r.run + 1}: {int(sm.get('files', 0))} files, "
                         f"{sm.get('mb', 0):.1f} MB copied")
    lines += rest_table([r for r in rows if r.kind == REST])
    if charts:
        lines += ["", "## Charts", "",
                  "Per workload and direction: each tool's median (bar) and min-max over runs "
                  "(whiskers); one colour per server.", ""]
        lines += [f"![{row} {direction}]({path})" for (row, direction), path in charts.items()]
    failed = [r for r in records if not r.ok]
    if failed:
        lines += ["", "## Failures", ""]
        for r in failed[:40]:
            lines.append(f"- run {r.run + 1} {r.row} {r.direction} {r.tool} ({r.phase}): "
                         f"{(r.error or '')[:400]}")
        if len(failed) > 40:
            lines.append(f"- ... and {len(failed) - 40} more (see the JSON)")
    if notes:
        lines += ["", "## Notes", ""]
        lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


REST_HEADER = ("| workload | tool | CPU % of one core | target | window s | passes | requests "
               "| max RSS MB | RSS MB at end | server CPU s | stop s | exit | check |")


def rest_table(rows: Sequence[Row]) -> list[str]:
    """W7 in a table of its own: its columns are not the transfer table's."""
    if not rows:
        return []
    lines = ["", "## Daemon at rest", "",
             "`syncd run` (default `[daemon]` settings: a pass every 30 s +-10 %) over objects "
             "already in sync, measured from the end of its first pass. Only syncd runs it: "
             "s5cmd and rclone have no daemon mode.", "", REST_HEADER, "|" + "---|" * 13]
    several = len({r.server for r in rows}) > 1
    for row in rows:
        j = row.rest_json()
        name = f"{row.row} ({row.server})" if several else row.row
        pct = row.values()
        if pct:
            cpu = f"{statistics.median(pct):.2f} %" + (
                f" ({min(pct):.2f}-{max(pct):.2f})" if len(pct) > 1 else "")
            target = f"< {j['target_pct']:g} %: " + ("**met**" if j["target_met"]
                                                     else "**not met**")
        else:
            cpu, target = ("FAILED" if row.failed else "-"), "-"
        check = ("not run" if not row.records else
                 f"**FAILED** {row.failed}/{len(row.records)}" if row.failed
                 else f"ok {len(row.records)}/{len(row.records)}")
        lines.append(
            f"| {name} | {row.tool} | {cpu} | {target} | {_join(j['window_s'], 1)} | "
            f"{_join(j['passes'])} | {_join(j['requests'])} | {_num(j['max_rss_mib'])} | "
            f"{_num(j['rss_at_end_mib'])} | {_num(row.med('server_cpu_s'), 2)} | "
            f"{_join(j['stop_s'], 2)} | {_join(j['exit_codes'])} | {check} |")
    lines += ["", "CPU: utime+stime of the daemon (/proc/<pid>/stat) over the window, as % of "
              "one core; *passes*: its `pass_done` log lines in the window; *requests*: what "
              "it sent in the window (counting proxy); *max RSS*: VmHWM, its peak since it "
              "started (first pass included); *RSS at end*: VmRSS at the window's end; "
              "*stop s*: SIGTERM to exit (it must exit 0 within its 30 s grace period); "
              "*check*: the volume is still complete and byte-identical afterwards."]
    return lines


def _join(values: Sequence[Any], digits: int | None = None) -> str:
    """One value per run, "/"-separated; "-" for none."""
    if not values or all(v is None for v in values):
        return "-"
    return "/".join("-" if v is None else (f"{v:.{digits}f}" if digits is not None else str(v))
                    for v in values)


def _load(values: list[float] | None) -> str:
    return "/".join(f"{v:.2f}" for v in values) if values else "?"


def emit(text: str, path: Path | None) -> None:
    print(text, end="")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def write_json(path: Path, meta: dict[str, Any], rows: Sequence[Row],
               records: Sequence[RunRecord], notes: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "version": 1,
        **meta,
        "rows": [r.to_json() for r in rows],
        "daemon_at_rest": [r.to_json() for r in rows if r.kind == REST],
        "runs": [r.to_json() for r in records],
        "failures": sum(not r.ok for r in records),
        "notes": list(notes),
    }
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(body, indent=1, default=str))
    os.replace(tmp, path)
