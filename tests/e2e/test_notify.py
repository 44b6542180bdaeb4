"""`syncd run` speaks systemd's notify protocol (Type=notify) to a real NOTIFY_SOCKET.

The test binds the datagram socket systemd would, starts the daemon with NOTIFY_SOCKET and
WATCHDOG_USEC set, and reads what arrives: READY=1 (with STATUS=) once every lease is held or
standing by, STATUS= updates (a standby taking over), WATCHDOG=1 often enough for
WatchdogSec, RELOADING=1 then READY=1 around SIGHUP, STOPPING=1 on SIGTERM and exit 0.
systemd/syncd.service relies on each of these.
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.daemons import FAST
from tests.mirrors import SYNCD, env, syncd, wait_for, write_config
from tests.notify import Message, NotifySocket
from tests.servers import S3Server, find_free_port

WATCHDOG_USEC = 2_000_000
WATCHDOG_S = WATCHDOG_USEC / 1e6


def is_ready(m: Message) -> bool:
    return m.has("READY")


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    manager: NotifySocket
    log: Path
    config: Path

    def events(self, name: str) -> list[dict[str, Any]]:
        lines = self.log.read_text(errors="replace").splitlines()
        return [e for e in (json.loads(ln) for ln in lines if ln.startswith("{"))
                if e.get("event") == name]

    def wait_ready(self, timeout: float = 60) -> Message:
        return self.manager.wait_for(is_ready, timeout, f"READY=1 ({self.log.read_text()})")

    def lease_rows(self) -> list[dict[str, Any]]:
        out = syncd("lease", "status", "--json", "-c", str(self.config))
        assert out.code == 0, out.stderr
        return [json.loads(ln) for ln in out.stdout.splitlines()]


@dataclass
class Setup:
    server: S3Server
    bucket: str
    tmp: Path
    short_dir: Path
    volume: Path
    daemons: list[Daemon] = field(default_factory=list)

    def config(self, name: str, *, poll_interval_s: float = 0.3) -> Path:
        http = f'[http]\nlisten = "127.0.0.1:{find_free_port()}"'
        timing = FAST.replace("poll_interval_s = 0.3", f"poll_interval_s = {poll_interval_s}")
        return write_config(self.tmp / f"{name}.toml", self.server.endpoint_url, self.bucket,
                            direction="pull", root=self.volume, lease="volume",
                            top=f"{timing}\n{http}")

    def start(self, name: str, *, abstract: bool = False) -> Daemon:
        address = (f"@syncd-e2e-{uuid.uuid4().hex}" if abstract
                   else str(self.short_dir / f"{name}.sock"))
        manager = NotifySocket(address)
        cfg = self.config(name)
        environ = env(NOTIFY_SOCKET=manager.env, WATCHDOG_USEC=str(WATCHDOG_USEC))
        environ.pop("WATCHDOG_PID", None)  # the test runner's own, if it runs under systemd
        log = self.tmp / f"{name}.log"
        with log.open("ab") as err:
            proc = subprocess.Popen([SYNCD, "run", "-c", str(cfg)], env=environ,
                                    stdout=subprocess.DEVNULL, stderr=err)
        daemon = Daemon(proc, manager, log, cfg)
        self.daemons.append(daemon)
        return daemon

    def put(self, key: str, data: bytes) -> None:
        self.server.client().put_object(Bucket=self.bucket, Key=f"models/{key}", Body=data)


@pytest.fixture
def setup(s3: S3Server, bucket: str, tmp_path: Path, short_dir: Path) -> Iterator[Setup]:
    volume = tmp_path / "vol"
    volume.mkdir()
    st = Setup(s3, bucket, tmp_path, short_dir, volume)
    st.put("config.json", b'{"layers": 2}')
    yield st
    for d in st.daemons:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(10)
        d.manager.close()


@pytest.fixture
def short_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """AF_UNIX paths are limited to 107 bytes; tmp_path embeds the (long) test name."""
    return tmp_path_factory.mktemp("sd", numbered=True)


def pings_between(messages: list[Message], start: float, end: float) -> list[float]:
    return [m.at for m in messages if m.has("WATCHDOG") and start <= m.at <= end]


def test_daemon_notifies_ready_once_lease_held_then_watchdog_and_stopping_on_sigterm(
        setup: Setup) -> None:
    daemon = setup.start("a")
    ready = daemon.wait_ready()
    assert ready.get("STATUS"), ready.fields
    assert ready.get("MAINPID") == str(daemon.proc.pid)
    # Settled: the write lease is ours by the time READY=1 arrives.
    [row] = daemon.lease_rows()
    assert row["state"] == "held" and row["holder"]["pid"] == daemon.proc.pid, row

    # WATCHDOG=1 at least every WATCHDOG_USEC/2 (with slack for a busy test host), well
    # within the period after which systemd would kill the daemon.
    watch_from = daemon.manager.seen[-1].at
    daemon.manager.wait_for(lambda m: m.at - watch_from > 3 * WATCHDOG_S, 30,
                            f"{3 * WATCHDOG_S} s of messages")
    pings = pings_between(daemon.manager.seen, watch_from, daemon.manager.seen[-1].at)
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert len(pings) >= 4, pings
    assert max(gaps) < WATCHDOG_S * 0.75, gaps

    daemon.proc.send_signal(signal.SIGTERM)
    stopping = daemon.manager.wait_for(lambda m: m.has("STOPPING"), 30, "STOPPING=1")
    assert stopping.get("STATUS"), stopping.fields
    assert daemon.proc.wait(30) == 0
    after = daemon.manager.seen[daemon.manager.seen.index(stopping):]
    assert not any(m.has("READY") for m in after), [m.fields for m in after]
    assert sum(m.has("READY") for m in daemon.manager.seen) == 1


def test_daemon_notifies_reloading_then_ready_on_sighup(setup: Setup) -> None:
    daemon = setup.start("a", abstract=True)
    daemon.wait_ready()
    setup.config("a", poll_interval_s=0.5)  # a real change to reload
    daemon.proc.send_signal(signal.SIGHUP)
    reloading = daemon.manager.wait_for(lambda m: m.has("RELOADING"), 30, "RELOADING=1")
    assert reloading.get("STATUS"), reloading.fields
    usec = reloading.get("MONOTONIC_USEC")
    assert usec is not None and usec.isdigit()
    ready = daemon.wait_ready(30)
    assert ready.get("STATUS"), ready.fields
    wait_for(lambda: daemon.events("config_reloaded"), 30, "config_reloaded in the log")

    daemon.proc.send_signal(signal.SIGTERM)
    daemon.manager.wait_for(lambda m: m.has("STOPPING"), 30, "STOPPING=1")
    assert daemon.proc.wait(30) == 0


def test_daemon_keeps_pinging_without_reloading_when_reloaded_config_is_invalid(
        setup: Setup) -> None:
    daemon = setup.start("a")
    daemon.wait_ready()
    daemon.config.write_text("this is [not toml", encoding="utf-8")
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: daemon.events("config_rejected"), 30, "config_rejected in the log")
    first = daemon.manager.wait_for(lambda m: m.has("WATCHDOG"), 5, "WATCHDOG=1").at
    daemon.manager.wait_for(lambda m: m.has("WATCHDOG") and m.at - first > WATCHDOG_S, 10,
                            "WATCHDOG=1 pings going on after the rejected reload")
    assert not any(m.has("RELOADING") for m in daemon.manager.seen)
    assert daemon.proc.poll() is None

    daemon.proc.send_signal(signal.SIGTERM)
    daemon.manager.wait_for(lambda m: m.has("STOPPING"), 30, "STOPPING=1")
    assert daemon.proc.wait(30) == 0


def test_daemon_notifies_ready_in_standby_then_status_on_takeover(setup: Setup) -> None:
    holder = setup.start("holder")
    holder.wait_ready()
    standby = setup.start("standby")
    ready = standby.wait_ready()
    assert ready.get("STATUS"), ready.fields
    [row] = standby.lease_rows()
    assert row["state"] == "held" and row["holder"]["pid"] == holder.proc.pid, row

    # The holder stops and releases; the standby takes over and says so in a STATUS= update.
    holder.proc.send_signal(signal.SIGTERM)
    assert holder.proc.wait(30) == 0
    holder.manager.wait_for(lambda m: m.has("STOPPING"), 5, "STOPPING=1")
    update = standby.manager.wait_for(
        lambda m: m.get("STATUS") not in (None, ready.get("STATUS")) and not m.has("READY"),
        30, "a STATUS= update on takeover")
    assert not update.has("STOPPING"), update.fields
    wait_for(lambda: standby.lease_rows()[0]["holder"]["pid"] == standby.proc.pid, 30,
             "the standby holding the lease")

    standby.proc.send_signal(signal.SIGTERM)
    assert standby.proc.wait(30) == 0
    standby.manager.wait_for(lambda m: m.has("STOPPING"), 5, "STOPPING=1")
    assert sum(m.has("READY") for m in standby.manager.seen) == 1
