"""Contested takeovers of one network volume by real daemons on two hosts' mounts.

Two `weed mount`s of one SeaweedFS directory stand for two hosts sharing a network volume.
Their link() lets both hosts create one name, so a pull mirror's lease on it is arbitrated
in S3 (lease = "auto"). Each trial faults the holder (kill -9, or SIGSTOP past the TTL),
lets the standbys read its last record, freezes every standby (at least one per mount), and
thaws them all at the same instant once the holder's silence has outlasted the TTL: each
then sees enough silence on its first read and contends at once. The journals must show
exactly one holder per generation, and publication windows of different generations that
never overlap.
"""

from __future__ import annotations

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
from tests.conftest import new_bucket_name
from tests.e2e.test_leases import FAST, INTERVAL, MARGIN, TTL
from tests.fuse_mounts import SharedVolume
from tests.mirrors import SYNCD, bucket_tree, env, tree, wait_for, write_config
from tests.servers import S3Server

TRIALS = 10


@dataclass
class Node:
    name: str
    mount: str
    proc: subprocess.Popen[bytes]
    journal: Path
    log: Path
    frozen_at: list[float] = field(default_factory=list)  # monotonic times of SIGSTOP/KILL

    def events(self, kind: str) -> list[dict[str, Any]]:
        if not self.journal.exists():
            return []
        lines = self.journal.read_text().splitlines()
        return [e for e in map(json.loads, filter(None, lines)) if e["event"] == kind]

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def acquired(self) -> set[int]:
        return {e["gen"] for e in self.events("acquired")}


@dataclass
class Hosts:
    server: S3Server
    bucket: str
    volume: SharedVolume
    tmp: Path
    nodes: list[Node] = field(default_factory=list)
    written: int = 0

    def config(self, mount: str) -> Path:
        root = self.volume.a if mount == "a" else self.volume.b
        return write_config(self.tmp / f"{mount}.toml", self.server.endpoint_url, self.bucket,
                            direction="pull", root=root, top=FAST)

    def start(self, mount: str) -> Node:
        name = f"n{len(self.nodes)}{mount}"
        journal, log = self.tmp / f"{name}.jsonl", self.tmp / f"{name}.log"
        environ = env(SYNCD_LEASE__INSTANCE_ID=name, SYNCD_LEASE__JOURNAL=str(journal))
        with log.open("ab") as err:
            proc = subprocess.Popen([SYNCD, "run", "-c", str(self.config(mount))],
                                    env=environ, stdout=subprocess.DEVNULL, stderr=err)
        node = Node(name, mount, proc, journal, log)
        self.nodes.append(node)
        return node

    def add(self, count: int) -> None:
        client = self.server.client()
        for _ in range(count):
            self.written += 1
            client.put_object(Bucket=self.bucket, Key=f"models/f/{self.written:04d}.bin",
                              Body=os.urandom(2048))

    def synced(self) -> bool:
        src = bucket_tree(self.server.client(), self.bucket)
        return len(src) == self.written and tree(self.volume.a) == src

    def holder(self) -> Node:
        """The live node whose latest acquisition is the newest generation."""
        newest = max((g, n.name) for n in self.nodes for g in n.acquired())
        node = next(n for n in self.nodes if n.name == newest[1])
        assert node.alive, node.name
        return node


@pytest.fixture
def hosts(shared_volume: SharedVolume, seaweedfs_s3: S3Server,
          tmp_path: Path) -> Iterator[Hosts]:
    bucket = new_bucket_name()
    seaweedfs_s3.client().create_bucket(Bucket=bucket)
    h = Hosts(seaweedfs_s3, bucket, shared_volume, tmp_path)
    yield h
    for n in h.nodes:
        if n.alive:
            n.proc.send_signal(signal.SIGCONT)
            n.proc.kill()
            n.proc.wait(10)


def _in_standby(node: Node) -> bool:
    return node.log.exists() and b"lease_standby" in node.log.read_bytes()


