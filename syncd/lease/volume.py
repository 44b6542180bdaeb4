"""Volume lease: generation-numbered records under `<root>/.syncd/leases/`.

- `gen-0000000042.json`: the record that won generation 42. Created once by `link()` of a
  complete, fsynced temp file, so exactly one contender can create it (link fails with EEXIST
  for every other) and no reader ever sees it half-written. Never overwritten.
- `gen-0000000042.hb`: the holder's heartbeat, replaced by temp + fsync + rename.

The current generation is the highest-numbered `gen-*.json`. Nothing here uses flock/fcntl,
which network filesystems do not reliably honour; link, rename and reading file contents (not
mtimes, which attribute caches and server clocks distort) are what we rely on.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

from syncd.durable import own_dir, write_new
from syncd.errors import (
    AccessDenied,
    LeaseError,
    LeaseLost,
    LeaseUnsupported,
    NoSpace,
    NotFound,
    StoreError,
    SyncdError,
)
from syncd.keys import RESERVED_DIR
from syncd.lease.record import Corrupt, LeaseRecord, View, decode, encode

_GEN = re.compile(r"gen-(\d{10})\.json")
KEEP_GENERATIONS = 3
STALE_TEMP_S = 24 * 3600


def _name(gen: int, suffix: str) -> str:
    return f"gen-{gen:010d}.{suffix}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read(path: Path) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    try:
        with os.fdopen(fd, "rb") as f:
            return f.read(1 << 16)
    except OSError:
        return b""


class VolumeLease:
    kind = "volume"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.target = str(self.root)
        self.dir = self.root / RESERVED_DIR / "leases"
        self.tmp = self.dir / "tmp"

    def _error(self, exc: OSError, what: str) -> SyncdError:
        message = (f"volume lease at {self.dir}: cannot {what}: "
                   f"{exc.strerror or type(exc).__name__}")
        hint = "the lease must be writable on the volume it guards"
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return AccessDenied(message, store=self.target, hint=hint)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return NoSpace(message, store=self.target, hint="free space on the volume")
        return LeaseError(message, hint=hint)

    async def prepare(self) -> None:
        def make() -> None:
            if not self.root.is_dir():
                raise NotFound(f"volume root {self.root} does not exist or is not a directory",
                               store=self.target, hint="is the volume mounted?")
            self._make_dirs()
            probe = self.tmp / f"probe-{uuid.uuid4().hex}"
            write_new(probe, b"probe")
            try:  # generations are won by link(): the filesystem must have real hard links
                os.link(probe, f"{probe}.link")
                linked = os.stat(probe).st_nlink == 2
                os.unlink(f"{probe}.link")
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                    raise
                linked = False
            finally:
                os.unlink(probe)
            if not linked:
                raise LeaseUnsupported(
                    f"the filesystem of {self.root} does not support hard links, which the "
                    "volume lease needs to let exactly one writer win",
                    hint="use lease = \"s3\" for this mirror")
            self._clean_temps()
        try:
            await asyncio.to_thread(make)
        except OSError as exc:
            raise self._error(exc, "create the lease directory") from None
        except StoreError as exc:
            if type(exc) is not StoreError:
                raise
            raise LeaseError(f"volume lease: {exc}", hint=exc.hint) from None

    def _make_dirs(self) -> None:
        for path in (self.root / RESERVED_DIR, self.dir, self.tmp):
            own_dir(path, store=self.target)

    def _clean_temps(self) -> None:
        cutoff = time.time() - STALE_TEMP_S
        with contextlib.suppress(FileNotFoundError), os.scandir(self.tmp) as it:
            for e in it:
                with contextlib.suppress(OSError):
                    if e.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(e.path)

    def _generations(self, *, missing_ok: bool = True) -> list[int]:
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            if not missing_ok:
                raise
            return []
        return sorted(int(m.group(1)) for n in names if (m := _GEN.fullmatch(n)))

    def _read_view(self) -> View:
        gens = self._generations()
        if not gens:
            return View(token=())
        gen = gens[-1]
        raw = _read(self.dir / _name(gen, "json"))
        beat = _read(self.dir / _name(gen, "hb"))
        view = View(gen=gen, token=(gen, raw, beat))
        try:
            record = decode(raw or b"")
            if record.gen != gen:
                raise Corrupt(f"names generation {record.gen} in the file of {gen}")
        except Corrupt as exc:
            view.corrupt = f"{_name(gen, 'json')}: {exc}"
            return view
        view.record = record
        if beat:
            with contextlib.suppress(Corrupt):
                latest = decode(beat)
                if latest.gen == gen and latest.holder == record.holder:
                    view.record = latest
        return view

    async def read(self) -> View:
        if not await asyncio.to_thread(self.root.is_dir):
            raise NotFound(f"volume root {self.root} does not exist or is not a directory",
                           store=self.target, hint="is the volume mounted?")
        try:
            return await asyncio.to_thread(self._read_view)
        except OSError as exc:
            raise self._error(exc, "read the lease") from None

    async def create(self, view: View, record: LeaseRecord) -> Any | None:
        def link() -> bool:
            self._make_dirs()  # an operator may have removed them since prepare()
            tmp = self.tmp / f"{record.holder.nonce}-{uuid.uuid4().hex}.json"
            write_new(tmp, encode(record))
            try:
                os.link(tmp, self.dir / _name(record.gen, "json"))
                won = True
            except FileExistsError:
                # a lost reply on a network filesystem: the link may have been made anyway
                won = os.stat(tmp).st_nlink == 2
            finally:
                os.unlink(tmp)
            if won:
                self._beat(record)
                _fsync_dir(self.dir)
                self._prune(record.gen)
            return won
        try:
            return record.gen if await asyncio.to_thread(link) else None
        except OSError as exc:
            raise self._error(exc, f"create generation {record.gen}") from None

    def _beat(self, record: LeaseRecord) -> None:
        tmp = self.tmp / f"{record.holder.nonce}-{uuid.uuid4().hex}.hb"
        write_new(tmp, encode(record))
        try:
            os.rename(tmp, self.dir / _name(record.gen, "hb"))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _prune(self, gen: int) -> None:
        for old in self._generations():
            if old <= gen - KEEP_GENERATIONS:
                for suffix in ("json", "hb"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.dir / _name(old, suffix))

    async def renew(self, record: LeaseRecord, token: Any) -> Any:
        def beat() -> None:
            if self.superseded(record):
                raise LeaseLost(f"lease on {self.target}: generation {record.gen} is no "
                                "longer ours (superseded, removed or won by another holder)")
            try:
                self._beat(record)
            except FileNotFoundError:
                raise LeaseLost(f"lease on {self.target}: the lease directory was removed "
                                f"under generation {record.gen}") from None
            if self.superseded(record):
                raise LeaseLost(f"lease on {self.target}: generation {record.gen} is no "
                                "longer ours (superseded, removed or won by another holder)")
        try:
            await asyncio.to_thread(beat)
        except OSError as exc:
            raise self._error(exc, "renew") from None
        return token

    def superseded(self, record: LeaseRecord) -> bool:
        """A newer generation exists, ours is gone (pruned after several takeovers, or
        `.syncd` removed by hand, after which someone may have started again at 1), or the
        record of our generation names another holder (two contenders that both believed
        they won it, where the filesystem's link() is not exclusive)."""
        try:
            gens = self._generations(missing_ok=False)
        except OSError:
            return True
        if not gens or gens[-1] != record.gen:
            return True
        try:
            holder = decode(_read(self.dir / _name(record.gen, "json")) or b"").holder
        except Corrupt:
            return True
        return (holder.id, holder.nonce) != (record.holder.id, record.holder.nonce)

    async def commit(self, record: LeaseRecord) -> None:
        return None  # a volume cannot reject a stale rename; `superseded` is checked instead

    async def close(self) -> None:
        return None
