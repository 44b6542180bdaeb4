"""Exec a tool from a small process and report its exact rusage (stand-alone script).

Why: Linux carries a process's peak RSS across exec (``maxrss`` keeps the high-water mark of
the memory image it replaced), so a tool forked straight from the harness (~100 MB of
Python and boto3) would report at least the harness's RSS. Forked from this script, run as
``python -I -S trampoline.py RESULT -- ARGV...``, the floor is a bare interpreter (~10 MB),
below any real tool's peak.

The tool inherits environment, cwd, stdin/stdout/stderr and the process group. SIGTERM,
SIGINT and SIGHUP are forwarded to it. RESULT gets one JSON object: wall seconds (fork to
reap), user/system CPU seconds, ru_maxrss (KiB) and the exit status of the tool.
"""

import json
import os
import signal
import sys
import time


def main() -> int:
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        os.write(2, b"usage: trampoline.py RESULT -- ARGV...\n")
        return 2
    result, argv = sys.argv[1], sys.argv[3:]
    child: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        if not child:  # not forked yet: nothing runs, so just go
            os._exit(128 + signum)
        try:
            os.kill(child[0], signum)
        except ProcessLookupError:
            pass

    # Installed before the fork: no window in which a signal could orphan the tool. (exec
    # resets caught signals to their defaults in the child.)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            os.execv(argv[0], argv)
        except OSError as exc:
            os.write(2, f"trampoline: cannot run {argv[0]}: {exc}\n".encode())
        os._exit(127)
    child.append(pid)
    _, status, usage = os.wait4(pid, 0)  # retried across signals (PEP 475)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    body = {"wall_s": wall, "user_s": usage.ru_utime, "sys_s": usage.ru_stime,
            "maxrss_kib": usage.ru_maxrss, "returncode": code}
    tmp = result + ".tmp"
    with open(tmp, "w") as f:
        json.dump(body, f)
    os.replace(tmp, result)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
