"""What a holder killed mid-write left on the volume, removed by the next holder.

Every name syncd writes under is temporary first, then renamed into place:

    .syncd/tmp/*                               staging files, partial downloads, seed copies,
                                               link probes: `VolumeStore.clean_temporaries`,
                                               on every pull pass
    <artifact's directory>/.<name>.syncd-<12 hex>   an artifact switch's new link: `Versions.sweep`
    .syncd/state/.<mirror>.json.<32 hex>.tmp   `durable.replace`'s temp files of this mirror's
    .syncd/status/.<mirror>.json.<32 hex>.tmp  record and status
    .syncd/.volume.json.<32 hex>.tmp           the volume's record (lease/arbiter.py)

A kill between creating one and renaming it leaves it for good, so the first pass of each
lease generation (a new holder, or the same one after it lost the lease) removes those of
its mirror, each after a fence check, and only names exactly of those forms.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import stat
from pathlib import Path
from urllib.parse import unquote

from syncd import published, status
from syncd.config import MirrorConfig
from syncd.keys import unsafe_reason
from syncd.lease.arbiter import ID_FILE
from syncd.stores.base import Fence
from syncd.stores.versions import Versions
from syncd.stores.volume import VolumeStore


async def sweep(volume: VolumeStore, mirror: MirrorConfig, fence: Fence) -> int:
    """Remove this mirror's leftovers from `volume`; returns how many."""
    removed = 0
    for path in (published.path_for(volume.root, mirror.name),
                 status.path_for(volume.root, mirror.name),
                 volume.meta_dir / ID_FILE):  # the volume's record, written once
        with volume.translated():
            removed += await asyncio.to_thread(_durable_temps, path, fence)
    if mirror.direction == "pull" and mirror.artifacts:
        for name in await asyncio.to_thread(_artifacts, volume.meta_dir / "artifacts"):
            removed += await Versions(volume, name).sweep(fence)
    return removed


def _durable_temps(path: Path, fence: Fence) -> int:
    """Temp files `durable.replace` left beside `path`: `.<name>.<uuid4 hex>.tmp`."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[0-9a-f]{{32}}\.tmp")
    removed = 0
    with contextlib.suppress(FileNotFoundError, NotADirectoryError), os.scandir(
            path.parent) as it:
        found = [e.name for e in it if pattern.fullmatch(e.name)]
        for name in found:
            leftover = path.parent / name
            if not stat.S_ISREG(os.lstat(leftover).st_mode):
                continue
            fence.check()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
                removed += 1
    return removed


def _artifacts(base: Path) -> list[str]:
    """Every artifact that ever had a version here (each has a directory under `base`)."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError), os.scandir(base) as it:
        names = (unquote(e.name) for e in it if e.is_dir(follow_symlinks=False))
        return sorted(n for n in names if unsafe_reason(n) is None)
    return []
