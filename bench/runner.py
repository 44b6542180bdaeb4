"""The bench context: endpoint, data, tools, and the measured invocation of one tool.

``Bench.timed()`` runs one tool invocation and fills a :class:`RunRecord`: wall time and
rusage of the client, and the server's CPU seconds and socket/file byte counters as deltas
of ``/proc/<server pid>/stat`` and ``/proc/<server pid>/io`` around the run (our own server
only). ``Bench.count()`` re-runs a no-op through the counting proxy to count its requests:
the timed run itself always talks to the server directly, so the proxy never slows it.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import uploads, verify
from bench.measure import ChildResult, run_child
from bench.proxy import CountingProxy
from bench.records import RunRecord
from bench.server import BenchServer, iter_objects, s3_client
from bench.tools import Invocation, S3Loc, Target, Tool, parse_syncd_summary
from bench.workloads import Manifest, Materialized

MB = 1_000_000


def timeout_for(nbytes: int, files: int) -> float:
    """Generous but finite: 5 min + 0.5 s/MB + 50 ms per file."""
    return 300.0 + nbytes / (2 * MB) + files * 0.05


def say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


@dataclass(eq=False)
class Bench:
    workdir: Path
    session: str
    bucket: str
    target: Target  # direct to the server
    client: Any  # boto3, direct
    tools: list[Tool]
    mats: dict[str, Materialized]
    runs: int
    server: BenchServer | None = None
    proxy: CountingProxy | None = None
    count_target: Target | None = None  # through the proxy
    rest_window_s: float = 60.0  # W7: how long the daemon at rest is measured
    records: list[RunRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    later: list[Path] = field(default_factory=list)  # removed at the end: see remove_later
    uploaded: dict[tuple[str, str], S3Loc | str] = field(default_factory=dict)  # str: refused

    # --- places ------------------------------------------------------------------------

    @property
    def runs_dir(self) -> Path:
        return self.workdir / "runs" / self.session

    def remove_later(self, path: Path) -> None:
        """Remove a destination of many files only when the session ends. On ext4 the
        inodes of files deleted in the last minutes are skipped when new ones are
        allocated, so deleting 10,000 files right before the next tool creates its own would
        slow that tool's file creation, and only that tool's."""
        self.later.append(path)

    def remove_deferred(self) -> None:
        for path in self.later:
            shutil.rmtree(path, ignore_errors=True)
        self.later.clear()

    def case_dir(self, run: int, slug: str, tool: str) -> Path:
        path = self.runs_dir / f"r{run + 1}" / slug / tool
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def src_loc(self, role: str) -> S3Loc:
        return S3Loc(self.bucket, f"src/{self.mats[role].dataset.key}")

    @property
    def laid_out(self) -> bool:
        """The sources were laid on the server's disk before it started (rclone)."""
        return self.server is not None and self.server.backing_root is not None

    def upload_loc(self, style: str, role: str) -> S3Loc:
        """The role's files uploaded once the way ``style`` uploads (bench/uploads.py), with
        a note of what the server then vouches for. Raises NotApplicable when it refuses."""
        got = self.uploaded.get((style, role))
        if isinstance(got, str):
            raise uploads.NotApplicable(got)
        mat = self.mats[role]
        loc = S3Loc(self.bucket, f"up-{style}/{mat.dataset.key}")
        if got is not None:
            return loc
        have = sum(1 for _ in iter_objects(self.client, loc.bucket, loc.slash))
        if have != mat.dataset.count:  # an external endpoint may keep them across sessions
            upload = uploads.uploader(style, self.target.endpoint_url,
                                      functools.partial(s3_client, creds=self.target.creds))
            try:
                uploads.seed(upload, loc.bucket, loc.slash, mat)
            except uploads.NotApplicable as exc:
                self.uploaded[(style, role)] = str(exc)
                self.drop_prefix(loc)
                raise
        largest = max(mat.dataset.files, key=lambda f: f.size).rel
        where = self.server.name if self.server is not None else "the endpoint"
        self.notes.append(f"{where}, {style} uploads of {mat.dataset.name}: it vouches for "
                          f"{uploads.vouches(self.client, loc.bucket, loc.slash + largest)} "
                          f"(HEAD with ChecksumMode of {largest})")
        self.uploaded[(style, role)] = loc
        return loc

    def source_loc(self, workload: str, role: str, upload: str) -> S3Loc:
        if workload == "W1c":
            return self.upload_loc("crc64-put", role)
        return self.src_loc(role) if upload == "plain" else self.upload_loc(upload, role)

    def w5_loc(self, run: int) -> S3Loc:
        return S3Loc(self.bucket, f"w5/{self.session}/r{run + 1}")

    def push_loc(self, run: int, slug: str, tool: str) -> S3Loc:
        return S3Loc(self.bucket, f"push/{self.session}/r{run + 1}/{slug}/{tool}")

    def backing_file(self, key: str) -> Path | None:
        root = self.server.backing_root if self.server is not None else None
        return None if root is None else root / self.bucket / key

    # --- running a tool -----------------------------------------------------------------

    def timed(self, record: RunRecord, inv: Invocation, log_dir: Path, name: str) -> ChildResult:
        """Run ``inv``, measured, and fill ``record`` (status FAILED on a non-zero exit)."""
        record.argv = inv.argv
        record.log_dir = str(log_dir)
        # untimed: write back what earlier runs left dirty in the page cache, so that no
        # run pays for another tool's writeback (s5cmd and rclone exit with theirs pending)
        os.sync()
        before = self.server.sample() if self.server is not None else None
        res = run_child(inv.argv, env=inv.env, cwd=log_dir, log_dir=log_dir, name=name,
                        timeout_s=timeout_for(record.bytes, record.files))
        after = self.server.sample() if self.server is not None else None
        record.wall_s, record.user_s, record.sys_s = res.wall_s, res.user_s, res.sys_s
        record.maxrss_kib, record.returncode = res.maxrss_kib, res.returncode
        record.timed_out = res.timed_out
        record.rusage_exact = res.exact
        if before is not None and after is not None:
            record.server_cpu_s = round(after.cpu_s - before.cpu_s, 3)
            record.server_wchar = after.wchar - before.wchar
            record.server_rchar = after.rchar - before.rchar
        if record.tool == "syncd":
            record.syncd_summary = parse_syncd_summary(_read(res.stdout))
        if inv.na_exit is not None and res.returncode == inv.na_exit:
            record.not_applicable(res.tail())
        elif res.timed_out:
            record.fail(f"timed out after {timeout_for(record.bytes, record.files):.0f}s")
        elif res.returncode != 0:
            record.fail(f"exit code {res.returncode}: {res.tail()}")
        self.records.append(record)
        state = record.status
        say(f"  r{record.run + 1} {record.row:<16} {record.direction:<4} {record.tool:<13}"
            f" {record.phase:<6} {res.wall_s:8.2f}s  {state}")
        return res

    def count(self, record: RunRecord, make: Callable[[Target], Invocation],
              log_dir: Path) -> None:
        """Re-run a no-op through the counting proxy; its request count goes on ``record``."""
        if self.proxy is None or self.count_target is None:
            return
        inv = make(self.count_target)
        before = self.proxy.count()
        res = run_child(inv.argv, env=inv.env, cwd=log_dir, log_dir=log_dir, name="count",
                        timeout_s=timeout_for(record.bytes, record.files))
        got = self.proxy.count().minus(before)
        record.count_wall_s = res.wall_s
        record.requests = got.requests
        record.methods = got.methods
        record.proxy_bytes_to_client = got.bytes_to_client
        record.proxy_bytes_to_server = got.bytes_to_server
        if res.returncode != 0:
            record.fail(f"counting re-run failed (exit {res.returncode}): {res.tail()}")
        if got.parse_errors:
            self.notes.append(f"{record.row} {record.direction} {record.tool}: the counting "
                              f"proxy could not parse {got.parse_errors} connection(s)")

    # --- checks -------------------------------------------------------------------------

    def check_pull(self, record: RunRecord, dest: Path, expected: Manifest) -> None:
        chk = verify.check_tree(dest, expected)
        self._record_check(record, chk)

    def check_push(self, record: RunRecord, loc: S3Loc, expected: Manifest) -> None:
        chk = verify.check_bucket(self.client, loc.bucket, loc.slash, expected,
                                  backing_file=self.backing_file)
        self._record_check(record, chk)

    def _record_check(self, record: RunRecord, chk: verify.Check) -> None:
        if record.check is not None and not record.check["ok"]:
            return  # a record can be checked twice (no-op, then its counting repeat)
        record.check = chk.to_json()
        if not chk.ok:
            record.fail(f"check: {chk.problem_count} problem(s), first: {chk.problems[0]}")

    # --- bucket housekeeping --------------------------------------------------------------

    def drop_prefix(self, loc: S3Loc) -> None:
        from bench.server import delete_prefix

        try:
            delete_prefix(self.client, loc.bucket, loc.slash)
            if self.server is not None:
                self.server.housekeep()
        except Exception as exc:  # housekeeping must not fail a run
            self.notes.append(f"could not empty s3://{loc.bucket}/{loc.slash}: {exc}")

    def warm(self, loc: S3Loc) -> None:
        """List a source prefix once, untimed: rclone serve s3 computes (and caches) each
        object's MD5 ETag on first listing, a cost no tool should be charged for."""
        for _ in iter_objects(self.client, loc.bucket, loc.slash):
            pass

    def presign(self, loc: S3Loc) -> Callable[[str], str]:
        def url(rel: str) -> str:
            return str(self.client.generate_presigned_url(
                "get_object", Params={"Bucket": loc.bucket, "Key": loc.slash + rel},
                ExpiresIn=6 * 3600))

        return url


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


