"""The workloads as scenarios: what is prepared, what is timed, what is checked.

- copy (W1-W3, W8): each tool into a fresh destination (pull: an empty directory; push: a new
  bucket prefix), timed, then checked byte for byte. ``limit`` (curl) joins W1/W3 pulls.
  W1/W3 pulls also run from copies uploaded as boto3 and AWS CLI v2 upload (bench/uploads.py),
  rows "W1 boto3", "W1 cli-v2"; a server refusing an upload style gets n/a rows.
- no-op (W4): an untimed first sync, then a timed second sync that has nothing to do, then
  (first run only) the same no-op once more through the counting proxy to count requests.
- first + no-op (W6): like no-op, but the first sync is timed too (its own row).
- changed shard (W5): every tool first syncs W3 untimed into its own directory; then one
  shard is replaced in the source; then each tool's re-sync is timed: only that shard
  should move (the server's byte counters and syncd's summary line say what did).
- at rest (W7, syncd only): ``syncd run`` over the synced W4 set, measured over a window
  (bench/rest.py).

Destinations are removed once checked (pushed prefixes deleted); logs stay.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import rest
from bench.records import SECONDS, TRANSFER, RunRecord
from bench.runner import Bench, seed_remote, wait_past_second
from bench.tools import (
    Invocation,
    S3Loc,
    Target,
    Tool,
    check_limit_output,
    limit_invocation,
    plan_ranges,
)
from bench.uploads import NotApplicable
from bench.workloads import Manifest, Materialized, link_tree

LIMIT_WORKLOADS = frozenset({"W1", "W3"})
MANY_FILES = 1000  # pull destinations with more files are removed when the session ends


@dataclass(frozen=True, slots=True)
class Scenario:
    workload: str  # W1..W7
    label: str  # row name stem: "W1", "W6-10k"
    role: str  # data set role: w1 w2 w3 w4 w6a w6b
    direction: str  # pull | push
    kind: str  # copy | noop | first-noop | changed | rest
    upload: str = "plain"  # how the pull source was uploaded: bench/uploads.py STYLES

    @property
    def slug(self) -> str:
        return f"{self.label}-{self.direction}".lower().replace(" ", "-")

    @property
    def has_limit(self) -> bool:
        return (self.direction == "pull" and self.workload in LIMIT_WORKLOADS
                and self.upload == "plain")

    def rows(self, tools: list[Tool]) -> list[tuple[str, str]]:
        """(row, tool) pairs this scenario reports, in table order."""
        names = [t.name for t in tools if t.syncs]
        if self.kind == "copy":
            names += [t.name for t in tools if t.family == "boto3-crt"]
            if self.has_limit:
                names += [t.name for t in tools if t.family == "limit"]
            return [(self.label, n) for n in names]
        if self.kind == "noop":
            return [(f"{self.label} no-op", n) for n in names]
        if self.kind == "rest":  # s5cmd and rclone have no daemon mode
            return [(rest.row_name(self.label), n) for n in names if n == "syncd"]
        if self.kind == "first-noop":
            return ([(f"{self.label} first", n) for n in names]
                    + [(f"{self.label} no-op", n) for n in names])
        return [(f"{self.label} 1 shard changed", n) for n in names]


def run_scenario(b: Bench, sc: Scenario, run: int) -> None:
    {"copy": _copy, "noop": _noop, "first-noop": _noop, "changed": _changed,
     "rest": rest.at_rest}[sc.kind](b, sc, run)


def _record(sc: Scenario, run: int, row: str, tool: Tool, phase: str, kind: str,
            mat: Materialized) -> RunRecord:
    return RunRecord(run=run, row=row, workload=sc.workload, direction=sc.direction,
                     tool=tool.name, phase=phase, kind=kind, bytes=mat.dataset.total_bytes,
                     files=mat.dataset.count)


def _sync_tools(b: Bench) -> list[Tool]:
    return [t for t in b.tools if t.syncs and t.available]


# --- one side of a transfer: a fresh destination, the command, the check ------------------


@dataclass(slots=True)
class Side:
    """One tool's destination for one scenario in one run."""

    b: Bench
    sc: Scenario
    tool: Tool
    run: int
    mat: Materialized
    src: S3Loc  # pull source
    dir: Path  # the case directory (logs, configs)
    dest: Path  # pull destination directory / push source directory
    loc: S3Loc  # push destination

    @classmethod
    def fresh(cls, b: Bench, sc: Scenario, tool: Tool, run: int, src: S3Loc | None = None,
              mat: Materialized | None = None) -> Side:
        mat = mat if mat is not None else b.mats[sc.role]
        case = b.case_dir(run, sc.slug, tool.name)
        side = cls(b, sc, tool, run, mat, src if src is not None else b.src_loc(sc.role),
                   case, case / ("dest" if sc.direction == "pull" else "src"),
                   b.push_loc(run, sc.slug, tool.name))
        if sc.direction == "pull":
            side.dest.mkdir()  # syncd wants the volume root to exist
        else:
            link_tree(mat, side.dest)  # a private copy: syncd keeps .syncd/ in it
        return side

    def invocation(self, target: Target, *, resync: bool, tag: str) -> Invocation:
        if self.sc.direction == "pull":
            return self.tool.pull(target, self.src, self.dest, resync=resync,
                                  conf_dir=self.dir, tag=tag)
        return self.tool.push(target, self.dest, self.loc, resync=resync, conf_dir=self.dir,
                              tag=tag)

    def run_timed(self, record: RunRecord, *, resync: bool, expected: Manifest) -> None:
        inv = self.invocation(self.b.target, resync=resync, tag=record.phase)
        self.b.timed(record, inv, self.dir, record.phase)
        if not record.na:
            self.check(record, expected)

    def check(self, record: RunRecord, expected: Manifest) -> None:
        if self.sc.direction == "pull":
            self.b.check_pull(record, self.dest, expected)
        else:
            self.b.check_push(record, self.loc, expected)

    def count(self, record: RunRecord, expected: Manifest) -> None:
        def make(target: Target) -> Invocation:
            return self.invocation(target, resync=True, tag="count")

        self.b.count(record, make, self.dir)
        self.check(record, expected)

    def cleanup(self) -> None:
        if self.sc.direction == "pull" and self.mat.dataset.count > MANY_FILES:
            self.b.remove_later(self.dest)
        else:
            shutil.rmtree(self.dest, ignore_errors=True)
        if self.sc.direction == "push":
            self.b.drop_prefix(self.loc)


