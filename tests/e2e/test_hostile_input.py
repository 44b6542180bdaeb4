"""Hostile or broken input, through the real binary: a config nested 500 levels deep or over
1 MiB, and garbage on the HTTP port, get one line each, never a traceback (issue 18)."""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

import pytest

from tests.daemons import Setup
from tests.mirrors import Run, env, syncd

GOOD = '[[mirrors]]\nname = "m"\nbucket = "bkt"\ndirection = "pull"\nvolumes = {a = "/v"}\n'
DEEP = 500


def _one_error_line(run: Run, code: int, *needles: str) -> None:
    assert run.code == code, (run.code, run.stderr)
    assert "Traceback" not in run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("syncd: error:"), run.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize(("body", "limit"), [
    (f"datacenter = {'[' * DEEP}{']' * DEEP}\n{GOOD}", "nested deeper than the limit of 32"),
    ("datacenter = " + "{a = " * DEEP + "1" + "}" * DEEP + "\n" + GOOD,
     "nested deeper than the limit of 32"),
    (GOOD + "#" * (1 << 20), "larger than the limit of 1 MiB"),
])
def test_cli_config_past_a_bound_is_one_line_exit_3(tmp_path: Path, body: str,
                                                     limit: str) -> None:
    cfg = tmp_path / "hostile.toml"
    cfg.write_text(body, encoding="utf-8")
    for args in (["config", "validate", str(cfg)], ["sync", "--once", "-c", str(cfg)]):
        _one_error_line(syncd(*args), 3, f"{cfg}: {limit}")


def test_cli_env_value_nested_past_the_bound_is_one_line_naming_the_variable(
        tmp_path: Path) -> None:
    cfg = tmp_path / "ok.toml"
    cfg.write_text(GOOD, encoding="utf-8")
    deep = env(SYNCD_TRANSFER__CONCURRENCY="[" * DEEP + "]" * DEEP)
    for args in (["config", "validate", str(cfg)], ["sync", "--once", "-c", str(cfg)]):
        _one_error_line(syncd(*args, environ=deep), 3,
                        "env SYNCD_TRANSFER__CONCURRENCY: nested deeper than the limit of 32")


MALFORMED = [  # sent on their own connection; the client hangs up after the last two
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 a TLS hello\r\n\r\n",
    b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n",
    b"G(T /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nnocolon\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHo",
    b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 99\r\n\r\nab",
]


@pytest.mark.parametrize("s3", ["moto"], indirect=True)  # about the endpoint, not S3
def test_daemon_logs_malformed_http_requests_as_one_json_line_each_and_keeps_answering(
        setup: Setup, tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    daemon = setup.start(setup.config("pull", vol))
    base = daemon.http()
    host, port = base.removeprefix("http://").rsplit(":", 1)
    for i, payload in enumerate(MALFORMED):
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            conn.sendall(payload)
            if i < len(MALFORMED) - 2:
                assert conn.recv(64).startswith(b"HTTP/1.0 400 "), payload[:40]
        with urllib.request.urlopen(f"{base}/healthz", timeout=10) as resp:
            assert resp.status == 200
    assert daemon.stop() == 0
    text = daemon.log.read_text(encoding="utf-8")
    assert "Traceback" not in text
    events = [json.loads(line) for line in text.splitlines()]  # every line is JSON
    bad = [e for e in events if e["event"].startswith("http_")]
    assert len(bad) <= len(MALFORMED)
    assert {e["event"] for e in bad} == {"http_bad_request"}, bad
    assert any("LineTooLong" in e["error"] for e in bad), bad


def test_health_probe_with_a_listen_address_nested_past_the_bound_is_one_line() -> None:
    """`syncd health` reads SYNCD_HTTP__LISTEN itself, without the config's bounds: a
    value nested 500 deep is taken as text, not a RecursionError traceback."""
    run = syncd("health", environ=env(SYNCD_HTTP__LISTEN="[" * DEEP + "]" * DEEP))
    assert run.code == 1, (run.code, run.stdout, run.stderr)
    assert "Traceback" not in run.stdout + run.stderr
    assert len((run.stdout + run.stderr).strip().splitlines()) == 1
