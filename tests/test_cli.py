"""syncd.cli: the `health` verb, the exit code of a pass where some files failed, and what an
unexpected error leaves for the user (one line) and for the log (its traceback).

`health`: whatever answers (or does not) at the URL, one line and exit 1. A container
HEALTHCHECK runs it every few seconds; a traceback there hides the reason and an exit code
other than 0/1 means something else to Docker. Each case is a real socket on 127.0.0.1
answering the way a wrong or broken endpoint would. The end-to-end runs of per-file failures
are tests/e2e/test_reports.py.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import structlog
import typer

from syncd.cli import _probe, _run
from syncd.errors import (
    AccessDenied,
    ExitCode,
    IntegrityError,
    Interrupted,
    NotFound,
    SourceChanged,
    StoreError,
    SyncdError,
)
from syncd.ops import logging as logs
from syncd.runtime.oneshot import failure as _failure
from syncd.transfer import Stats
from tests.mirrors import SYNCD, env

Answer = tuple[int, bytes]


@pytest.fixture
def serve() -> Iterator[Callable[[Answer], str]]:
    """An HTTP server answering every GET with one fixed (status, body); yields its URL."""
    servers: list[ThreadingHTTPServer] = []

    def start(answer: Answer) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(answer[0])
                self.send_header("Content-Length", str(len(answer[1])))
                self.end_headers()
                self.wfile.write(answer[1])

            def log_message(self, *_args: object) -> None:
                pass

        srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}/healthz"

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def test_a_healthy_answer_counts_the_mirrors(serve: Callable[[Answer], str]) -> None:
    url = serve((200, b'{"ok": true, "mirrors": {"a": {}, "b": {}}}'))
    assert _probe(url, 5) == (True, "healthy (2 mirrors)")


def test_an_unhealthy_answer_names_the_stalled_mirrors(serve: Callable[[Answer], str]) -> None:
    url = serve((503, b'{"ok": false, "loop_stuck_s": 0.2, '
                      b'"mirrors": {"a": {"stalled": true}, "b": {"stalled": false}}}'))
    assert _probe(url, 5) == (
        False, "unhealthy (HTTP 503): event loop late 0.2s, stalled mirrors: a")


@pytest.mark.parametrize("answer", [(200, b"<html>hello</html>"), (200, b"[1, 2]"),
                                    (503, b"Service Unavailable"), (500, b'"down"')])
def test_something_else_at_the_url_is_one_line(serve: Callable[[Answer], str],
                                               answer: Answer) -> None:
    url = serve(answer)
    assert _probe(url, 5) == (
        False, f"{url} (HTTP {answer[0]}) did not answer like syncd's /healthz")


def test_a_peer_that_hangs_up_without_answering_is_one_line() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def hang_up() -> None:
            conn, _ = listener.accept()
            conn.recv(4096)
            conn.close()

        threading.Thread(target=hang_up, daemon=True).start()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/healthz"
        ok, line = _probe(url, 5)
    assert not ok and line.startswith(f"no answer from {url}: "), line


def test_a_proxy_in_the_environment_is_not_used(serve: Callable[[Answer], str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """http_proxy is common in corporate containers; the probe talks to its own daemon."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}"
    for var in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, dead)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert _probe(serve((200, b'{"mirrors": {}}')), 5) == (True, "healthy (0 mirrors)")


