"""The daemon's one HTTP endpoint: /metrics, /healthz, /readyz. Reads state, never changes it.

Bound to loopback by default: the bodies name mirrors, artifacts and errors (never a
credential or a file's content), which is for the pod or the host, not for the world.
/healthz answers "restart me?" (is the event loop turning, is any mirror stalled) and stays
200 while S3 is down: a restart would not bring it back. /readyz answers "can a worker load
its model from the volume?" and the body says what is missing.

A request aiohttp cannot parse (garbage, a line too long, a header without a colon) is the
client's fault, not ours: it is answered 400 and logged as one event, never a traceback.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import http_exceptions, web
from prometheus_client import CONTENT_TYPE_LATEST

from syncd.errors import ListenFailed
from syncd.ops import logging as logs

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Verdict:
    """An answer to "healthy?" or "ready?": 200 or 503, and a JSON body saying why."""

    ok: bool
    body: dict[str, Any]


@web.middleware
async def _logged(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A failing handler answers a JSON 500 and logs one event, not a bare traceback."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception as exc:  # one bad scrape must not kill the endpoint
        logs.get().error("http_handler_failed", path=request.path,
                         error=f"{type(exc).__name__}: {exc}")
        return web.json_response({"error": "internal error", "path": request.path},
                                 status=500)


class _OneEvent(logging.Handler):
    """aiohttp reports a request it could not parse, or a failure of its own, to a stdlib
    logger with the traceback attached; with no handler Python prints that traceback to
    stderr, dozens of lines inside the JSON log (issue 18). Here each record becomes one
    structlog event: what failed and why, in one line, without the traceback."""

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        log = logs.get()
        if isinstance(exc, http_exceptions.HttpProcessingError):
            event, why, emit = "http_bad_request", exc.message, log.warning
        else:
            event, why, emit = "http_server_error", str(exc or ""), log.error
        if record.levelno < logging.INFO:  # aiohttp's choice: e.g. a first line not HTTP
            emit = log.debug
        error = f"{type(exc).__name__}: {' '.join(why.split())[:300]}" if exc else None
        emit(event, detail=record.getMessage(), error=error)


_AIOHTTP_LOG = logging.Logger("syncd.http", logging.DEBUG)  # outside the logging tree
_AIOHTTP_LOG.addHandler(_OneEvent())


def _json(verdict: Verdict) -> web.Response:
    return web.Response(status=200 if verdict.ok else 503, content_type="application/json",
                        text=json.dumps(verdict.body, indent=1, sort_keys=True) + "\n",
                        headers={"Cache-Control": "no-store"})


class Server:
    """The endpoint's lifecycle: bound by `start` (so errors come before READY=1), closed by
    `stop`. It only calls the three readers it is given."""

    def __init__(self, host: str, port: int, *, metrics: Callable[[], bytes],
                 health: Callable[[], Verdict], ready: Callable[[], Awaitable[Verdict]]) -> None:
        self.host, self.port = host, port
        self._metrics, self._health, self._ready = metrics, health, ready
        app = web.Application(middlewares=[_logged])
        app.router.add_get("/metrics", self._get_metrics)
        app.router.add_get("/healthz", self._get_health)
        app.router.add_get("/readyz", self._get_ready)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     logger=_AIOHTTP_LOG)

    async def start(self) -> None:
        """Bind now, so a taken port fails the start with one line, not a later surprise."""
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise ListenFailed(f"http.listen: cannot listen on {self.host}:{self.port}: "
                               f"{exc.strerror or exc}",
                               hint="pick a free port, or set http.listen = \"\" to turn "
                                    "the endpoint off") from None
        if self.port == 0:  # an ephemeral port (tests): report the real one
            for address in self._runner.addresses:
                self.port = int(address[1])
                break

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _get_metrics(self, _: web.Request) -> web.Response:
        body = self._metrics()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _get_health(self, _: web.Request) -> web.Response:
        return _json(self._health())

    async def _get_ready(self, _: web.Request) -> web.Response:
        return _json(await self._ready())
