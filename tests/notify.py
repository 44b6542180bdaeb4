"""The manager's end of sd_notify for tests: a bound AF_UNIX datagram socket that keeps what
it receives, the way systemd listens on NOTIFY_SOCKET."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Message:
    """One datagram: its fields in order (a field may repeat) and when it arrived."""

    fields: tuple[tuple[str, str], ...]
    at: float  # time.monotonic() on arrival

    def get(self, name: str) -> str | None:
        return next((v for k, v in self.fields if k == name), None)

    def has(self, name: str, value: str = "1") -> bool:
        return (name, value) in self.fields


def parse(datagram: bytes) -> tuple[tuple[str, str], ...]:
    """sd_notify's wire format: newline-separated NAME=VALUE lines (a trailing newline is fine)."""
    out = []
    for line in datagram.decode().split("\n"):
        if line:
            name, sep, value = line.partition("=")
            assert sep, f"not NAME=VALUE: {line!r} in {datagram!r}"
            out.append((name, value))
    return tuple(out)


class NotifySocket:
    """The manager's end: a bound SOCK_DGRAM socket; `env` is what NOTIFY_SOCKET should say.

    Everything received is kept in `seen`, in order, so a test can wait for one message and
    still look at what came before it."""

    def __init__(self, address: str) -> None:
        self.env = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.seen: list[Message] = []

    def receive(self, timeout: float) -> Message | None:
        """The next datagram within `timeout` seconds, else None."""
        self.sock.settimeout(max(timeout, 1e-3))
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return None
        message = Message(parse(data), time.monotonic())
        self.seen.append(message)
        return message

    def wait_for(self, check: Callable[[Message], bool], timeout: float, what: str) -> Message:
        """The first message from now on that satisfies `check`; fail after `timeout`."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            message = self.receive(left)
            if message is not None and check(message):
                return message
        raise AssertionError(f"no {what} within {timeout} s; got {[m.fields for m in self.seen]}")

    def close(self) -> None:
        self.sock.close()