# --- seeding -----------------------------------------------------------------------------


def seed_remote(client: Any, loc: S3Loc, mat: Materialized, *, force: bool = False) -> int:
    """Upload the data set under ``loc`` (objects already there with the right size are kept
    unless ``force``). Returns the number of objects uploaded."""
    from boto3.s3.transfer import TransferConfig

    have: Mapping[str, int] = {} if force else {
        o["Key"]: int(o["Size"]) for o in iter_objects(client, loc.bucket, loc.slash)}
    todo = [(rel, path) for rel, path in mat.paths()
            if have.get(loc.slash + rel) != mat.manifest[rel][0]]
    config = TransferConfig(multipart_threshold=64 * 1024 * 1024,
                            multipart_chunksize=64 * 1024 * 1024, max_concurrency=8)

    def put(item: tuple[str, Path]) -> None:
        rel, path = item
        client.upload_file(str(path), loc.bucket, loc.slash + rel, Config=config)

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(put, todo))
    return len(todo)


def wait_past_second(since: float) -> None:
    """Sleep into the next whole second after ``since`` (time.time()): S3's LastModified has
    one-second resolution, and an mtime-based tool must see the replaced object as newer
    than the files it wrote before ``since``."""
    left = math.floor(since) + 1.05 - time.time()
    if left > 0:
        time.sleep(left)
