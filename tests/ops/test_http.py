"""syncd.ops.http: the three endpoints, their status codes, and a clear error for a taken port."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
import structlog

from syncd.errors import ExitCode, ListenFailed
from syncd.ops.http import Server, Verdict
from syncd.ops.metrics import Metrics


async def _ready_no() -> Verdict:
    return Verdict(False, {"ready": False, "missing": ["m/llama: building"]})


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    metrics = Metrics()
    metrics.mirror("m", "pull").streamed(7)
    srv = Server("127.0.0.1", 0, metrics=metrics.render,
                 health=lambda: Verdict(True, {"ok": True}), ready=_ready_no)
    await srv.start()
    yield srv
    await srv.stop()


async def _get(srv: Server, path: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{srv.port}{path}") as resp:
        return resp.status, resp.headers["Content-Type"], await resp.text()


async def test_server_reports_the_bound_port_of_an_ephemeral_listen(server: Server) -> None:
    assert server.port > 0


async def test_metrics_are_prometheus_text(server: Server) -> None:
    status, ctype, body = await _get(server, "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    assert 'syncd_transferred_bytes_total{direction="pull",mirror="m"} 7.0' in body


async def test_healthz_is_200_when_ok_and_readyz_503_with_what_is_missing(server: Server) -> None:
    status, ctype, body = await _get(server, "/healthz")
    assert (status, json.loads(body)) == (200, {"ok": True})
    assert ctype.startswith("application/json")
    status, _, body = await _get(server, "/readyz")
    assert status == 503 and json.loads(body)["missing"] == ["m/llama: building"]


async def test_unknown_paths_and_methods_are_refused(server: Server) -> None:
    assert (await _get(server, "/"))[0] == 404
    async with aiohttp.ClientSession() as session, session.post(
            f"http://127.0.0.1:{server.port}/metrics") as resp:
        assert resp.status == 405


async def test_a_taken_port_fails_the_start_with_one_line_naming_the_field() -> None:
    """Exit 1, not the config code: during a restart the old process may still hold the port
    for a moment, and systemd's Restart=on-failure must try again."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        srv = Server("127.0.0.1", port, metrics=lambda: b"",
                     health=lambda: Verdict(True, {}), ready=_ready_no)
        with pytest.raises(ListenFailed) as err:
            await srv.start()
    assert "http.listen" in str(err.value) and f"127.0.0.1:{port}" in str(err.value)
    assert err.value.exit_code == ExitCode.ERROR
    assert "\n" not in str(err.value)


async def test_a_failing_handler_answers_500_json_and_logs_one_event() -> None:
    def broken() -> Verdict:
        raise RuntimeError("boom")

    srv = Server("127.0.0.1", 0, metrics=lambda: b"", health=broken, ready=_ready_no)
    await srv.start()
    try:
        with structlog.testing.capture_logs() as logs:
            code, ctype, body = await _get(srv, "/healthz")
    finally:
        await srv.stop()
    assert code == 500 and ctype.startswith("application/json")
    assert json.loads(body) == {"error": "internal error", "path": "/healthz"}
    [event] = [e for e in logs if e["event"] == "http_handler_failed"]
    assert event["path"] == "/healthz" and event["error"] == "RuntimeError: boom"
