"""`syncd wait`: block until an artifact's current version is published on the volume.

Reads only the volume (the status file the lease holder writes after every pass, and the
artifact's link), so a worker on any host that mounts the volume can call it from its
entrypoint, with or without the daemon's config, and without S3 credentials.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path

from syncd import status
from syncd.artifacts import artifact_of
from syncd.config import Config
from syncd.errors import ConfigError, NotReady
from syncd.keys import RESERVED_DIR


@dataclass(frozen=True, slots=True)
class Target:
    root: Path  # the mirror's volume root
    mirrors: tuple[str, ...]  # whose status files may name the artifact
    artifact: str  # its path relative to the root


def from_config(config: Config, artifact: str, names: list[str] | None) -> Target:
    """ARTIFACT as a path relative to a pull mirror's root, or an absolute path inside one."""
    dc = config.active_datacenter()
    for m in config.mirrors:
        if m.direction != "pull" or dc not in m.volumes or (names and m.name not in names):
            continue
        root = Path(m.volumes[dc])
        rel = artifact.strip("/")
        if os.path.isabs(artifact):
            if not Path(artifact).is_relative_to(root):
                continue
            rel = str(Path(artifact).relative_to(root))
        if rel and artifact_of(f"{rel}/x", m.artifacts) == rel:
            return Target(root, (m.name,), rel)
    raise ConfigError(f"no pull mirror of datacenter {dc!r} declares an artifact {artifact!r}",
                      file=config.source, field="mirrors.artifacts")


def from_path(path: str) -> Target:
    """An absolute path on the volume, no config: the root is the nearest directory above
    that holds syncd's status files."""
    p = Path(path)
    if not p.is_absolute():
        raise ConfigError("without a config, ARTIFACT must be an absolute path on the volume",
                          hint="pass --config PATH or set SYNCD_CONFIG")
    for root in p.parents:
        statuses = root / RESERVED_DIR / "status"
        if statuses.is_dir():
            names = tuple(sorted(f.stem for f in statuses.glob("*.json")))
            return Target(root, names, str(p.relative_to(root)))
    raise NotReady(f"{path}: no syncd status above it yet (is the volume mounted and the "
                   "daemon running?)")


def _check(target: Target) -> tuple[Path | None, str]:
    """The published content directory, or None and what is missing."""
    found = [st for name in target.mirrors
             if (st := status.read(target.root, name).artifacts.get(target.artifact))]
    if not found:
        return None, "not published yet (the daemon has not reported it)"
    st = found[0]
    if not st.ready:
        return None, f"{st.state}" + (f": {st.detail}" if st.detail else "")
    real = Path(os.path.realpath(target.root / target.artifact))
    if f"/{st.current}/" not in f"{real}/" or not real.is_dir():
        return None, f"its link does not point at version {st.current} yet"
    return real, "ready"


async def wait(target: Target, timeout_s: float, poll_s: float = 0.5) -> Path:
    deadline = time.monotonic() + timeout_s
    while True:
        ready, why = await asyncio.to_thread(_check, target)
        if ready is not None:
            return ready
        if time.monotonic() >= deadline:
            raise NotReady(f"artifact {target.artifact!r} under {target.root} not ready after "
                           f"{timeout_s:g}s: {why}")
        await asyncio.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
