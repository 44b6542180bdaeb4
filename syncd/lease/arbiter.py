"""Who arbitrates a volume's lease: its own filesystem, or S3.

A volume lease is won by `link()` onto a new name, which is exclusive only where one kernel
sees the whole filesystem (ext4, xfs, btrfs, tmpfs, ...). A network or FUSE filesystem
mounted by several hosts may let two of them create the same name (measured on SeaweedFS
`weed mount`: both links succeed in most races), so there the lease is kept in S3 instead,
under `.syncd/volumes/<volume id>/` of one bucket, arbitrated by conditional writes.

The choice is recorded once in `<root>/.syncd/volume.json`, with a random volume id, and
every later instance follows the record rather than its own view of the filesystem:
- every host that mounts the volume, at whatever path, finds the same S3 lease, and two
  volumes mounted at one path never share one;
- a host where the same volume is local (an NFS server, a VM host under virtiofs) follows
  S3 when the volume's other hosts recorded it, instead of holding a second, link() lease;
- an instance whose config names another bucket refuses instead of holding a second lease.
The holder reads the record again at every renewal and acquisition: a record removed or
replaced since (`.syncd/` deleted by hand, a racing first creator on a filesystem whose
link() let both win) ends the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from syncd.durable import own_dir, write_new
from syncd.errors import (
    AccessDenied,
    LeaseError,
    LeaseHeld,
    LeaseLost,
    LeaseUnsupported,
    NoSpace,
    NotFound,
    StoreError,
    SyncdError,
)
from syncd.fskind import FsType, fs_type, local_exclusive
from syncd.keys import RESERVED_DIR
from syncd.lease.backend import Backend
from syncd.lease.record import LeaseRecord, Timing, View
from syncd.lease.volume import VolumeLease

ID_FILE = "volume.json"
VERSION = 1
SETTLE_S = 2.0  # a new id is read back after this long: a racing creator's file has landed
LINK = "link"
S3 = "s3"
_NO_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK,
             errno.EXDEV)


@dataclass(frozen=True, slots=True)
class Place:
    """The S3 bucket that arbitrates a volume's lease; `url` is "" for AWS S3."""

    url: str
    bucket: str

    def describe(self) -> str:
        return f"s3://{self.bucket}" + (f" at {self.url}" if self.url else "")


@dataclass(frozen=True, slots=True)
class Arbitration:
    """What `volume.json` says: the volume's id, and LINK or S3 with the bucket (`place`)."""

    id: str
    kind: str
    place: Place | None = None

    def describe(self) -> str:
        return self.place.describe() if self.place else "its filesystem's link()"


def keys_of(volume_id: str) -> str:
    """Where in the bucket a volume's lease and commit objects live."""
    return f"{RESERVED_DIR}/volumes/{volume_id}"


GRANT = f"{RESERVED_DIR}/volumes/*"  # what a volume's S3 lease needs to write, whatever its id


class VolumeRecord:
    """`<root>/.syncd/volume.json`: created once, then only read."""

    def __init__(self, root: Path, *, settle_s: float = SETTLE_S) -> None:
        self.path = root / RESERVED_DIR / ID_FILE
        self.root = root
        self.settle_s = settle_s

    def _failed(self, exc: OSError, what: str) -> SyncdError:
        message = (f"volume lease of {self.root}: cannot {what} {self.path}: "
                   f"{exc.strerror or type(exc).__name__}")
        hint = "the lease needs to read and write syncd's .syncd/ there"
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return AccessDenied(message, store=str(self.root), hint=hint)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return NoSpace(message, store=str(self.root), hint="free space on the volume")
        return LeaseError(message, hint=hint)

    def read(self) -> Arbitration | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._failed(exc, "read") from None
        try:
            body = json.loads(raw)
            arbiter = body["arbiter"]
            volume_id, kind = str(body["id"]), str(arbiter.get("kind", S3))
            if body.get("v") != VERSION or len(volume_id) != 32 or kind not in (LINK, S3):
                raise ValueError("unexpected fields")
            int(volume_id, 16)
            place = Place(str(arbiter.get("url", "")), str(arbiter["bucket"])) \
                if kind == S3 else None
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            raise LeaseError(f"{self.path} is not a volume record written by syncd "
                             f"({type(exc).__name__}: {exc})",
                             hint="it is only read, never repaired: remove it while no syncd "
                                  "runs on this volume") from None
        return Arbitration(volume_id, kind, place)

    def _create(self, record: Arbitration) -> None:
        arbiter: dict[str, str] = {"kind": record.kind}
        if record.place is not None:
            arbiter.update(url=record.place.url, bucket=record.place.bucket)
        body = {"v": VERSION, "id": record.id, "created_wall": time.time(), "arbiter": arbiter}
        try:
            own_dir(self.root / RESERVED_DIR, store=str(self.root))
            tmp = self.path.with_name(f".{ID_FILE}.{uuid.uuid4().hex}.tmp")  # leftovers.py
            write_new(tmp, json.dumps(body, indent=1).encode() + b"\n")
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                pass  # another instance recorded first: read back below
            except OSError as exc:
                if exc.errno not in _NO_LINKS:
                    raise
                os.rename(tmp, self.path)  # no hard links here: the last one wins
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        except OSError as exc:
            raise self._failed(exc, "write") from None

    async def create(self, record: Arbitration, *, settle: bool) -> Arbitration:
        """Arbitration `record` unless the volume has one already; the record the volume keeps.
        `settle` where the filesystem's link() may let two creators win."""
        await asyncio.to_thread(self._create, record)
        # Two first instances on hosts that share the volume may both "win" the link on
        # such a filesystem; whichever file the volume kept is read back once both have
        # landed, so they agree before either takes a lease. (One paused longer than this
        # between its write and the volume's answer is caught by the holder's re-reads.)
        if settle:
            await asyncio.sleep(self.settle_s)
        kept = await asyncio.to_thread(self.read)
        if kept is None:
            raise LeaseError(f"{self.path} vanished right after it was created",
                             hint="is something cleaning .syncd/ on this volume?")
        return kept


