"""The daemon's one HTTP endpoint: /metrics, /healthz, /readyz. Reads state, never changes it.

Bound to loopback by default: the bodies name mirrors, artifacts and errors (never a
credential or a file's content), which is for the pod or the host, not for the world.
/healthz answers "restart me?" (is the event loop turning, is any mirror stalled) and stays
200 while S3 is down: a restart would not bring it back. /readyz answers "can a worker load
its model from the volume?" and the body says what is missing.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from syncd.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    body: dict[str, Any]


def _json(verdict: Verdict) -> web.Response:
    return web.Response(status=200 if verdict.ok else 503, content_type="application/json",
                        text=json.dumps(verdict.body, indent=1, sort_keys=True) + "\n",
                        headers={"Cache-Control": "no-store"})


class Server:
    def __init__(self, host: str, port: int, *, metrics: Callable[[], bytes],
                 health: Callable[[], Verdict], ready: Callable[[], Awaitable[Verdict]]) -> None:
        self.host, self.port = host, port
        self._metrics, self._health, self._ready = metrics, health, ready
        app = web.Application()
        app.router.add_get("/metrics", self._get_metrics)
        app.router.add_get("/healthz", self._get_health)
        app.router.add_get("/readyz", self._get_ready)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)

    async def start(self) -> None:
        """Bind now, so a taken port fails the start with one line, not a later surprise."""
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise ConfigError(f"cannot listen on {self.host}:{self.port}: "
                              f"{exc.strerror or exc}", field="http.listen",
                              hint="pick a free port, or set http.listen = \"\" to turn "
                                   "the endpoint off") from None
        if self.port == 0:  # an ephemeral port (tests): report the real one
            server = getattr(site, "_server", None)
            sockets = getattr(server, "sockets", None) or []
            if sockets:
                self.port = sockets[0].getsockname()[1]

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _get_metrics(self, _: web.Request) -> web.Response:
        body = self._metrics()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _get_health(self, _: web.Request) -> web.Response:
        return _json(self._health())

    async def _get_ready(self, _: web.Request) -> web.Response:
        return _json(await self._ready())
