"""`syncd run` survives its own bugs (issue 18): a pass that raises something no store or lease
error explains is logged with its traceback once, counted, and retried with backoff until the
data arrives; a mirror loop that dies anyway turns /healthz red at once instead of after
`stall_s`, withholds the systemd watchdog ping (a real NOTIFY_SOCKET) so systemd restarts the
process, and a reload starts it anew.

The fault is injected into the real subprocess only: a `sitecustomize` module on its
PYTHONPATH wraps `syncd.runtime.mirror.cycle` so that its first calls raise. Nothing in syncd
knows about it.
"""

from __future__ import annotations

import json
import signal
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd.errors import ExitCode
from tests.daemons import FAST, Daemon, Setup
from tests.mirrors import tree, wait_for, write_config
from tests.notify import Message, NotifySocket

FAULTS = textwrap.dedent('''
    """Test-only: the first FAULT_PASSES passes of the daemon raise FAULT_KIND."""
    import os

    from syncd.runtime import mirror

    class InjectedFault(BaseException):
        """Not an Exception: nothing that contains errors of a pass catches it."""

    _cycle = mirror.cycle
    _left = [int(os.environ["FAULT_PASSES"])]

    async def cycle(*args, **kwargs):
        if _left[0] > 0:
            _left[0] -= 1
            if os.environ["FAULT_KIND"] == "base":
                raise InjectedFault("the loop cannot survive this")
            raise RuntimeError("injected bug in a pass")
        return await _cycle(*args, **kwargs)

    mirror.cycle = cycle
''')
FILES = {"config.json": b'{"layers": 2}', "weights/model-00000.safetensors": b"w" * 300_000}


def _faulty(setup: Setup, tmp_path: Path, *, kind: str, passes: int,
            **extra_env: str) -> tuple[Daemon, Path]:
    """A pull daemon whose first `passes` passes raise `kind`, and its volume."""
    vol = tmp_path / "vol"
    vol.mkdir()
    hook = tmp_path / "faults"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FAULTS)
    for key, data in FILES.items():
        setup.put(key, data)
    daemon = setup.start(setup.config("pull", vol), PYTHONPATH=str(hook),
                         FAULT_KIND=kind, FAULT_PASSES=str(passes), **extra_env)
    daemon.http()  # started: its HTTP endpoint is bound
    return daemon, vol


def test_daemon_contains_an_unexpected_pass_error_and_retries_until_the_data_arrives(
        setup: Setup, tmp_path: Path) -> None:
    daemon, vol = _faulty(setup, tmp_path, kind="runtime", passes=3)
    wait_for(lambda: tree(vol) == FILES, 60, "the data on the volume after the failed passes")
    wait_for(lambda: daemon.metric("syncd_sync_passes_total", mirror="m", result="ok"), 30,
             "a pass counted ok")
    assert daemon.proc.poll() is None, "the daemon keeps running"

    crashes = daemon.events("pass_crashed")
    assert len(crashes) == 3
    assert [c["retry"] for c in crashes] == [1, 2, 3]  # the backoff's attempts, in order
    assert all(c["error"] == "unexpected RuntimeError: injected bug in a pass"
               and c["kind"] == "RuntimeError" for c in crashes)
    first, *repeats = crashes
    assert first["exception"].startswith("Traceback (most recent call last)")
    assert "RuntimeError: injected bug in a pass" in first["exception"]
    assert all("exception" not in r and r["repeated"] is True for r in repeats)
    assert daemon.log.read_text().count("Traceback (most recent call last)") == 1

    events = [e["event"] for e in daemon.events()]
    assert events.index("pass_done") > max(i for i, e in enumerate(events) if e == "pass_crashed")
    assert not daemon.events("mirror_loop_died")
    assert daemon.metric("syncd_pass_crashes_total", mirror="m") == 3
    assert (daemon.metric("syncd_sync_passes_total", mirror="m", result="failed") or 0) >= 3
    code, body = daemon.get("/healthz")
    assert code == 200, body  # contained failures are no reason to restart the process
    assert json.loads(body)["mirrors"]["m"]["last_error"] is None
    assert daemon.stop() == 0


@pytest.mark.parametrize("s3", ["moto"], indirect=True)  # about the daemon's tasks, not S3
def test_healthz_turns_503_at_once_when_a_mirror_loop_dies_and_a_reload_revives_it(
        setup: Setup, tmp_path: Path) -> None:
    daemon, vol = _faulty(setup, tmp_path, kind="base", passes=1)
    # stall_s is 600 s here: only the loop's death can turn /healthz red this soon
    body = wait_for(lambda: (r := daemon.get("/healthz"))[0] == 503 and r[1], 30,
                    "healthz 503")
    health = json.loads(body)
    assert health["ok"] is False
    assert health["mirrors"]["m"]["state"] == "dead"
    assert health["mirrors"]["m"]["died"] == "InjectedFault: the loop cannot survive this"
    died = daemon.events("mirror_loop_died")
    assert len(died) == 1 and "InjectedFault: the loop cannot survive this" in \
        died[0]["exception"]
    assert daemon.proc.poll() is None, "the process lives on to answer the probe"
    assert daemon.metric("syncd_mirror_stalled", mirror="m") == 1
    assert tree(vol) == {}

    daemon.proc.send_signal(signal.SIGHUP)  # a reload starts the mirror's loop anew
    wait_for(lambda: daemon.events("config_reloaded"), 30, "config_reloaded")
    wait_for(lambda: tree(vol) == FILES, 60, "the data after the reload")
    wait_for(lambda: daemon.get("/healthz")[0] == 200, 30, "healthz 200 again")
    assert daemon.stop() == 0


