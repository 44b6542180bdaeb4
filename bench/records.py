"""What one measured invocation leaves behind: a plain record, JSON-ready."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Row kinds: "transfer" rows are reported in MB/s (higher is better), "seconds" rows (no-op
# re-syncs and W5's one-shard re-sync) in seconds (lower is better); the "rest" row (W7, the
# daemon at rest) in % of one core (lower is better), reported in a table of its own.
TRANSFER = "transfer"
SECONDS = "seconds"
REST = "rest"
NOT_APPLICABLE = "n/a"  # status: the server cannot do what the row needs (the error says why)


@dataclass(slots=True)
class RunRecord:
    run: int
    row: str  # "W1", "W4 no-op", "W6-10k first", ...
    workload: str  # W1..W7
    direction: str  # pull | push
    tool: str
    phase: str  # timed | prime | count
    kind: str  # TRANSFER | SECONDS | REST
    bytes: int  # bytes of the workload (what MB/s divides)
    files: int
    server: str = ""  # rclone | seaweedfs | external
    status: str = "ok"  # ok | FAILED | n/a
    error: str | None = None
    wall_s: float | None = None
    user_s: float | None = None
    sys_s: float | None = None
    maxrss_kib: int | None = None
    returncode: int | None = None
    timed_out: bool = False
    rusage_exact: bool = True  # False: the trampoline was killed, rusage is its own
    server_cpu_s: float | None = None
    # The server's /proc/<pid>/io counters over the run. wchar: bytes it wrote, i.e. sent to
    # clients (pull) or stored (push); rchar: bytes it read, sockets and files (MD5s) alike.
    server_wchar: int | None = None
    server_rchar: int | None = None
    requests: int | None = None  # counted on a repeat of a no-op through the proxy
    count_wall_s: float | None = None  # that repeat's wall time (slowed by the proxy)
    methods: dict[str, int] | None = None
    proxy_bytes_to_client: int | None = None
    proxy_bytes_to_server: int | None = None
    check: dict[str, Any] | None = None
    syncd_summary: dict[str, float] | None = None
    # REST rows: wall_s is the window, user_s/sys_s the daemon's CPU in it, maxrss_kib its
    # VmHWM; this holds the rest (CPU %, passes, VmRSS, time to stop, CPU trace, ...).
    daemon: dict[str, Any] | None = None
    argv: list[str] = field(default_factory=list)
    log_dir: str = ""

    @property
    def ok(self) -> bool:
        """Not failed: a row the server cannot serve (n/a) is not a failure of the tool."""
        return self.status != "FAILED"

    @property
    def na(self) -> bool:
        return self.status == NOT_APPLICABLE

    @property
    def cpu_s(self) -> float | None:
        if self.user_s is None or self.sys_s is None:
            return None
        return self.user_s + self.sys_s

    @property
    def moved_bytes(self) -> int | None:
        """What the server wrote: the bytes it sent on a pull, stored on a push."""
        return self.server_wchar

    def not_applicable(self, why: str) -> None:
        self.status = NOT_APPLICABLE
        self.error = why

    def fail(self, why: str) -> None:
        self.status = "FAILED"
        self.error = why if self.error is None else f"{self.error}; {why}"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["cpu_s"] = self.cpu_s
        data["moved_bytes"] = self.moved_bytes
        return data
