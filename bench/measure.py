"""Run one client process and measure it: wall time, CPU and peak RSS from ``wait4``.

The tool is started through ``bench/trampoline.py`` (a bare ``python -I -S``), which forks
and execs it and reports the tool's own rusage: forked straight from the harness, the tool
would inherit the harness's ~100 MB peak RSS (Linux keeps it across exec). The trampoline
gets a session of its own (the tool shares it), so a Ctrl-C on the terminal reaches only
the harness, which then ends them: SIGTERM through a pidfd (forwarded to the tool), and
after a grace period SIGKILL to that process group, ours by construction. Output goes to
files, never pipes: nothing can block on a full pipe.

A daemon (W7) runs as a ``Background`` child instead: measured from ``/proc/<pid>`` while it
runs, then stopped with SIGTERM and reaped.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

TERM_GRACE_S = 5.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
TRAMPOLINE = Path(__file__).with_name("trampoline.py")


@dataclass(frozen=True, slots=True)
class ChildResult:
    argv: list[str]
    returncode: int  # negative: killed by that signal
    wall_s: float
    user_s: float
    sys_s: float
    maxrss_kib: int
    timed_out: bool
    stdout: Path
    stderr: Path
    exact: bool  # rusage of the tool itself (False: of the trampoline, which was killed)

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s

    def tail(self, limit: int = 600) -> str:
        parts = []
        for path in (self.stderr, self.stdout):
            with contextlib.suppress(OSError):
                text = path.read_bytes()[-limit:].decode("utf-8", "replace").strip()
                if text:
                    parts.append(text)
        return " | ".join(parts)


class _Live:
    """The one child running now, so an interrupt handler can end it."""

    pid: int | None = None
    pidfd: int | None = None


LIVE = _Live()


def _signal(pidfd: int | None, pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, OSError):
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, sig)
        else:
            os.kill(pid, sig)


def _exited(pidfd: int | None, pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` for the child to exit, without reaping it."""
    if pidfd is not None:
        ready, _, _ = select.select([pidfd], [], [], max(0.0, timeout))
        return bool(ready)
    deadline = time.monotonic() + timeout
    while True:  # no pidfd: poll without reaping
        with contextlib.suppress(ChildProcessError):
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)


def _end(pid: int, pidfd: int | None) -> None:
    """SIGTERM (forwarded to the tool), grace, then SIGKILL the whole process group.

    Called before the trampoline is reaped: its pid, and so the group id, cannot have been
    reused yet.
    """
    _signal(pidfd, pid, signal.SIGTERM)
    if not _exited(pidfd, pid, TERM_GRACE_S):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        _exited(pidfd, pid, TERM_GRACE_S)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)  # a tool orphaned by a killed trampoline


def stop_live_child() -> None:
    """End and reap the running child, if any (the Ctrl-C path)."""
    pid, pidfd = LIVE.pid, LIVE.pidfd
    if pid is None:
        return
    _end(pid, pidfd)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    if pidfd is not None:
        with contextlib.suppress(OSError):
            os.close(pidfd)
    LIVE.pid = LIVE.pidfd = None


