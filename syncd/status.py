"""What a mirror last achieved, on its volume: `.syncd/status/<mirror>.json`.

Written after every pass by the lease holder, read by `syncd wait` (a worker's entrypoint,
possibly on another host sharing the volume), `syncd status` and the readiness probe. It also
remembers when each artifact version was retired, so old versions are pruned after their
grace period even across restarts. Missing or unreadable means "nothing known yet".
Only a holder writes it, right after a fence check: a holder fenced out midway must not
overwrite what its successor reported (readiness would follow the stale one).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from syncd import durable
from syncd.keys import RESERVED_DIR
from syncd.stores.base import Fence

VERSION = 1
READY, BUILDING, HELD, FAILED, GONE = "ready", "building", "held", "failed", "gone"


@dataclass(slots=True)
class ArtifactStatus:
    state: str  # READY: `current` is the version the source holds; else why not
    current: str | None = None  # the version the volume's link points at
    wanted: str | None = None  # the version the source holds (None: not yet known)
    detail: str | None = None
    files: int = 0
    bytes: int = 0
    checked_wall: float = 0.0  # when the source was last looked at

    @property
    def ready(self) -> bool:
        return self.state == READY and self.current is not None and self.current == self.wanted


@dataclass(slots=True)
class MirrorStatus:
    mirror: str
    updated_wall: float = 0.0
    last_ok_wall: float | None = None  # end of the last pass without errors
    error: str | None = None  # the last pass's error, if it failed
    deletes_refused: str | None = None  # why the last pass held deletes back
    artifacts: dict[str, ArtifactStatus] = field(default_factory=dict)
    retired: dict[str, dict[str, float]] = field(default_factory=dict)  # artifact -> ver -> t

    def to_json(self) -> bytes:
        return json.dumps({"version": VERSION, **asdict(self)}, indent=1,
                          sort_keys=True).encode()


REFRESH_S = 300.0  # an unchanged status is still rewritten this often (its times move on)


def content(st: MirrorStatus) -> bytes:
    """The status without its clocks: what a pass must persist when it changes."""
    body = asdict(st)
    for key in ("updated_wall", "last_ok_wall"):
        body.pop(key)
    for art in body["artifacts"].values():
        art.pop("checked_wall")
    return json.dumps(body, sort_keys=True).encode()


def path_for(root: Path, mirror: str) -> Path:
    return root / RESERVED_DIR / "status" / f"{mirror}.json"


def read(root: Path, mirror: str, *, strict: bool = False) -> MirrorStatus:
    """The status, or an empty one when there is none yet. `strict` lets an unreadable
    file (permissions, I/O errors) raise instead of passing for "no pass has finished"."""
    try:
        raw = path_for(root, mirror).read_bytes()
    except FileNotFoundError:
        return MirrorStatus(mirror)
    except OSError:
        if strict:
            raise
        return MirrorStatus(mirror)
    try:
        data: dict[str, Any] = json.loads(raw)
        if data.get("version") != VERSION:
            return MirrorStatus(mirror)
        arts = {k: ArtifactStatus(**v) for k, v in data.get("artifacts", {}).items()}
        return MirrorStatus(
            mirror, float(data.get("updated_wall", 0)), data.get("last_ok_wall"),
            data.get("error"), data.get("deletes_refused"), arts,
            {a: {v: float(t) for v, t in vs.items()} for a, vs in data.get("retired", {}).items()})
    except (ValueError, TypeError, AttributeError):
        return MirrorStatus(mirror)


def _write(root: Path, status: MirrorStatus) -> None:
    durable.replace(path_for(root, status.mirror), status.to_json())


async def load(root: Path, mirror: str) -> MirrorStatus:
    return await asyncio.to_thread(read, root, mirror)


async def save(root: Path, status: MirrorStatus, fence: Fence) -> None:
    def write() -> None:
        fence.check()
        _write(root, status)
    await asyncio.to_thread(write)
