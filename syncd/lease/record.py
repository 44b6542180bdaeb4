"""The lease record, its self-checking encoding, and who holds it. Pure: no I/O.

A record carries a CRC of its own body, so a truncated, torn or hand-edited record is told
apart from a valid one. A record that does not check out is *corrupt*, which the lease logic
treats as held-but-silent, never as free (see lease.py).
"""

from __future__ import annotations

import json
import os
import socket
import uuid
import zlib
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from typing import Any

VERSION = 1


class Corrupt(ValueError):
    """The bytes are not a valid lease record (the message says why)."""


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds a lease. `nonce` names this process's incarnation; `boot` and `pidns` let an
    instance on the same kernel and pid namespace tell whether `pid` is still alive."""

    id: str
    host: str
    pid: int
    nonce: str
    boot: str = ""
    pidns: str = ""
    started: int = 0  # the process's start time in clock ticks (tells a reused pid apart)

    def describe(self) -> str:
        return f"{self.id} (host {self.host}, pid {self.pid})"


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    target: str
    gen: int
    holder: Holder
    ttl_s: float
    acquired_wall: float  # informational only: expiry is judged by the observer's own clock
    renewed_wall: float
    beat: int = 0  # the heartbeat counter: observers see the holder is alive by it changing
    released: bool = False

    def renewed(self, wall: float) -> LeaseRecord:
        return replace(self, beat=self.beat + 1, renewed_wall=wall)

    def release(self, wall: float) -> LeaseRecord:
        return replace(self, beat=self.beat + 1, renewed_wall=wall, released=True)


def _crc(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return f"{zlib.crc32(canonical):08x}"


def encode(record: LeaseRecord) -> bytes:
    body = {"v": VERSION, **asdict(record)}
    return json.dumps({**body, "crc": _crc(body)}, sort_keys=True, indent=1).encode() + b"\n"


def decode(data: bytes) -> LeaseRecord:
    """The record, or Corrupt: empty, not JSON, wrong CRC, wrong version or shape."""
    if not data.strip():
        raise Corrupt("empty")
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Corrupt(f"not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise Corrupt("not a JSON object")
    crc = body.pop("crc", None)
    if crc != _crc(body):
        raise Corrupt("checksum mismatch (truncated or edited by hand)")
    if body.pop("v", None) != VERSION:
        raise Corrupt("unknown version")
    try:
        holder = Holder(**body.pop("holder"))
        record = LeaseRecord(holder=holder, **body)
    except (TypeError, KeyError) as exc:
        raise Corrupt(f"unexpected fields ({exc})") from None
    if not isinstance(record.gen, int) or record.gen < 1:
        raise Corrupt(f"bad generation {record.gen!r}")
    return record


# --- who we are ----------------------------------------------------------------------------

def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


def _pidns() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


class _Unknown(Exception):
    """/proc would not say (hidepid, permissions): assume the process may be alive."""


def _ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except OSError:
            pass
        raise _Unknown from None
    fields = stat.rpartition(")")[2].split()
    if not fields or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def start_ticks(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot), or None if it is gone or a zombie;
    0 when /proc does not tell (the process may be alive)."""
    try:
        return _ticks(pid)
    except _Unknown:
        return 0


@cache
def _process() -> tuple[str, str, int, str]:
    return (_read("/proc/sys/kernel/random/boot_id"), _pidns(), start_ticks(os.getpid()) or 0,
            uuid.uuid4().hex)


def me(instance_id: str | None) -> Holder:
    boot, pidns, started, nonce = _process()
    host = socket.gethostname()
    return Holder(instance_id or host, host, os.getpid(), nonce, boot, pidns, started)


def holder_dead(holder: Holder, local: Holder) -> bool:
    """True only when we can prove it: same kernel boot and pid namespace, and the holder's
    pid is gone (or is a zombie, or was reused by a younger process)."""
    if not holder.boot or holder.boot != local.boot or holder.pidns != local.pidns:
        return False
    if holder.pid == local.pid:
        return holder.nonce != local.nonce  # that pid is us now
    try:
        ticks = _ticks(holder.pid)
    except _Unknown:
        return False
    return ticks is None or ticks != holder.started


@dataclass(frozen=True, slots=True)
class Timing:
    """The timing rules, all judged on the local monotonic clock (docs/leases.md)."""

    ttl_s: float = 60.0
    renew_interval_s: float = 10.0
    renew_deadline_s: float = 40.0
    skew_margin_s: float = 15.0

    def takeover_after(self, record_ttl: float | None) -> float:
        """How long a lease must show no change before a contender may take it over."""
        return max(self.ttl_s, record_ttl or 0.0) + self.skew_margin_s


@dataclass(slots=True)
class View:
    """One read of a lease: the highest generation seen, the record (None when absent or
    corrupt), why it is corrupt, and a token that changes whenever the record does."""

    gen: int = 0
    record: LeaseRecord | None = None
    corrupt: str | None = None
    token: Any = None
    floor: int = 0  # a generation known from elsewhere (the commit object): never go below
    extra: dict[str, Any] = field(default_factory=dict)  # backend-private (ETags)

    @property
    def exists(self) -> bool:
        return self.gen > 0 or self.corrupt is not None

    @property
    def next_gen(self) -> int:
        return max(self.gen, self.floor) + 1