def run_child(argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, log_dir: Path,
              name: str, timeout_s: float) -> ChildResult:
    """Run ``argv`` to completion (or timeout) and measure it."""
    log_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = log_dir / f"{name}.stdout", log_dir / f"{name}.stderr"
    rusage_path = log_dir / f"{name}.rusage.json"
    rusage_path.unlink(missing_ok=True)
    wrapped = [sys.executable, "-I", "-S", str(TRAMPOLINE), str(rusage_path), "--", *argv]
    with out_path.open("wb") as out, err_path.open("wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(wrapped, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                env=dict(env), cwd=cwd, start_new_session=True)
    pid = proc.pid
    pidfd: int | None = None
    with contextlib.suppress(OSError, AttributeError):
        pidfd = os.pidfd_open(pid)
    LIVE.pid, LIVE.pidfd = pid, pidfd
    timed_out = False
    reaped = False
    try:
        if not _exited(pidfd, pid, timeout_s):
            timed_out = True
            _end(pid, pidfd)
        _, status, usage = os.wait4(pid, 0)
        wall = time.perf_counter() - start
        reaped = True
    finally:
        if not reaped:  # interrupted (Ctrl-C, SIGTERM): end and reap the child ourselves
            stop_live_child()
        elif pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(pidfd)
        LIVE.pid = LIVE.pidfd = None
    proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait for it again
    try:
        inner = json.loads(rusage_path.read_text())
    except (OSError, ValueError):
        inner = None
    if inner is not None:
        return ChildResult(
            argv=list(argv), returncode=int(inner["returncode"]), wall_s=float(inner["wall_s"]),
            user_s=float(inner["user_s"]), sys_s=float(inner["sys_s"]),
            maxrss_kib=int(inner["maxrss_kib"]), timed_out=timed_out, stdout=out_path,
            stderr=err_path, exact=True)
    return ChildResult(
        argv=list(argv), returncode=proc.returncode, wall_s=wall, user_s=usage.ru_utime,
        sys_s=usage.ru_stime, maxrss_kib=usage.ru_maxrss, timed_out=timed_out,
        stdout=out_path, stderr=err_path, exact=False)


# --- a long-running child: measured from /proc while it runs ------------------------------


@dataclass(frozen=True, slots=True)
class CpuTimes:
    user_s: float
    sys_s: float

    @property
    def total_s(self) -> float:
        return self.user_s + self.sys_s


def proc_cpu(pid: int) -> CpuTimes | None:
    """utime and stime of ``pid`` itself (not its reaped children); None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = stat[stat.rindex(")") + 2:].split()  # the name in parentheses may hold anything
    return CpuTimes(int(rest[11]) / CLK_TCK, int(rest[12]) / CLK_TCK)


def proc_memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak over the process's life, reset by exec) in KiB."""
    out: dict[str, int] = {}
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0])
    return out


@dataclass(eq=False)
class Background:
    """A daemon started straight from the harness (no trampoline: what is measured comes
    from ``/proc/<pid>`` while it runs, and VmHWM, unlike ``ru_maxrss``, starts afresh at
    exec). A session of its own, like every tool; the interrupt path ends it through
    ``LIVE``; ``terminate()`` stops it and reaps it."""

    argv: list[str]
    proc: subprocess.Popen[bytes]
    pidfd: int | None
    stdout: Path
    stderr: Path
    returncode: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    def start(cls, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path,
              log_dir: Path, name: str) -> Background:
        if LIVE.pid is not None:
            raise RuntimeError("another child is still running")
        log_dir.mkdir(parents=True, exist_ok=True)
        out_path, err_path = log_dir / f"{name}.stdout", log_dir / f"{name}.stderr"
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=err, env=dict(env), cwd=cwd,
                                    start_new_session=True)
        pidfd: int | None = None
        with contextlib.suppress(OSError, AttributeError):
            pidfd = os.pidfd_open(proc.pid)
        LIVE.pid, LIVE.pidfd = proc.pid, pidfd
        return cls(list(argv), proc, pidfd, out_path, err_path)

    def alive(self) -> bool:
        return self.returncode is None and not _exited(self.pidfd, self.pid, 0)

    def terminate(self, within_s: float) -> tuple[int | None, float]:
        """SIGTERM, then wait up to ``within_s`` for the exit: (exit code, or None when it
        was still running then and was killed; seconds it took). Reaped either way."""
        if self.returncode is not None:
            return self.returncode, 0.0
        sent = time.monotonic()
        _signal(self.pidfd, self.pid, signal.SIGTERM)
        exited = _exited(self.pidfd, self.pid, within_s)
        took = time.monotonic() - sent
        if not exited:  # it had its grace period: its whole group goes now
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        self._reap()
        return (self.returncode if exited else None), took

    def close(self) -> None:
        """End it if it still runs (the error path); idempotent."""
        if self.returncode is None:
            _end(self.pid, self.pidfd)
            self._reap()

    def tail(self, limit: int = 600) -> str:
        with contextlib.suppress(OSError):
            return self.stderr.read_bytes()[-limit:].decode("utf-8", "replace").strip()
        return ""

    def _reap(self) -> None:
        try:
            _, status = os.waitpid(self.pid, 0)
            code = os.waitstatus_to_exitcode(status)
        except ChildProcessError:  # reaped on the interrupt path already
            code = -signal.SIGKILL
        self.returncode = self.proc.returncode = code
        if self.pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self.pidfd)
        if LIVE.pid == self.pid:
            LIVE.pid = LIVE.pidfd = None