# --- scenarios -----------------------------------------------------------------------------


def _copy(b: Bench, sc: Scenario, run: int) -> None:
    mat = b.mats[sc.role]
    tools = [t for t in b.tools if t.available and (t.family != "limit" or sc.has_limit)]
    try:
        src = b.source_loc(sc.workload, sc.role, sc.upload)
    except NotApplicable as exc:
        for tool in tools:
            rec = _record(sc, run, sc.label, tool, "timed", TRANSFER, mat)
            rec.not_applicable(str(exc))
            b.records.append(rec)
        return
    if sc.direction == "pull":
        b.warm(src)
    for tool in tools:
        if tool.family == "limit":
            _limit(b, sc, run, tool, mat)
            continue
        side = Side.fresh(b, sc, tool, run, src=src)
        rec = _record(sc, run, sc.label, tool, "timed", TRANSFER, mat)
        try:
            side.run_timed(rec, resync=False, expected=mat.manifest)
        finally:
            side.cleanup()


def _limit(b: Bench, sc: Scenario, run: int, tool: Tool, mat: Materialized) -> None:
    loc = b.src_loc(sc.role)
    gets = plan_ranges({rel: size for rel, (size, _) in mat.manifest.items()})
    case = b.case_dir(run, sc.slug, tool.name)
    inv = limit_invocation(tool, gets, b.presign(loc), case, "timed")
    rec = _record(sc, run, sc.label, tool, "timed", TRANSFER, mat)
    res = b.timed(rec, inv, case, "timed")
    problems = check_limit_output(res.stdout.read_text(errors="replace"), gets)
    rec.check = {"ok": not problems, "level": "sizes", "files": mat.dataset.count,
                 "bytes": mat.dataset.total_bytes, "problems": problems[:20],
                 "problem_count": len(problems)}
    if problems:
        rec.fail(f"check: {len(problems)} problem(s), first: {problems[0]}")