WATCHDOG_USEC = 1_000_000  # a ping every 0.5 s


@pytest.fixture
def manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NotifySocket]:
    """systemd's end of NOTIFY_SOCKET, in a directory with a short path (AF_UNIX: 107 bytes)."""
    sock = NotifySocket(str(tmp_path_factory.mktemp("sd", numbered=True) / "notify"))
    yield sock
    sock.close()


def _drain(manager: NotifySocket) -> list[Message]:
    """Every datagram already queued on the socket."""
    got = []
    while (message := manager.receive(0.01)) is not None:
        got.append(message)
    return got


def _receive_for(manager: NotifySocket, seconds: float) -> list[Message]:
    """Everything that arrives within the next `seconds`: absence takes a window to show."""
    deadline = time.monotonic() + seconds
    got = []
    while (left := deadline - time.monotonic()) > 0:
        if (message := manager.receive(left)) is not None:
            got.append(message)
    return got


def _pings(messages: list[Message]) -> int:
    return sum(m.has("WATCHDOG") for m in messages)


@pytest.mark.parametrize("s3", ["moto"], indirect=True)  # about the daemon's tasks, not S3
def test_watchdog_pings_stop_while_a_mirror_loop_is_dead_and_resume_after_a_reload(
        setup: Setup, tmp_path: Path, manager: NotifySocket) -> None:
    """Under systemd a dead loop must end the process as a blocked event loop does: no more
    WATCHDOG=1, so WatchdogSec runs out. Here the test is the manager and reads what comes."""
    daemon, vol = _faulty(setup, tmp_path, kind="base", passes=1, NOTIFY_SOCKET=manager.env,
                          WATCHDOG_USEC=str(WATCHDOG_USEC), WATCHDOG_PID="")
    period_s = WATCHDOG_USEC / 1e6
    [withheld] = wait_for(lambda: daemon.events("watchdog_withheld"), 30, "watchdog_withheld")
    assert withheld["dead"] == {"m": "InjectedFault: the loop cannot survive this"}
    assert withheld["level"] == "critical" and "WatchdogSec" in withheld["detail"]
    # The pings went out while the loop lived: they are queued already (one task sends them
    # and logs the withholding, in that order).
    assert _pings(_drain(manager)) >= 1, [m.fields for m in manager.seen]
    assert daemon.get("/healthz")[0] == 503

    quiet = _receive_for(manager, 4 * period_s)  # four periods: systemd would have acted
    assert _pings(quiet) == 0, [m.fields for m in quiet]
    assert daemon.proc.poll() is None, "not exiting: systemd's watchdog is what restarts it"
    assert len(daemon.events("watchdog_withheld")) == 1, "logged once, not at every tick"

    daemon.proc.send_signal(signal.SIGHUP)  # a reload starts the mirror's loop anew
    first = manager.wait_for(lambda m: m.has("WATCHDOG"), 30, "WATCHDOG=1 after the reload")
    manager.wait_for(lambda m: m.has("WATCHDOG") and m.at - first.at >= period_s, 10,
                     "WATCHDOG=1 pings going on")
    assert daemon.events("watchdog_resumed")
    wait_for(lambda: tree(vol) == FILES, 60, "the data after the reload")
    assert daemon.stop() == 0


# rclone ignores conditional writes, so no S3 lease can be held there: a fatal keeper error
@pytest.mark.parametrize("s3", ["rclone"], indirect=True)
def test_a_lease_no_retry_can_fix_still_ends_the_daemon_with_its_own_exit_code(
        setup: Setup, tmp_path: Path) -> None:
    """A keeper's fatal error leaves the task group as itself, after the ordered shutdown: the
    exit code and one line of the error class, not a traceback of an exception group."""
    vol = tmp_path / "vol"
    vol.mkdir()
    cfg = write_config(tmp_path / "s3lease.toml", setup.server.endpoint_url, setup.bucket,
                       direction="push", root=vol, lease="s3", top=FAST)
    daemon = setup.start(cfg)
    assert daemon.proc.wait(60) == ExitCode.LEASE
    log = daemon.log.read_text()
    assert "Traceback" not in log and "ExceptionGroup" not in log, log
    assert not daemon.events("pass_crashed") and not daemon.events("mirror_loop_died")
    errors = [line for line in log.splitlines() if line.startswith("syncd: error:")]
    assert len(errors) == 1 and "ignores S3 conditional writes" in errors[0], log
