"""syncd.ops.http: the three endpoints, their status codes, and a clear error for a taken port."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import structlog

from syncd.errors import ExitCode, ListenFailed
from syncd.ops import logging as logs
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


MALFORMED = [  # (what, bytes, whether the client hangs up before the request is whole)
    ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n", False),
    ("request line too long", b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n", False),
    ("bad method", b"G(T /healthz HTTP/1.1\r\nHost: x\r\n\r\n", False),
    ("header without colon", b"GET /healthz HTTP/1.1\r\nHost: x\r\nnocolon\r\n\r\n", False),
    ("header too long", b"GET /healthz HTTP/1.1\r\nX: " + b"b" * 20_000 + b"\r\n\r\n", False),
    ("bad version", b"GET /healthz HTTP/9.x\r\n\r\n", False),
    ("bad content-length", b"POST /metrics HTTP/1.1\r\nContent-Length: -1\r\n\r\n", False),
    ("disconnect mid-headers", b"GET /healthz HTTP/1.1\r\nHo", True),
    ("disconnect mid-body", b"POST /healthz HTTP/1.1\r\nContent-Length: 99\r\n\r\nab", True),
]


async def _raw(port: int, payload: bytes, *, hang_up: bool) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        if hang_up:
            return b""
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@pytest.fixture
def json_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The daemon's JSON log setup, writing to a file in place of stderr (where Python's
    last-resort logging handler would print a traceback too)."""
    path = tmp_path / "log.jsonl"
    with path.open("w", encoding="utf-8") as out:
        monkeypatch.setattr(sys, "stderr", out)
        logs.setup("info", fmt="json")
        try:
            yield path
        finally:
            structlog.reset_defaults()


async def test_malformed_requests_get_400_and_at_most_one_json_line_each_no_traceback(
        json_log: Path, caplog: pytest.LogCaptureFixture) -> None:
    srv = Server("127.0.0.1", 0, metrics=lambda: b"",
                 health=lambda: Verdict(True, {"ok": True}), ready=_ready_no)
    await srv.start()
    try:
        for what, payload, hang_up in MALFORMED:
            answer = await _raw(srv.port, payload, hang_up=hang_up)
            assert hang_up or (answer.startswith(b"HTTP/1.") and b" 400 " in answer[:16]), what
            status, _, body = await _get(srv, "/healthz")  # still answering
            assert (status, json.loads(body)) == (200, {"ok": True}), what
    finally:
        await srv.stop()  # every connection handled and closed: its log lines are written
    # Nothing went to stdlib logging, whose default handler prints the traceback.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    text = await asyncio.to_thread(json_log.read_text, encoding="utf-8")
    assert "Traceback" not in text
    events = [json.loads(line) for line in text.splitlines()]
    assert len(events) <= len(MALFORMED)
    assert {e["event"] for e in events} <= {"http_bad_request"}
    errors = " | ".join(e["error"] for e in events)
    for needle in ("LineTooLong: Got more than 8190 bytes", "Invalid header token"):
        assert needle in errors, errors
