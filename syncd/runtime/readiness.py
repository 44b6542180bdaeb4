"""/readyz: can a worker of this datacenter load its models from the volume now?

Judged from the status files the lease holder writes on the volume (whichever instance holds
it), so a sidecar in standby is as ready as the holder's work. A pull mirror with artifacts is
ready once each artifact has a published, verified version (an older one while a newer is
built still counts: a model update must not take every worker out of service); one without
artifacts once a pass has synced everything. Push mirrors never gate readiness.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from syncd import status
from syncd.config import Config, MirrorConfig
from syncd.ops.http import Verdict


def judge(mirrors: list[tuple[MirrorConfig, status.MirrorStatus]]) -> Verdict:
    missing: list[str] = []
    updating: list[str] = []
    body: dict[str, object] = {}
    for mirror, st in mirrors:
        body[mirror.name] = {"last_ok_wall": st.last_ok_wall, "error": st.error,
                             "artifacts": {n: {"state": a.state, "current": a.current,
                                               "wanted": a.wanted}
                                           for n, a in sorted(st.artifacts.items())}}
        if not st.updated_wall:
            missing.append(f"{mirror.name}: no pass has finished yet")
            continue
        if not mirror.artifacts:
            if st.last_ok_wall is None:
                missing.append(f"{mirror.name}: not synced yet"
                               + (f" ({st.error})" if st.error else ""))
            continue
        for name, art in sorted(st.artifacts.items()):
            if art.state == status.GONE:
                continue
            if art.current is None:
                missing.append(f"{mirror.name}/{name}: {art.state}"
                               + (f": {art.detail}" if art.detail else ""))
            elif not art.ready:
                updating.append(f"{mirror.name}/{name}: {art.state}"
                                + (f": {art.detail}" if art.detail else ""))
    ok = not missing
    return Verdict(ok, {"ready": ok, "missing": missing, "updating": updating,
                        "mirrors": body})


async def check(config: Config, mirrors: list[MirrorConfig]) -> Verdict:
    pulls = [(m, Path(root)) for m in mirrors if m.direction == "pull"
             and (root := config.volume_root(m)) is not None]
    statuses = await asyncio.to_thread(
        lambda: [(m, status.read(root, m.name)) for m, root in pulls])
    return judge(statuses)
