"""Per-mirror record of what syncd published, under the volume's `.syncd/state/`.

It lets a no-op run skip unchanged files without re-reading or re-hashing them: a key whose
source and destination fingerprints both match the record is in sync. It is a cache, not the
truth: a missing or unreadable record only costs re-hashing (planner `Adopt`), never a wrong
skip, so a corrupt file is ignored rather than fatal. Saved by tmp + fsync + rename.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from syncd import durable
from syncd.keys import RESERVED_DIR
from syncd.listing import Record, Recorded

VERSION = 1


def path_for(root: Path, mirror: str) -> Path:
    return root / RESERVED_DIR / "state" / f"{mirror}.json"


def _read(path: Path) -> Record:
    try:
        data = json.loads(path.read_bytes())
        if data.get("version") != VERSION:
            return {}
        return {k: Recorded(*v) for k, v in data["entries"].items()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}


def _write(path: Path, record: Record) -> None:
    body = json.dumps(
        {"version": VERSION,
         "entries": {k: [r.src, r.dst, r.checksum, r.gen] for k, r in record.items()}},
        separators=(",", ":"), ensure_ascii=False,
    ).encode("utf-8")
    durable.replace(path, body)


async def load(root: Path, mirror: str) -> Record:
    return await asyncio.to_thread(_read, path_for(root, mirror))


async def save(root: Path, mirror: str, record: Record) -> None:
    await asyncio.to_thread(_write, path_for(root, mirror), dict(record))
