"""Several real `syncd run` processes on one target: one writer at a time, proven by journals.

Every instance appends its publications (generation, CLOCK_MONOTONIC start/end, shared by all
processes of the machine) and lease events to its own journal. The tests stop, kill, freeze
and thaw holders and then check the journals, the volume and the bucket:
- every publication carries the generation its writer held;
- the writing intervals of different generations never overlap, in generation order;
- nothing is published by a holder after it lost its lease.

Three set-ups: a pull mirror fenced by the volume lease on a local disk; a push mirror fenced
by the S3 lease on moto (rclone cannot hold one: see tests/lease/test_lease.py); and a pull
mirror on a network volume, two `weed mount`s of one SeaweedFS directory with the daemons
alternating between them (two hosts), whose lease is therefore arbitrated in S3.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests import journal_audit
from tests.fuse_mounts import SharedVolume
from tests.mirrors import SYNCD, bucket_tree, env, syncd, tree, wait_for, write_config
from tests.servers import S3Server

TTL, INTERVAL, DEADLINE, MARGIN = 2.0, 0.25, 1.2, 0.8
FAST = f"""
[lease]
ttl_s = {TTL}
renew_interval_s = {INTERVAL}
renew_deadline_s = {DEADLINE}
skew_margin_s = {MARGIN}
detect_dead_holders = false
[daemon]
poll_interval_s = 0.3
"""
SETUPS = ("pull-volume", "push-s3", "pull-shared")


@dataclass
class Daemon:
    name: str
    proc: subprocess.Popen[bytes]
    journal: Path
    log: Path

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        if not self.journal.exists():
            return []
        out = [json.loads(line) for line in self.journal.read_text().splitlines() if line]
        return [e for e in out if kind is None or e["event"] == kind]

    def publishes(self) -> list[dict[str, Any]]:
        return self.events("publish") + self.events("delete")


@dataclass
class Cluster:
    """A mirror, its data, and the daemons started on it."""

    setup: str
    server: S3Server
    bucket: str
    vol: Path
    cfg: Path
    tmp: Path
    daemons: list[Daemon] = field(default_factory=list)
    written: int = 0
    cfg_b: Path | None = None  # pull-shared: the same volume through the second host's mount

    @property
    def pull(self) -> bool:
        return self.setup.startswith("pull")

    def start(self, name: str, **extra_env: str) -> Daemon:
        journal, log = self.tmp / f"{name}.jsonl", self.tmp / f"{name}.log"
        environ = env(SYNCD_LEASE__INSTANCE_ID=name, SYNCD_LEASE__JOURNAL=str(journal),
                      **extra_env)
        with log.open("ab") as err:
            cfg = self.cfg_b if self.cfg_b and len(self.daemons) % 2 else self.cfg
            proc = subprocess.Popen([SYNCD, "run", "-c", str(cfg)], env=environ,
                                    stdout=subprocess.DEVNULL, stderr=err)
        daemon = Daemon(name, proc, journal, log)
        self.daemons.append(daemon)
        return daemon

    def start_standby(self, name: str, **extra_env: str) -> Daemon:
        """Start an instance and wait until it reports standby (another one holds the lease)."""
        daemon = self.start(name, **extra_env)
        wait_for(lambda: daemon.log.exists() and b"lease_standby" in daemon.log.read_bytes(),
                 what=f"{name} in standby")
        return daemon

    def add(self, count: int, size: int = 4096) -> None:
        """New data at the source: objects in the bucket (pull) or files on the volume."""
        client = self.server.client()
        for _ in range(count):
            self.written += 1
            key, data = f"f/{self.written:04d}.bin", os.urandom(size)
            if self.pull:
                client.put_object(Bucket=self.bucket, Key=f"models/{key}", Body=data)
            else:
                (self.vol / key).parent.mkdir(parents=True, exist_ok=True)
                (self.vol / key).write_bytes(data)

    def synced(self) -> bool:
        dst = tree(self.vol) if self.pull else bucket_tree(self.server.client(), self.bucket)
        src = bucket_tree(self.server.client(), self.bucket) if self.pull else tree(self.vol)
        return len(src) == self.written and src == dst

    def holder(self) -> dict[str, Any]:
        run = syncd("lease", "status", "--json", "-c", str(self.cfg))
        assert run.code == 0, run.stderr
        return dict(json.loads(run.stdout.splitlines()[0]))

    def writers(self) -> dict[int, str]:
        """Generation -> the one instance that published under it."""
        out: dict[int, set[str]] = {}
        for d in self.daemons:
            for e in d.publishes():
                out.setdefault(e["gen"], set()).add(d.name)
        assert all(len(names) == 1 for names in out.values()), out
        return {gen: names.pop() for gen, names in out.items()}


def assert_one_writer_at_a_time(cluster: Cluster, frozen: dict[str, float] | None = None
                                ) -> None:
    """The writing intervals of different generations never overlap, in generation order,
    and each generation's publications come from the one instance that acquired it.

    `frozen` maps an instance to the moment it was SIGSTOPped: a publication it had begun by
    then ends there (its rename had returned, its request was in the kernel and landed at
    once; the freeze test checks that on the volume and in the bucket), even though the
    process could only write the journal line after it was thawed."""
    spans: dict[int, tuple[float, float, str]] = {}
    for d in cluster.daemons:
        acquired = {e["gen"] for e in d.events("acquired")}
        for e in d.publishes():
            assert e["gen"] in acquired, (d.name, e)  # only under a generation it won
            end = e["end"]
            if frozen and d.name in frozen and e["start"] < frozen[d.name] < end:
                end = frozen[d.name]
            start, last, _ = spans.get(e["gen"], (e["start"], end, d.name))
            spans[e["gen"]] = (min(start, e["start"]), max(last, end), d.name)
    ordered = sorted(spans.items())
    for (g1, (_, end1, w1)), (g2, (start2, _, w2)) in itertools.pairwise(ordered):
        assert end1 <= start2, f"gen {g1} ({w1}) until {end1}, gen {g2} ({w2}) from {start2}"
    # the full audit: validity windows too, and publications that never got an outcome line
    found = journal_audit.problems([d.journal for d in cluster.daemons], halted=frozen)
    assert not found, "\n".join(map(str, found))


@pytest.fixture(params=SETUPS)
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    setup = str(request.param)
    shared: SharedVolume | None = None
    if setup == "pull-shared":  # daemons alternate between two hosts' mounts of one volume
        server: S3Server = request.getfixturevalue("seaweedfs_s3")
        shared = request.getfixturevalue("shared_volume")
        vol = shared.a
    else:
        server = request.getfixturevalue("moto_s3")
        vol = tmp_path / "vol"
        vol.mkdir()
    bucket = f"lease-{os.urandom(6).hex()}"
    server.client().create_bucket(Bucket=bucket)
    direction, lease = {"pull-volume": ("pull", "volume"), "push-s3": ("push", "s3"),
                        "pull-shared": ("pull", "auto")}[setup]

    def config(name: str, root: Path) -> Path:
        return write_config(tmp_path / name, server.endpoint_url, bucket, direction=direction,
                            root=root, lease=lease, top=FAST, extra="settle_s = 0")
    c = Cluster(setup, server, bucket, vol, config("c.toml", vol), tmp_path,
                cfg_b=config("b.toml", shared.b) if shared else None)
    yield c
    for d in c.daemons:
        if d.proc.poll() is None:
            d.proc.send_signal(signal.SIGCONT)
            d.proc.kill()
            d.proc.wait(10)


def _acquired_by(cluster: Cluster) -> Daemon:
    holder: Daemon = wait_for(lambda: next((d for d in cluster.daemons if d.events("acquired")
                                  and d.proc.poll() is None
                                  and not d.events("released") and not d.events("lost")), None),
                              what="a holder")
    return holder


@pytest.mark.parametrize("count", [2, 5])
def test_instances_started_together_one_writes_then_successors_take_turns(
    cluster: Cluster, count: int
) -> None:
    cluster.add(12)
    for i in range(count):
        cluster.start(f"i{i}")
    wait_for(cluster.synced, what="first sync")
    holder = _acquired_by(cluster)
    time.sleep(3 * INTERVAL)
    assert [d.name for d in cluster.daemons if d.publishes()] == [holder.name]
    assert [d.name for d in cluster.daemons if d.events("acquired")] == [holder.name]
    status = cluster.holder()
    assert status["state"] == "held" and status["holder"]["id"] == holder.name
    assert status["gen"] == holder.events("acquired")[0]["gen"]

    for _ in range(count - 1):  # hand the lease down the line: each successor writes too
        holder.proc.send_signal(signal.SIGTERM)
        assert holder.proc.wait(15) == 0
        cluster.add(4)
        holder = _acquired_by(cluster)
        wait_for(cluster.synced, what="sync by the successor")
    writers = cluster.writers()
    assert len(writers) == count and len(set(writers.values())) == count
    assert_one_writer_at_a_time(cluster)


def _holder_and_standby(cluster: Cluster, files: int, **extra_env: str
                        ) -> tuple[Daemon, Daemon]:
    """`a` holds the lease and has synced `files` new files; `b` waits in standby."""
    cluster.add(files)
    first = cluster.start("a", **extra_env)
    wait_for(cluster.synced, what="first sync")
    return first, cluster.start_standby("b", **extra_env)


def test_kill_9_of_the_holder_standby_takes_over_within_ttl_and_margin(
    cluster: Cluster,
) -> None:
    first, standby = _holder_and_standby(cluster, 6)
    first.proc.kill()
    killed = time.monotonic()
    first.proc.wait(10)
    cluster.add(6)
    took = wait_for(lambda: standby.events("acquired"), timeout=30, what="takeover")[0]
    assert took["reason"] == "expired"
    waited = took["at"] - killed
    assert TTL + MARGIN - 2 * INTERVAL <= waited <= TTL + MARGIN + 2 * INTERVAL + 1.0, waited
    wait_for(cluster.synced, what="sync completed by the standby")
    assert took["gen"] == first.events("acquired")[0]["gen"] + 1
    assert_one_writer_at_a_time(cluster)


def test_a_dead_holder_on_the_same_host_is_replaced_at_once(cluster: Cluster) -> None:
    first, standby = _holder_and_standby(cluster, 3, SYNCD_LEASE__DETECT_DEAD_HOLDERS="true")
    first.proc.kill()
    killed = time.monotonic()
    first.proc.wait(10)
    took = wait_for(lambda: standby.events("acquired"), timeout=30, what="takeover")[0]
    assert took["reason"] == "holder process is gone"
    assert took["at"] - killed < TTL  # no need to wait out the TTL


def test_graceful_stop_releases_and_the_standby_takes_over_well_before_the_ttl(
    cluster: Cluster,
) -> None:
    first, standby = _holder_and_standby(cluster, 4)
    first.proc.send_signal(signal.SIGTERM)
    assert first.proc.wait(15) == 0
    stopped = time.monotonic()
    assert first.events("released")
    took = wait_for(lambda: standby.events("acquired"), timeout=30, what="takeover")[0]
    assert took["reason"] == "released"
    assert took["at"] - stopped < TTL / 2
    cluster.add(3)
    wait_for(cluster.synced, what="sync by the successor")
    assert cluster.holder()["holder"]["id"] == "b"
    assert_one_writer_at_a_time(cluster)


def test_a_holder_frozen_past_the_ttl_publishes_nothing_after_it_wakes(
    cluster: Cluster,
) -> None:
    cluster.add(2)
    old = cluster.start("a")
    wait_for(cluster.synced, what="first sync")
    new = cluster.start_standby("b")
    before = len(old.publishes())
    cluster.add(300, size=16384)  # a pass long enough to freeze the holder in the middle
    wait_for(lambda: len(old.publishes()) > before, what="the holder to start publishing")
    old.proc.send_signal(signal.SIGSTOP)
    frozen, frozen_wall = time.monotonic(), time.time()
    took = wait_for(lambda: new.events("acquired"), timeout=30, what="takeover")[0]
    assert took["at"] - frozen >= TTL + MARGIN - 2 * INTERVAL
    time.sleep(1.0)  # the new holder is writing now
    old.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: old.events("lost"), timeout=15, what="the old holder to notice")
    wait_for(cluster.synced, timeout=90, what="sync by the new holder")
    time.sleep(1.0)

    assert old.proc.poll() is None  # it stays up, in standby
    assert not [e for e in old.publishes() if e["start"] > frozen]  # nothing begun after
    gen_old, gen_new = old.events("acquired")[0]["gen"], took["gen"]
    assert gen_new == gen_old + 1
    by_old = {e["key"] for e in old.events("publish")}
    by_new = {e["key"] for e in new.events("publish")}
    assert by_new  # the new holder finished the pass
    client = cluster.server.client()
    # What the old holder had in flight when frozen landed then, not after it woke up:
    inflight = {e["key"] for e in old.events("publish") if e["end"] > frozen} - by_new
    for key in inflight:
        if cluster.pull:
            landed = (cluster.vol / key).stat().st_ctime  # a rename sets the ctime
        else:
            landed = client.head_object(Bucket=cluster.bucket,
                                        Key=f"models/{key}")["LastModified"].timestamp()
        assert landed <= frozen_wall + 1.0, (key, landed - frozen_wall)  # 1 s resolution
    if cluster.pull:  # the volume's record names the generation of each file's writer
        lines = (cluster.vol / ".syncd/state/m.json").read_bytes().splitlines()[1:]
        gens = {row[0]: row[4] for row in map(json.loads, lines)}  # [key, src, dst, sum, gen]
    else:  # each object carries its writer's generation; the commit object the newest
        gens = {key: int(client.head_object(Bucket=cluster.bucket, Key=f"models/{key}")
                         ["Metadata"]["syncd-gen"]) for key in bucket_tree(client, cluster.bucket)}
        commit = client.get_object(Bucket=cluster.bucket, Key="models/.syncd/commit.json")
        assert json.loads(commit["Body"].read())["gen"] == gen_new
    assert {k for k, g in gens.items() if g == gen_old} <= by_old
    assert {k for k, g in gens.items() if g == gen_new} <= by_new | by_old  # adopted
    assert set(gens.values()) <= {gen_old, gen_new}
    assert_one_writer_at_a_time(cluster, frozen={old.name: frozen})