def audit(nodes: list[Node]) -> None:
    """The invariant, from the journals alone (tests/journal_audit.py): one holder per
    generation, validity that ends before the next generation is acquired, and publication
    windows of different generations that never overlap. What a node had begun when it was
    frozen or killed is taken to have landed by then (its rename had returned; it could only
    write the journal line after the thaw)."""
    found = journal_audit.problems([n.journal for n in nodes],
                                   halted={n.name: n.frozen_at for n in nodes})
    assert not found, "\n".join(map(str, found))
    for n in nodes:  # and a fenced node published nothing begun after a freeze, except under
        for frozen in n.frozen_at:  # a generation it won after that freeze
            for e in n.events("publish"):
                if e["start"] > frozen:
                    assert any(a["gen"] == e["gen"] and a["at"] > frozen
                               for a in n.events("acquired")), (n.name, frozen, e)


def _trial(hosts: Hosts, fault: str, trial: int) -> None:
    holder = hosts.holder()
    for mount in ("a", "b"):  # at least one standby on each mount
        if not any(n.mount == mount and n.alive and n is not holder for n in hosts.nodes):
            hosts.start(mount)
    standbys = [n for n in hosts.nodes if n.alive and n is not holder]
    wait_for(lambda: all(map(_in_standby, standbys)), what="standbys")
    before = {n.name: n.acquired() for n in standbys}
    if fault == "kill":
        holder.proc.kill()
        holder.proc.wait(10)
        holder.frozen_at.append(time.monotonic())
    else:
        holder.proc.send_signal(signal.SIGSTOP)
        holder.frozen_at.append(time.monotonic())
    time.sleep(4 * INTERVAL)  # every standby reads the holder's last record
    for n in standbys:
        n.proc.send_signal(signal.SIGSTOP)
        n.frozen_at.append(time.monotonic())
    time.sleep(TTL + MARGIN + 0.3)
    for n in standbys:  # all at the same instant
        n.proc.send_signal(signal.SIGCONT)

    def winners() -> list[Node]:
        return [n for n in standbys if n.acquired() - before[n.name]]
    wait_for(winners, timeout=30, what=f"a takeover in trial {trial}")
    time.sleep(3 * INTERVAL)  # a second winner would have shown by now
    assert len(winners()) == 1, (trial, [n.name for n in winners()])
    hosts.add(2)
    wait_for(hosts.synced, timeout=60, what=f"sync by the winner of trial {trial}")
    if fault == "pause":  # the old holder wakes up fenced and stays as a standby
        holder.proc.send_signal(signal.SIGCONT)
        wait_for(lambda: holder.events("lost"), timeout=15,
                 what=f"the paused holder of trial {trial} to notice")


@pytest.mark.timeout(600)
@pytest.mark.parametrize("fault", ["kill", "pause"])
def test_contested_takeovers_across_two_mounts_never_make_two_holders(
        hosts: Hosts, fault: str) -> None:
    hosts.add(4)
    hosts.start("a")
    wait_for(hosts.synced, timeout=60, what="first sync")
    for trial in range(TRIALS):
        _trial(hosts, fault, trial)
    audit(hosts.nodes)
    gens = sorted(g for n in hosts.nodes for g in n.acquired())
    assert gens == list(range(gens[0], gens[0] + TRIALS + 1))  # one takeover per trial
    assert not (hosts.volume.a / ".syncd/leases").exists()  # arbitrated in S3, not by link()


def test_a_reload_naming_another_arbiter_is_rejected_and_the_lease_kept(hosts: Hosts) -> None:
    """The volume records the bucket that arbitrates it: a SIGHUP to a config naming another
    would drop a working lease for one the volume refuses, so it is rejected up front."""
    hosts.add(2)
    node = hosts.start("a")
    wait_for(hosts.synced, timeout=60, what="first sync")
    other = new_bucket_name()
    hosts.server.client().create_bucket(Bucket=other)
    cfg = hosts.tmp / "a.toml"
    cfg.write_text(cfg.read_text().replace("[lease]", f'[lease]\nbucket = "{other}"', 1))
    node.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: b"config_rejected" in node.log.read_bytes(), what="the rejection")
    rejected = next(json.loads(line) for line in node.log.read_text().splitlines()
                    if '"config_rejected"' in line)
    assert f"s3://{hosts.bucket}" in rejected["error"] and f"s3://{other}" in rejected["error"]
    hosts.add(2)
    wait_for(hosts.synced, timeout=60, what="the old config still syncing")
    assert node.alive and not node.events("released") and not node.events("lost")
    assert node.acquired() == {1}
