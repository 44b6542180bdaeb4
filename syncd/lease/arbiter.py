"""Who arbitrates a volume's lease: its own filesystem, or S3.

A volume lease is won by `link()` onto a new name, which is exclusive only where one kernel
sees the whole filesystem (ext4, xfs, btrfs, tmpfs, ...). A network or FUSE filesystem
mounted by several hosts may let two of them create the same name (measured on SeaweedFS
`weed mount`: both links succeed in most races), so there the lease is kept in S3 instead,
under `.syncd/volumes/<volume id>/` of one bucket, arbitrated by conditional writes.

The volume id lives in `<root>/.syncd/volume.json`, written once: every host that mounts the
volume, at whatever path, finds the same S3 lease, and two volumes mounted at one path never
share one. The file also records which bucket arbitrates the volume, so an instance whose
config names another one refuses to start instead of holding a second lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from syncd.durable import write_new
from syncd.errors import LeaseError, LeaseLost, LeaseUnsupported, NotFound, StoreError, SyncdError
from syncd.fskind import FsType, fs_type, local_exclusive
from syncd.keys import RESERVED_DIR
from syncd.lease.backend import Backend
from syncd.lease.record import LeaseRecord, View
from syncd.lease.volume import VolumeLease
from syncd.stores.volume import own_dir

ID_FILE = "volume.json"
VERSION = 1
SETTLE_S = 2.0  # a new id is read back after this long: a racing creator's file has landed


@dataclass(frozen=True, slots=True)
class Place:
    """The S3 bucket that arbitrates a volume's lease; `url` is "" for AWS S3."""

    url: str
    bucket: str

    def describe(self) -> str:
        return f"s3://{self.bucket}" + (f" at {self.url}" if self.url else "")


def keys_of(volume_id: str) -> str:
    """Where in the bucket a volume's lease and commit objects live."""
    return f"{RESERVED_DIR}/volumes/{volume_id}"


