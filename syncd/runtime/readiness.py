"""/readyz: can a worker of this datacenter load its models from the volume now?

Judged from the status files the lease holder writes on the volume (whichever instance holds
it), so a sidecar in standby is as ready as the holder's work. A pull mirror with artifacts is
ready once each artifact has a published, verified version (an older one while a newer is
built still counts: a model update must not take every worker out of service); one without
artifacts once a pass has synced everything. Push mirrors never gate readiness.

The status files live on a network filesystem that can hang: one read at a time runs on a
thread of its own, probes share it and wait at most a timeout, and while a hung read is
outstanding no other is started, so probes answer "not ready" instead of piling up threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path
from typing import Any

from syncd import status
from syncd.config import Config, MirrorConfig
from syncd.ops.http import Verdict

READ_TIMEOUT_S = 5.0


def judge(mirrors: list[tuple[MirrorConfig, status.MirrorStatus]],
          unreadable: dict[str, str] | None = None) -> Verdict:
    """`unreadable` names mirrors whose status could not be read, and why."""
    missing = [f"{name}: status unreadable: {why}"
               for name, why in sorted((unreadable or {}).items())]
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
        present = {n: a for n, a in st.artifacts.items() if a.state != status.GONE}
        if not present:  # nothing to load is not "everything loaded"
            missing.append(f"{mirror.name}: no artifact matching "
                           f"{', '.join(mirror.artifacts)} in the source")
        for name, art in sorted(present.items()):
            if art.current is None:
                missing.append(f"{mirror.name}/{name}: {art.state}"
                               + (f": {art.detail}" if art.detail else ""))
            elif not art.ready:
                updating.append(f"{mirror.name}/{name}: {art.state}"
                                + (f": {art.detail}" if art.detail else ""))
    ok = not missing
    return Verdict(ok, {"ready": ok, "missing": missing, "updating": updating,
                        "mirrors": body})


class Reader:
    """Reads the status files for /readyz, one read at a time: concurrent probes share the
    read in flight. Reads run on daemon threads, so one hung on a dead mount holds neither
    the event loop nor the process's exit."""

    def __init__(self, timeout_s: float = READ_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self._pending: asyncio.Future[Any] | None = None
        self._since = 0.0

    async def check(self, config: Config, mirrors: list[MirrorConfig]) -> Verdict:
        pulls = [(m, Path(root)) for m in mirrors if m.direction == "pull"
                 and (root := config.volume_root(m)) is not None]
        loop = asyncio.get_running_loop()
        job = self._pending
        if job is None or job.done():
            job = self._pending = self._start(loop, pulls)
            self._since = loop.time()
        left = self.timeout_s - (loop.time() - self._since)
        if left <= 0:
            return judge([], {m.name: "an earlier read of the volume has not returned for "
                                      f"{loop.time() - self._since:.0f} s" for m, _ in pulls})
        try:
            statuses, unreadable = await asyncio.wait_for(asyncio.shield(job), left)
        except TimeoutError:
            return judge([], {m.name: f"the volume did not answer within {self.timeout_s:g} s"
                              for m, _ in pulls})
        return judge(statuses, unreadable)

    @staticmethod
    def _start(loop: asyncio.AbstractEventLoop,
               pulls: list[tuple[MirrorConfig, Path]]) -> asyncio.Future[Any]:
        job: asyncio.Future[Any] = loop.create_future()
        job.add_done_callback(lambda f: f.cancelled() or f.exception())  # never "unretrieved"

        def settle(outcome: Any, failed: bool) -> None:
            if job.done():
                return
            if failed:
                job.set_exception(outcome)
            else:
                job.set_result(outcome)

        def read() -> None:
            outcome: Any
            try:
                outcome, failed = _read_all(pulls), False
            except Exception as exc:  # handed to the waiting probe
                outcome, failed = exc, True
            with contextlib.suppress(RuntimeError):  # the loop closed while we hung
                loop.call_soon_threadsafe(settle, outcome, failed)

        threading.Thread(target=read, name="readyz", daemon=True).start()
        return job


def _read_all(pulls: list[tuple[MirrorConfig, Path]]
              ) -> tuple[list[tuple[MirrorConfig, status.MirrorStatus]], dict[str, str]]:
    statuses: list[tuple[MirrorConfig, status.MirrorStatus]] = []
    unreadable: dict[str, str] = {}
    for m, root in pulls:
        try:
            statuses.append((m, status.read(root, m.name, strict=True)))
        except OSError as exc:
            unreadable[m.name] = exc.strerror or type(exc).__name__
    return statuses, unreadable
