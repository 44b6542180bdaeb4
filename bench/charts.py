"""One PNG per workload and direction: a bar per tool (the median), whiskers from min to max,
one colour per server, so a reader sees the spread a table's median hides.

Transfer rows are drawn in MB/s, or files/s when the files average under 256 KiB (there the
per-object cost is what differs); no-op and re-sync rows in seconds. matplotlib runs with
the Agg backend: no display, same pixels everywhere.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.records import REST, SECONDS
from bench.report import Row, small_files

COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52")


@dataclass(frozen=True, slots=True)
class Bar:
    tool: str
    server: str
    median: float
    low: float
    high: float


def metric(row: Row) -> tuple[str, list[float]]:
    """The unit a row is charted in and its value per clean run."""
    recs = row.ok_records
    if row.kind == SECONDS:
        return "seconds (lower is better)", row.values()
    if recs and small_files(recs[0]):
        return "files/s", [r.files / r.wall_s for r in recs if r.wall_s]
    return "MB/s", row.values()


def bars(rows: Sequence[Row]) -> tuple[str, list[Bar]]:
    """The bars of one workload and direction: rows with a clean run, in table order."""
    unit, out = "MB/s", []
    for row in rows:
        unit_here, values = metric(row)
        if values:
            unit = unit_here
            out.append(Bar(row.tool, row.server, statistics.median(values), min(values),
                           max(values)))
    return unit, out


def figure(title: str, unit: str, data: Sequence[Bar]) -> Any:
    """A matplotlib Figure: bars grouped by tool, one per server, with min-max whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    tools = list(dict.fromkeys(b.tool for b in data))
    servers = list(dict.fromkeys(b.server for b in data))
    width = 0.8 / len(servers)
    fig = Figure(figsize=(max(5.0, 1.1 * len(tools) + 2), 3.6), dpi=100)
    ax = fig.add_subplot()
    for i, server in enumerate(servers):
        mine = [b for b in data if b.server == server]
        xs = [tools.index(b.tool) + (i - (len(servers) - 1) / 2) * width for b in mine]
        ax.bar(xs, [b.median for b in mine], width * 0.9, label=server or None,
               color=COLOURS[i % len(COLOURS)],
               yerr=[[b.median - b.low for b in mine], [b.high - b.median for b in mine]],
               capsize=3, ecolor="#333333")
    ax.set_xticks(range(len(tools)), tools, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(unit)
    ax.set_title(title, fontsize=10)
    if len(servers) > 1:
        ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def slug(row: str, direction: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", f"{row}-{direction}".lower()).strip("-")


def write(rows: Sequence[Row], out_dir: Path) -> dict[tuple[str, str], Path]:
    """A PNG per (row, direction) that has any clean run; returns where each went."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        if row.kind != REST:
            groups.setdefault((row.row, row.direction), []).append(row)
    written: dict[tuple[str, str], Path] = {}
    for (name, direction), group in groups.items():
        unit, data = bars(group)
        if not data:
            continue
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{slug(name, direction)}.png"
        figure(f"{name} {direction}", unit, data).savefig(path)
        written[(name, direction)] = path
    return written