class VolumeIdentity:
    """`<root>/.syncd/volume.json`: the volume's id and its arbiter, created once."""

    def __init__(self, root: Path, place: Place, *, settle_s: float = SETTLE_S) -> None:
        self.path = root / RESERVED_DIR / ID_FILE
        self.root = root
        self.place = place
        self.settle_s = settle_s

    def _read(self) -> dict[str, Any] | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            body = json.loads(raw)
            if not (isinstance(body, dict) and body.get("v") == VERSION
                    and isinstance(body.get("id"), str) and len(body["id"]) == 32
                    and isinstance(body.get("arbiter"), dict)):
                raise ValueError("unexpected fields")
            int(body["id"], 16)
        except ValueError as exc:
            raise LeaseError(f"{self.path} is not a volume id written by syncd ({exc})",
                             hint="it is only read, never repaired: remove it while no syncd "
                                  "runs on this volume") from None
        return body

    def _create(self, volume_id: str) -> None:
        own_dir(self.root / RESERVED_DIR, store=str(self.root))
        tmp = self.path.with_name(f".{ID_FILE}.{uuid.uuid4().hex}")
        body = {"v": VERSION, "id": volume_id, "created_wall": time.time(),
                "arbiter": {"url": self.place.url, "bucket": self.place.bucket}}
        write_new(tmp, json.dumps(body, indent=1).encode() + b"\n")
        try:
            with contextlib.suppress(FileExistsError):
                os.link(tmp, self.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    async def existing(self) -> str | None:
        """The recorded volume id, or None when the volume has none yet. LeaseError when
        the volume is arbitrated elsewhere than this config says."""
        body = await asyncio.to_thread(self._read)
        if body is None:
            return None
        recorded = Place(str(body["arbiter"].get("url", "")),
                         str(body["arbiter"].get("bucket", "")))
        if recorded != self.place:
            raise LeaseError(
                f"the lease of volume {self.root} is kept in {recorded.describe()} (recorded "
                f"in {self.path}), but this config would keep it in {self.place.describe()}",
                hint="every host of one volume must use one arbiter: set [lease] bucket and "
                     "endpoint to the recorded one")
        return str(body["id"])

    async def create(self, volume_id: str) -> str:
        """Record `volume_id` unless the volume has an id already; the id it keeps."""
        await asyncio.to_thread(self._create, volume_id)
        # Two first instances on hosts that share the volume may both "win" the link on
        # such a filesystem; whichever file the volume kept is read back once both have
        # landed, so they agree on the id before either takes a lease.
        await asyncio.sleep(self.settle_s)
        kept = await self.existing()
        if kept is None:
            raise LeaseError(f"{self.path} vanished right after it was created",
                             hint="is something cleaning .syncd/ on this volume?")
        return kept


class VolumeArbiter:
    """The Backend of a volume lease, choosing where it is arbitrated on first use: the
    filesystem's link() when `local_exclusive`, else S3 (`make_s3` builds that backend for a
    volume id). With `forced` (lease = "volume") the filesystem always arbitrates, and an
    untrusted filesystem is refused unless `force_ok`."""

    kind = "volume"

    def __init__(self, root: Path, place: Place, make_s3: Any, *, forced: bool,
                 force_ok: bool, settle_s: float = SETTLE_S) -> None:
        self.root = Path(root)
        self.target = str(self.root)
        self.identity = VolumeIdentity(self.root, place, settle_s=settle_s)
        self._make_s3 = make_s3
        self._forced = forced
        self._force_ok = force_ok
        self._inner: Backend | None = None
        self._ready = False  # prepared once: a backend chosen anew is prepared at once
        self.fs: FsType | None = None

    @property
    def arbiter(self) -> str:
        """Where the lease is arbitrated, for operators ("" until decided)."""
        if self._inner is None:
            return ""
        if self._inner.kind == "volume":
            return f"the filesystem ({self.fs.name if self.fs else 'unknown'})"
        return f"{self.identity.place.describe()} (filesystem "\
               f"{self.fs.name if self.fs else 'unknown'})"

    async def _decide(self, *, create: bool) -> Backend | None:
        if self._inner is not None:
            return self._inner
        if not await asyncio.to_thread(self.root.is_dir):
            raise NotFound(f"volume root {self.root} does not exist or is not a directory",
                           store=self.target, hint="is the volume mounted?")
        try:
            fs = await asyncio.to_thread(fs_type, self.root)
        except OSError as exc:
            raise LeaseError(f"volume lease of {self.root}: cannot statfs it: "
                             f"{exc.strerror or exc}") from None
        self.fs = fs
        if local_exclusive(fs) or self._forced:
            if not local_exclusive(fs) and not self._force_ok:
                raise LeaseUnsupported(
                    f"lease = \"volume\" on {self.root} is refused: its filesystem ({fs.name}) "
                    "does not guarantee that link() is exclusive across hosts, so two "
                    "writers could both win the lease",
                    hint="use lease = \"auto\" (an S3 conditional-write lease), or set [lease] "
                         "force_volume = true if only one host ever mounts this volume")
            return await self._chosen(VolumeLease(self.root))
        volume_id = await self.identity.existing()
        if volume_id is None:
            if not create:
                return None
            # The arbiter is proven (reachable, writable, honouring conditions) before the
            # volume records it: a first run with read-only credentials must leave nothing
            # that a corrected config would then contradict.
            candidate = uuid.uuid4().hex
            await self._prepared(await self._make_s3(candidate))
            volume_id = await self.identity.create(candidate)
        return await self._chosen(await self._make_s3(volume_id))

    async def _chosen(self, inner: Backend) -> Backend:
        if self._ready:
            await self._prepared(inner)
        self._inner = inner
        return inner

    async def _prepared(self, inner: Backend) -> Backend:
        try:
            await inner.prepare()
        except LeaseError as exc:
            if inner.kind != "s3":
                raise
            unsupported = isinstance(exc, LeaseUnsupported)
            raise type(exc)(
                f"the lease of volume {self.root} ({self.fs.name if self.fs else '?'}, "
                f"which cannot arbitrate it) is kept in S3: {exc}",
                hint="name a bucket on a server that honours conditional writes in [lease] "
                     "bucket and endpoint" if unsupported else
                f"{exc.hint}; or name a writable bucket in [lease] bucket" if exc.hint
                else "name a writable bucket in [lease] bucket") from None
        return inner

    async def prepare(self) -> None:
        inner = await self._decide(create=True)
        assert inner is not None
        await self._prepared(inner)
        self._ready = True

    async def read(self) -> View:
        inner = await self._decide(create=self._ready)
        if inner is None:
            return View(token=())  # no id yet: nobody ever held it
        return await inner.read()

    async def create(self, view: View, record: LeaseRecord) -> Any | None:
        assert self._inner is not None, "prepared first"
        return await self._inner.create(view, record)

    async def renew(self, record: LeaseRecord, token: Any) -> Any:
        """Also looks again at the filesystem: a volume mounted (or unmounted) over the root
        since the choice was made is another filesystem, whose lease is decided anew."""
        assert self._inner is not None, "prepared first"
        try:
            now = await asyncio.to_thread(fs_type, self.root)
        except OSError as exc:
            raise StoreError(f"volume lease of {self.root}: cannot statfs it: "
                             f"{exc.strerror or exc}", store=self.target) from None
        if now != self.fs:
            was, self._inner, self.fs = self.fs, None, None
            raise LeaseLost(f"lease on {self.target}: the filesystem under it changed from "
                            f"{was} to {now} (mounted or unmounted); its lease is decided anew")
        return await self._inner.renew(record, token)

    def superseded(self, record: LeaseRecord) -> bool:
        return self._inner is not None and self._inner.superseded(record)

    async def commit(self, record: LeaseRecord) -> None:
        if self._inner is not None:
            await self._inner.commit(record)

    async def close(self) -> None:
        if self._inner is not None:
            with contextlib.suppress(SyncdError):
                await self._inner.close()
