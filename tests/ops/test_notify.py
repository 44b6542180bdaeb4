"""syncd.ops.notify against real AF_UNIX datagram sockets, the way systemd listens for them.

`tests.notify.NotifySocket` stands in for the manager's end of `NOTIFY_SOCKET`;
tests/e2e/test_notify.py uses it against a real `syncd run`.
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd.ops.notify import Notifier
from tests.notify import NotifySocket


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: AF_UNIX paths are limited to 107 bytes, and pytest's
    tmp_path (which embeds the test's name) can be longer than that."""
    with tempfile.TemporaryDirectory(prefix="sdn-") as d:
        yield Path(d)


@pytest.fixture
def manager(short_dir: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(str(short_dir / "notify"))
    yield sock
    sock.close()


@pytest.fixture
def abstract_manager() -> Iterator[NotifySocket]:
    sock = NotifySocket(f"@syncd-test-{uuid.uuid4().hex}")
    yield sock
    sock.close()


def test_notifier_ready_sends_ready_status_and_mainpid_in_one_datagram(
        manager: NotifySocket) -> None:
    n = Notifier({"NOTIFY_SOCKET": manager.env})
    assert n.enabled
    assert n.ready("2 mirrors: 1 lease held, 1 standing by")
    message = manager.wait_for(lambda m: True, 5, "datagram")
    assert message.fields == (("READY", "1"),
                              ("STATUS", "2 mirrors: 1 lease held, 1 standing by"),
                              ("MAINPID", str(os.getpid())))
    n.close()


def test_notifier_sends_to_abstract_socket_when_address_starts_with_at(
        abstract_manager: NotifySocket) -> None:
    n = Notifier({"NOTIFY_SOCKET": abstract_manager.env})
    assert n.status("passing")
    assert abstract_manager.wait_for(lambda m: True, 5, "datagram").fields == (
        ("STATUS", "passing"),)
    n.close()


def test_notifier_sends_one_protocol_datagram_per_call_in_order(manager: NotifySocket) -> None:
    n = Notifier({"NOTIFY_SOCKET": manager.env})
    assert all([n.status("pass done"), n.watchdog(), n.reloading(), n.ready("reloaded"),
                n.stopping()])
    got = [manager.wait_for(lambda m: True, 5, f"datagram {i}") for i in range(5)]
    assert got[0].fields == (("STATUS", "pass done"),)
    assert got[1].fields == (("WATCHDOG", "1"),)
    assert got[2].has("RELOADING") and got[2].get("STATUS")
    assert got[3].has("READY") and got[3].get("STATUS") == "reloaded"
    assert got[4].has("STOPPING") and got[4].get("STATUS")
    assert manager.receive(0.05) is None  # nothing more than one datagram per call
    n.close()


def test_notifier_reloading_carries_current_monotonic_usec(manager: NotifySocket) -> None:
    """systemd >= 253 orders reloads by MONOTONIC_USEC (sd_notify(3)); CLOCK_MONOTONIC, in µs."""
    n = Notifier({"NOTIFY_SOCKET": manager.env})
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    n.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    usec = manager.wait_for(lambda m: m.has("RELOADING"), 5, "RELOADING=1").get("MONOTONIC_USEC")
    assert usec is not None and before <= int(usec) <= after
    n.close()


def test_notifier_status_cannot_inject_fields_when_text_has_newlines(
        manager: NotifySocket) -> None:
    n = Notifier({"NOTIFY_SOCKET": manager.env})
    n.status("error from bucket\nREADY=1")
    n.ready("fine\r\nSTOPPING=1")
    first = manager.wait_for(lambda m: True, 5, "status")
    second = manager.wait_for(lambda m: True, 5, "ready")
    assert first.fields == (("STATUS", "error from bucket READY=1"),)
    assert [k for k, _ in second.fields] == ["READY", "STATUS", "MAINPID"]
    n.close()


@pytest.mark.parametrize(("usec", "period_s"), [
    ("2000000", 2.0), ("30000000", 30.0), ("1", 1e-6),
    ("", None), ("0", None), ("-5", None), ("1.5", None), (" 100", None), ("abc", None),
    ("\u00b2", None),  # str.isdigit() says yes, int() says no
])
def test_notifier_watchdog_period_comes_from_watchdog_usec(usec: str,
                                                           period_s: float | None) -> None:
    n = Notifier({"WATCHDOG_USEC": usec})
    assert n.watchdog_s == period_s
    assert n.ping_every_s == (None if period_s is None else period_s / 2)


def test_notifier_watchdog_period_absent_when_watchdog_usec_unset() -> None:
    n = Notifier({"NOTIFY_SOCKET": "/run/systemd/notify"})
    assert n.watchdog_s is None and n.ping_every_s is None


def test_notifier_watchdog_enabled_when_watchdog_pid_is_ours() -> None:
    n = Notifier({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())})
    assert n.watchdog_s == 4.0 and n.ping_every_s == 2.0