def test_an_unreadable_config_exits_1_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "syncd.toml"
    bad.write_text("[http]\nlisten = 'nowhere'\n\n[[mirrors]]\nname = 'm'\nbucket = 'models'\n"
                   "direction = 'pull'\nvolumes = { dc1 = '/srv/m' }\n")
    plain = {k: v for k, v in env().items() if k != "SYNCD_HTTP__LISTEN"}
    done = subprocess.run([SYNCD, "health", "--config", str(bad)], env=plain,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1 and "http.listen" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


# pydantic is not listed: typer imports it itself
HEAVY = ("syncd.config", "structlog", "aiohttp", "awscrt", "aiobotocore", "botocore")


@pytest.mark.parametrize("argv", [["--version"],
                                  ["health", "--url", "http://127.0.0.1:1/healthz"]])
def test_one_line_answers_load_none_of_the_heavy_libraries(argv: list[str]) -> None:
    """`syncd health` is a container HEALTHCHECK every 30 s: importing the sync engine's
    libraries would cost ~0.5 s of CPU each time, more than the daemon uses at rest."""
    code = ("import atexit, sys\n"
            f"atexit.register(lambda: print(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
            f"sys.argv = ['syncd', *{argv!r}]\n"
            "from syncd.cli import main\n"
            "main()\n")
    done = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.stdout.splitlines()[-1] == "[]", done.stdout + done.stderr


def test_health_reads_the_listen_variable_as_the_daemon_does(
        serve: Callable[[Answer], str], tmp_path: Path) -> None:
    """SYNCD_* values are TOML when they parse as TOML: a quoted address is the address."""
    url = serve((200, b'{"mirrors": {}}'))
    port = url.split(":")[2].split("/")[0]
    quoted = {**env(), "SYNCD_HTTP__LISTEN": f'"127.0.0.1:{port}"'}
    done = subprocess.run([SYNCD, "health"], env=quoted, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0 and done.stdout == "healthy (0 mirrors)\n", done.stderr


# --- per-file failures --------------------------------------------------------------------------

ONE_FILE = [
    NotFound("s3://b/m/gone.bin does not exist", store="s3://b", key="gone.bin"),
    StoreError("/v/a: is a directory, not a file (Is a directory)", store="/v", key="a"),
    SourceChanged("/v/b changed while it was uploaded", store="/v", key="b"),
    AccessDenied("cannot read /v/c: Permission denied", store="/v", key="c"),
    Interrupted("connection reset", store="s3://b", key="d"),
    StoreError("m/e: KeyTooLongError: Your key is too long", store="s3://b", key="e"),
]


def _stats(*errors: SyncdError, failed: int | None = None) -> Stats:
    stats = Stats(copied=3)
    stats.errors.extend(errors)
    stats.failed = len(errors) if failed is None else failed
    return stats


@pytest.mark.parametrize("error", ONE_FILE, ids=lambda e: type(e).__name__)
def test_failure_of_files_of_one_kind_exits_10_not_that_kinds_code(error: SyncdError) -> None:
    """A key gone since the listing is not a missing bucket (7), a denied read not bad
    credentials (6), a conflict or a changed file not an unexpected failure (1)."""
    err = _failure("m", _stats(error, error))
    assert err.exit_code == ExitCode.PARTIAL
    assert int(err.exit_code) == 10
    assert str(err).startswith("2 file(s) of mirror m failed, first: ")
    assert error.message in str(err)


def test_failure_exits_9_only_when_every_failed_file_failed_its_checksum() -> None:
    bad = IntegrityError("m/x: crc64nvme does not match", store="s3://b", key="x")
    assert _failure("m", _stats(bad, bad)).exit_code == ExitCode.INTEGRITY
    assert _failure("m", _stats(bad, ONE_FILE[0])).exit_code == ExitCode.PARTIAL


def test_failure_counted_without_an_error_is_one_line_and_exit_10() -> None:
    """An artifact build counts a file that differs from its manifest without an error
    object; the summary must not fail on it (it used to raise IndexError: exit 1)."""
    err = _failure("m", _stats(failed=1))
    assert err.exit_code == ExitCode.PARTIAL
    assert str(err) == "1 file(s) of mirror m failed"


# --- unexpected errors --------------------------------------------------------------------------


def test_an_unexpected_error_is_one_line_for_the_user_and_its_traceback_in_the_log(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a SyncdError: a bug, or a failure syncd does not know yet. The user reads one line
    and exit 1; whoever reports it finds the traceback in the log."""
    async def broken() -> int:
        return {"present": 0}["missing"]

    stderr = tmp_path / "stderr"
    with stderr.open("w", encoding="utf-8") as out:
        monkeypatch.setattr(sys, "stderr", out)
        logs.setup("info", fmt="json")
        try:
            with pytest.raises(typer.Exit) as done:
                _run(broken)
        finally:
            structlog.reset_defaults()
    assert done.value.exit_code == 1
    lines = stderr.read_text(encoding="utf-8").splitlines()
    assert [line for line in lines if not line.startswith("{")] == [
        "syncd: error: unexpected KeyError: 'missing'"]
    (logged,) = [json.loads(line) for line in lines if line.startswith("{")]
    assert logged["event"] == "unexpected_error" and logged["level"] == "error"
    assert logged["error"] == "KeyError: 'missing'"
    assert logged["exception"].startswith("Traceback (most recent call last):")
    assert "in broken" in logged["exception"]
