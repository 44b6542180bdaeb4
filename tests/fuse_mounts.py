"""Two FUSE mounts (``weed mount``) of one SeaweedFS filer directory: two hosts sharing a
network volume, on one machine.

Each mount is its own process, started and stopped by its own pid; a mount is taken down by
unmounting it (``fusermount3 -u``, or ``umount`` where fuse3 is not installed; lazily if a
file is still open), after which the process exits by itself.  An atexit hook unmounts
whatever a crashed test left behind, so no stale mount outlives the run.

As root, ``weed mount`` mounts directly with mount(2) (go-fuse's DirectMount) and needs only
/dev/fuse; without root it needs fusermount3 from the fuse3 package.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.servers import HOST, S3Server, log_tail, server_env, venv_binary

MOUNT_TIMEOUT_S = 15.0
UNMOUNT_TIMEOUT_S = 10.0
EXIT_GRACE_S = 2.0
SEE_TIMEOUT_S = 10.0
_POLL_S = 0.01

_live_mounts: set[WeedMount] = set()


def mounted(path: Path) -> bool:
    """True if ``path`` is a mount point now, even a dead FUSE one (whose stat fails with
    ENOTCONN, so os.path.ismount says False)."""
    target = os.fsencode(os.path.abspath(path))
    with open("/proc/self/mountinfo", "rb") as table:
        for line in table:
            point = line.split()[4]
            # mountinfo escapes space, tab, newline and backslash as \\ooo
            if _unescape(point) == target:
                return True
    return False


def _unescape(field_: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(field_):
        if field_[i : i + 1] == b"\\" and field_[i + 1 : i + 4].isdigit():
            out.append(int(field_[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(field_[i])
            i += 1
    return bytes(out)


def unmount(path: Path) -> None:
    """Unmount ``path`` (no-op if it is not mounted); lazily if it is busy."""
    if not mounted(path):
        return
    fusermount = shutil.which("fusermount3")
    attempts = ([[fusermount, "-u"], [fusermount, "-uz"]] if fusermount else []) + [
        ["umount"],
        ["umount", "-l"],
    ]
    errors = []
    for args in attempts:
        done = subprocess.run(
            [*args, str(path)], capture_output=True, text=True, timeout=UNMOUNT_TIMEOUT_S,
            check=False,
        )
        if not mounted(path):
            return
        errors.append(f"{' '.join(args)}: {done.stderr.strip()}")
    raise RuntimeError(f"could not unmount {path}: {'; '.join(errors)}")


@dataclass(eq=False)
class WeedMount:
    """One ``weed mount`` of ``filer_path`` on the filer at ``filer_port`` at ``mountpoint``."""

    filer_port: int
    filer_path: str
    mountpoint: Path
    workdir: Path
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def log_path(self) -> Path:
        return self.workdir / "mount.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def command(self) -> list[str]:
        return [
            str(venv_binary("weed")),
            "-logtostderr",
            "mount",
            f"-filer={HOST}:{self.filer_port}",
            f"-filer.path={self.filer_path}",
            f"-dir={self.mountpoint}",
            f"-cacheDir={self.workdir / 'cache'}",
            f"-localSocket={self.workdir / 'mount.sock'}",
        ]

    def start(self, timeout: float = MOUNT_TIMEOUT_S) -> None:
        """Start ``weed mount`` and wait until the kernel lists the mount."""
        if self._proc is not None:
            raise RuntimeError(f"{self.mountpoint} is already mounted by pid {self.pid}")
        if not Path("/dev/fuse").exists():
            raise RuntimeError("weed mount needs /dev/fuse")
        if os.geteuid() != 0 and shutil.which("fusermount3") is None:
            raise RuntimeError("weed mount needs fusermount3 without root: install fuse3")
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=server_env(), cwd=self.workdir,
            )
        _live_mounts.add(self)
        try:
            _until(lambda: self._alive() and mounted(self.mountpoint), timeout,
                   f"weed mount of {self.filer_path} at {self.mountpoint}")
        except BaseException:
            self.stop()
            raise

    def _alive(self) -> bool:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            code = None if proc is None else proc.returncode
            raise RuntimeError(f"weed mount exited (code {code}); log tail:\n"
                               f"{log_tail(self.log_path)}")
        return True

    def stop(self) -> None:
        """Unmount, then wait for our process to exit (SIGTERM, then SIGKILL if it lingers).
        Idempotent; never leaves the mount point mounted."""
        proc, self._proc = self._proc, None
        try:
            unmount(self.mountpoint)
        finally:
            _live_mounts.discard(self)
            if proc is not None:
                _reap(proc)


def _reap(proc: subprocess.Popen[bytes]) -> None:
    # Unmounted, weed mount exits by itself at once; after a lazy unmount it would wait for
    # the last open file to close, so it gets a short grace, then SIGTERM, then SIGKILL.
    for signal_it, wait_s in ((None, EXIT_GRACE_S), (proc.terminate, UNMOUNT_TIMEOUT_S),
                              (proc.kill, UNMOUNT_TIMEOUT_S)):
        if signal_it is not None:
            signal_it()
        try:
            proc.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


@atexit.register
def _unmount_leftovers() -> None:
    # Safety net only: fixtures unmount at teardown.  Runs before servers.py's own hook
    # (atexit is last-in, first-out), so mounts go before the filer under them.
    for mount in list(_live_mounts):
        with contextlib.suppress(Exception):
            mount.stop()


def _until(ok: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f}s")
        time.sleep(_POLL_S)


def _content(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


@dataclass(frozen=True)
class SharedVolume:
    """One filer directory (``filer_path``) mounted at ``a`` and at ``b``."""

    a: Path
    b: Path
    filer_path: str
    mounts: tuple[WeedMount, WeedMount]


@contextlib.contextmanager
def shared_volume_on(server: S3Server, workdir: Path) -> Iterator[SharedVolume]:
    """Mount a new, empty filer directory twice; yield once a file written through ``a`` is
    readable through ``b``; unmount both on exit, whatever happened."""
    filer_path = f"/shared/{uuid.uuid4().hex[:12]}"
    mounts = tuple(
        WeedMount(server.ports["filer"], filer_path, workdir / host, workdir / f".{host}")
        for host in ("a", "b")
    )
    try:
        for mount in mounts:
            mount.start()
        a, b = (m.mountpoint for m in mounts)
        probe = f".probe-{uuid.uuid4().hex}"
        (a / probe).write_bytes(probe.encode())
        _until(lambda: _content(b / probe) == probe.encode(), SEE_TIMEOUT_S,
               f"{probe} written through {a} readable through {b}")
        (a / probe).unlink()
        _until(lambda: probe not in os.listdir(b), SEE_TIMEOUT_S,
               f"{probe} removed through {a} gone from {b}")
        yield SharedVolume(a, b, filer_path, (mounts[0], mounts[1]))
    except BaseException:
        with contextlib.suppress(Exception):  # the test's error is the one to see
            _stop_all(mounts)
        raise
    _stop_all(mounts)


def _stop_all(mounts: tuple[WeedMount, ...]) -> None:
    """Stop every mount, even when one fails to; then raise the first failure."""
    errors = []
    for mount in mounts:
        try:
            mount.stop()
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise errors[0]