MakeS3 = Callable[[str], Awaitable[Backend]]


class VolumeArbiter:
    """The Backend of a volume lease, choosing on first use where it is arbitrated: as the
    volume's record says, else by the filesystem (module docstring). `make_s3` builds the
    S3 backend for a volume id. With `forced` (lease = "volume") the filesystem arbitrates;
    an untrusted filesystem is then refused unless `force_ok`."""

    kind = "volume"

    def __init__(self, root: Path, place: Place, make_s3: MakeS3, timing: Timing, *,
                 forced: bool, force_ok: bool, settle_s: float = SETTLE_S) -> None:
        self.root = Path(root)
        self.target = str(self.root)
        self.place = place
        self.volume = VolumeRecord(self.root, settle_s=settle_s)
        self.timing = timing
        self._make_s3 = make_s3
        self._forced = forced
        self._force_ok = force_ok
        self._inner: Backend | None = None
        self._record: Arbitration | None = None  # what the choice followed
        self._ready = False  # prepared once: a backend chosen anew is prepared at once
        self._link_seen: tuple[Any, float] | None = None  # a link() holder in the way
        self.fs: FsType | None = None

    @property
    def identity(self) -> str:
        """What the lease is, the same on every host: the S3 lease object, or the root."""
        return getattr(self._inner, "identity", self.target)

    @property
    def arbiter(self) -> str:
        """Where the lease is arbitrated, for operators ("" until decided)."""
        fs = self.fs.name if self.fs else "unknown"
        if self._inner is None:
            return ""
        if self._inner.kind == "volume":
            return f"the filesystem ({fs})"
        return f"{self.place.describe()} (filesystem {fs})"

    # --- choosing --------------------------------------------------------------------------

    async def _statfs(self) -> FsType:
        def look() -> FsType:
            if not os.path.isdir(self.root):
                raise NotFound(f"volume root {self.root} does not exist or is not a "
                               "directory", store=self.target, hint="is the volume mounted?")
            return fs_type(self.root)
        try:
            return await asyncio.to_thread(look)
        except OSError as exc:
            raise StoreError(f"volume lease of {self.root}: cannot look at its filesystem: "
                             f"{exc.strerror or exc}", store=self.target,
                             hint="is the volume mounted and answering?") from None

    async def _decide(self, *, create: bool) -> Backend | None:
        if self._inner is not None:
            return self._inner
        fs = self.fs = await self._statfs()
        trusted = local_exclusive(fs)
        recorded = await asyncio.to_thread(self.volume.read)
        if recorded is not None and recorded.kind == S3:
            if self._forced or recorded.place != self.place:
                what = ('lease = "volume" would hold a second lease through the filesystem'
                        if self._forced else
                        f"this config would keep it in {self.place.describe()}")
                raise LeaseError(
                    f"the lease of volume {self.root} is kept in {recorded.describe()} "
                    f"(recorded in {self.volume.path}), but {what}",
                    hint="every host of one volume must use one arbiter: set [lease] bucket "
                         "and endpoint to the recorded one, and lease = \"auto\"")
            return await self._chosen(await self._make_s3(recorded.id), recorded)
        if recorded is not None or trusted or self._forced:  # the filesystem arbitrates
            if not trusted and not self._force_ok:
                raise self._untrusted(fs, recorded is not None)
            if recorded is None:
                if not create:
                    return VolumeLease(self.root)  # a look (lease status): record nothing
                # link() is exclusive here, also against hosts that reach this filesystem
                # over the network (its server makes their links): no need to settle
                recorded = await self.volume.create(Arbitration(uuid.uuid4().hex, LINK),
                                                    settle=False)
                if recorded.kind != LINK:  # a host that cannot trust link() was first
                    return await self._decide(create=create)
            return await self._chosen(VolumeLease(self.root), recorded)
        if not create:
            return None
        await self._no_link_holder()
        # The arbiter is proven (reachable, writable, honouring conditions) before the
        # volume records it: a first run with read-only credentials must leave nothing that
        # a corrected config would then contradict.
        candidate = uuid.uuid4().hex
        await self._prepared(await self._make_s3(candidate))
        await self.volume.create(Arbitration(candidate, S3, self.place), settle=True)
        return await self._decide(create=create)  # follows whatever the volume kept

    def _untrusted(self, fs: FsType, recorded: bool) -> LeaseUnsupported:
        if recorded:
            return LeaseUnsupported(
                f"the lease of volume {self.root} is arbitrated by its filesystem's link() "
                f"(recorded in {self.volume.path}), but here the volume is on {fs.name}, "
                "where link() is not exclusive across hosts, so two writers could both win "
                "it", hint="run syncd on this volume only where it is local, or set [lease] "
                           "force_volume = true if only this host mounts it")
        return LeaseUnsupported(
            f"lease = \"volume\" on {self.root} is refused: its filesystem ({fs.name}) does "
            "not guarantee that link() is exclusive across hosts, so two writers could both "
            "win the lease",
            hint="use lease = \"auto\" (an S3 conditional-write lease), or set [lease] "
                 "force_volume = true if only one host ever mounts this volume")

    async def _no_link_holder(self) -> None:
        """Before S3 arbitrates a volume for the first time, a lease held through its
        filesystem (by a syncd from before volume records) must be released or silent for
        as long as a standby would wait: else there would be two leases, two writers."""
        view = await VolumeLease(self.root).read()
        record = view.record
        if not view.exists or (record is not None and record.released):
            return
        now = time.monotonic()
        if self._link_seen is None or self._link_seen[0] != view.token:
            self._link_seen = (view.token, now)
        waited = now - self._link_seen[1]
        needed = self.timing.takeover_after(record.ttl_s if record else None)
        if waited >= needed:
            return
        who = record.holder.describe() if record else f"an unreadable record ({view.corrupt})"
        raise LeaseHeld(f"the lease of volume {self.root} is held through its filesystem by "
                        f"{who}, generation {view.gen} (a syncd that arbitrates by link()); "
                        f"S3 takes over once it is released or has shown no renewal for "
                        f"{needed:.0f}s (seen unchanged for {waited:.0f}s)",
                        hint="stop or upgrade the syncd that holds it")

    async def _chosen(self, inner: Backend, recorded: Arbitration | None) -> Backend:
        if self._ready:
            await self._prepared(inner)
        self._inner, self._record = inner, recorded
        return inner

    async def _prepared(self, inner: Backend) -> Backend:
        try:
            await inner.prepare()
        except LeaseError as exc:
            if inner.kind != S3:
                raise
            unsupported = isinstance(exc, LeaseUnsupported)
            raise type(exc)(
                f"the lease of volume {self.root} ({self.fs.name if self.fs else '?'}, "
                f"which cannot arbitrate it) is kept in S3: {exc.message}",
                hint="name a bucket on a server that honours conditional writes in [lease] "
                     "bucket and endpoint" if unsupported else
                f"grant s3:PutObject, s3:GetObject and s3:DeleteObject on "
                f"{self.place.describe().split(' at ')[0]}/{GRANT}, or name a writable "
                "bucket in [lease] bucket") from None
        return inner

    async def _still_recorded(self) -> None:
        """The record the choice followed is still the volume's: else this lease is not
        the one every other host contends for."""
        now = await asyncio.to_thread(self.volume.read)
        if now != self._record:
            was = self._record.describe() if self._record else "no record"
            self._inner = self._record = None
            self.fs = None
            raise LeaseLost(f"lease on {self.target}: the volume's record {self.volume.path} "
                            f"changed (was {was}, now "
                            f"{now.describe() if now else 'missing'}); its lease is decided "
                            "anew")

    # --- the Backend protocol --------------------------------------------------------------

    async def prepare(self) -> None:
        inner = await self._decide(create=True)
        assert inner is not None
        if not self._ready:
            await self._prepared(inner)
        self._ready = True

    async def read(self) -> View:
        inner = await self._decide(create=self._ready)
        if inner is None:
            return View(token=())  # no record yet: nobody ever held it
        return await inner.read()

    async def create(self, view: View, record: LeaseRecord) -> Any | None:
        assert self._inner is not None, "prepared first"
        inner = self._inner
        await self._still_recorded()
        return await inner.create(view, record)

    async def renew(self, record: LeaseRecord, token: Any) -> Any:
        """Also looks again at the filesystem and the volume's record: a volume mounted (or
        unmounted) over the root, or a record removed or replaced, ends the lease."""
        assert self._inner is not None, "prepared first"
        inner = self._inner
        now = await self._statfs()
        if now != self.fs:
            was, self._inner, self._record, self.fs = self.fs, None, None, None
            raise LeaseLost(f"lease on {self.target}: the filesystem under it changed from "
                            f"{was} to {now} (mounted or unmounted); its lease is decided anew")
        await self._still_recorded()
        return await inner.renew(record, token)

    def superseded(self, record: LeaseRecord) -> bool:
        return self._inner is None or self._inner.superseded(record)

    async def commit(self, record: LeaseRecord) -> None:
        if self._inner is None:
            raise LeaseLost(f"lease on {self.target}: its arbiter is being decided anew")
        await self._inner.commit(record)

    async def close(self) -> None:
        return None  # the S3 store belongs to runtime/leases.Leases, which closes it
