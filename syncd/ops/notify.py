"""sd_notify: tell systemd (Type=notify) that we are ready, what we are doing, that we live.

The protocol is one datagram per message on the unix socket named by `NOTIFY_SOCKET` (a path,
or an abstract name when it starts with "@"). Outside systemd the variable is unset and every
call is a no-op, so the daemon calls these unconditionally. A failed send is never fatal: a
missing watchdog ping gets us restarted, which is what a broken manager link should do anyway.
The socket is non-blocking: these calls run on the event loop, and a manager that stops
reading must cost a dropped message, never a frozen loop.
`WATCHDOG_USEC` (and `WATCHDOG_PID`, when set, must be ours) says how often to ping.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping


def _watchdog_s(env: Mapping[str, str]) -> float | None:
    """The watchdog period, or None when there is none for this process (sd_watchdog_enabled)."""
    usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
    if not (usec.isascii() and usec.isdigit()) or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (we were started by the one it names)
    return int(usec) / 1e6


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = ("\0" + address[1:]) if address.startswith("@") else (
            address or None)
        self.watchdog_s: float | None = _watchdog_s(env)
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def ping_every_s(self) -> float | None:
        """Half the watchdog period, as sd_watchdog_enabled(3) advises."""
        return None if self.watchdog_s is None else self.watchdog_s / 2

    def send(self, *fields: str) -> bool:
        if self.address is None:
            return False
        message = "\n".join(fields).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                                           | socket.SOCK_NONBLOCK)
            self._sock.sendto(message, self.address)
        except OSError:
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", _status(status), f"MAINPID={os.getpid()}")

    def status(self, status: str) -> bool:
        return self.send(_status(status))

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets systemd >= 253 tell this reload from an earlier one (sd_notify(3)).
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", "STATUS=reloading the config",
                         f"MONOTONIC_USEC={now_usec}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.send("STOPPING=1", "STATUS=stopping: finishing transfers, releasing leases")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _status(text: str) -> str:
    """One STATUS= field: a newline in the text would start a field of its own (READY=1...)."""
    return "STATUS=" + " ".join(text.splitlines())