def _noop(b: Bench, sc: Scenario, run: int) -> None:
    """W4 (untimed first sync) and W6 (timed first sync): then a timed no-op re-sync."""
    mat = b.mats[sc.role]
    first_timed = sc.kind == "first-noop"
    if sc.direction == "pull":
        b.warm(b.src_loc(sc.role))
    for tool in _sync_tools(b):
        side = Side.fresh(b, sc, tool, run)
        try:
            first = _record(sc, run, f"{sc.label} first", tool,
                            "timed" if first_timed else "prime", TRANSFER, mat)
            first_phase = "first" if first_timed else "prime"
            inv = side.invocation(b.target, resync=False, tag=first_phase)
            b.timed(first, inv, side.dir, first_phase)
            side.check(first, mat.manifest)
            noop = _record(sc, run, f"{sc.label} no-op", tool, "timed", SECONDS, mat)
            if not first.ok:
                noop.fail("not run: the first sync failed")
                b.records.append(noop)
                continue
            inv = side.invocation(b.target, resync=True, tag="noop")
            b.timed(noop, inv, side.dir, "noop")
            side.check(noop, mat.manifest)
            if run == 0:
                side.count(noop, mat.manifest)
        finally:
            side.cleanup()


def _changed(b: Bench, sc: Scenario, run: int) -> None:
    """W5: synced W3, then one shard replaced in the source; time each tool's re-sync."""
    w3, shard = b.mats["w3"], b.mats["w5shard"]
    loc = b.w5_loc(run)
    if not b.laid_out:  # else the server had it on its disk before it started
        seed_remote(b.client, loc, w3, force=True)
    b.warm(loc)
    expected = dict(w3.manifest)
    expected.update(shard.manifest)
    sides: list[tuple[Side, RunRecord]] = []
    try:
        for tool in _sync_tools(b):
            side = Side.fresh(b, sc, tool, run, src=loc, mat=w3)
            prime = _record(sc, run, f"{sc.label} 1 shard changed", tool, "prime", TRANSFER,
                            w3)
            b.timed(prime, side.invocation(b.target, resync=False, tag="prime"), side.dir,
                    "prime")
            side.check(prime, w3.manifest)
            sides.append((side, prime))
        primed_at = time.time()
        wait_past_second(primed_at)
        _replace_shard(b, loc, shard)
        b.warm(loc)
        for side, prime in sides:
            rec = _record(sc, run, f"{sc.label} 1 shard changed", side.tool, "timed",
                          SECONDS, w3)
            if not prime.ok:
                rec.fail("not run: the first sync of W3 failed")
                b.records.append(rec)
                continue
            side.run_timed(rec, resync=True, expected=expected)
    finally:
        for side, _ in sides:
            side.cleanup()
        b.drop_prefix(loc)


def _replace_shard(b: Bench, loc: S3Loc, shard: Materialized) -> None:
    from boto3.s3.transfer import TransferConfig

    config = TransferConfig(multipart_threshold=64 * 1024 * 1024,
                            multipart_chunksize=64 * 1024 * 1024)
    for rel, path in shard.paths():
        b.client.upload_file(str(path), loc.bucket, loc.slash + rel, Config=config)


def plan(workloads: list[str], directions: list[str], labels: Callable[[str], str], *,
         small_push: bool, uploads: tuple[str, ...] = ("plain",)) -> list[Scenario]:
    """The scenarios of the selected workloads and directions, in run order.

    W1/W3 pulls run once per upload style in ``uploads`` ("plain": today's rows); their
    pushes once. W8 is push only; W5 and W7 are pull only. W4 and W6 push only with
    ``small_push`` (the default in full mode): pushing thousands of tiny objects with five
    tools is what would stretch --quick past its time budget.
    """
    out: list[Scenario] = []
    for wl in workloads:
        for direction in directions:
            if wl in ("W1", "W3") and direction == "pull":
                out += [Scenario(wl, wl if up == "plain" else f"{wl} {up}", wl.lower(),
                                 direction, "copy", up) for up in uploads]
            elif wl in ("W1", "W2", "W3"):
                out.append(Scenario(wl, wl, wl.lower(), direction, "copy"))
            elif wl == "W8" and direction == "push":
                out.append(Scenario(wl, wl, "w8", direction, "copy"))
            elif wl == "W1c" and direction == "pull":
                out.append(Scenario(wl, wl, "w1", direction, "copy"))
            elif wl == "W4" and (direction == "pull" or small_push):
                out.append(Scenario(wl, wl, "w4", direction, "noop"))
            elif wl == "W5" and direction == "pull":
                out.append(Scenario(wl, wl, "w3", direction, "changed"))
            elif wl == "W7" and direction == "pull":
                out.append(Scenario(wl, wl, "w4", direction, "rest"))
            elif wl == "W6" and (direction == "pull" or small_push):
                for role in ("w6a", "w6b"):
                    out.append(Scenario(wl, labels(role), role, direction, "first-noop"))
    return out