def test_notifier_watchdog_disabled_when_watchdog_pid_is_another_process() -> None:
    """The watchdog is the parent's (we were started by the process it names): not ours to
    ping, or a stuck parent would go unnoticed."""
    n = Notifier({"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "4000000",
                  "WATCHDOG_PID": str(os.getppid())})
    assert n.watchdog_s is None and n.ping_every_s is None


def test_notifier_reads_process_environment_when_no_env_given(
        manager: NotifySocket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", manager.env)
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    n = Notifier()
    assert n.enabled and n.watchdog_s == 3.0
    assert n.watchdog()
    assert manager.wait_for(lambda m: True, 5, "WATCHDOG=1").fields == (("WATCHDOG", "1"),)
    n.close()


def test_notifier_is_noop_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_socket(*args: object, **kwargs: object) -> socket.socket:
        raise AssertionError("opened a socket outside systemd")

    monkeypatch.setattr(socket, "socket", no_socket)
    for env in ({}, {"NOTIFY_SOCKET": ""}, {"WATCHDOG_USEC": "2000000"}):
        n = Notifier(env)
        assert not n.enabled
        assert not any([n.ready("up"), n.status("x"), n.reloading(), n.watchdog(),
                        n.stopping()])
        n.close()


def test_notifier_never_raises_when_socket_is_unreachable(short_dir: Path) -> None:
    stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stream.bind(str(short_dir / "stream"))  # wrong socket type: EPROTOTYPE
    (short_dir / "file").write_text("not a socket")
    unreachable = [
        str(short_dir / "missing"),
        str(short_dir / "file"),
        str(short_dir / "stream"),
        f"@syncd-test-unbound-{uuid.uuid4().hex}",
        "/" + "x" * 200,  # longer than sun_path
        "relative/path",
    ]
    try:
        for address in unreachable:
            n = Notifier({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000"})
            assert n.enabled
            assert not any([n.ready("up"), n.status("x"), n.reloading(), n.watchdog(),
                            n.stopping()]), address
            n.close()
    finally:
        stream.close()


def test_notifier_delivers_again_once_socket_becomes_reachable(short_dir: Path) -> None:
    path = short_dir / "late"
    n = Notifier({"NOTIFY_SOCKET": str(path)})
    assert not n.watchdog()
    late = NotifySocket(str(path))
    try:
        assert n.watchdog()
        assert late.wait_for(lambda m: True, 5, "WATCHDOG=1").has("WATCHDOG")
    finally:
        late.close()
        n.close()


def test_notifier_never_blocks_when_manager_stops_reading(manager: NotifySocket) -> None:
    """A manager that stops reading fills the socket's queue; a blocking send would then
    freeze the event loop the pings come from. A dropped ping is the right outcome."""
    n = Notifier({"NOTIFY_SOCKET": manager.env})
    results: list[bool] = []

    def flood() -> None:
        results.extend(n.watchdog() for _ in range(2000))

    sender = threading.Thread(target=flood, daemon=True)
    sender.start()
    sender.join(timeout=20)
    assert not sender.is_alive(), "a send blocked on a full notify socket"
    assert results.count(True) > 0 and results.count(False) > 0
    while manager.receive(0.01) is not None:  # the manager catches up
        pass
    assert n.watchdog()
    n.close()
