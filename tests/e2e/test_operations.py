"""Operating `syncd run`: a real Prometheus scrapes it during a sync, /healthz and /readyz
flip as the model is published, promtool accepts /metrics, and no credential reaches any
output the daemon produces."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemons import ART, Daemon, Setup, version_files
from tests.mirrors import SYNCD, env, wait_for
from tests.servers import ACCESS_KEY, SECRET_KEY, find_free_port


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: apt-get install prometheus"
    return path


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Prometheus:
    """A real Prometheus server scraping one target every second, its data in tmp."""

    def __init__(self, tmp: Path, target: str) -> None:
        self.port = find_free_port()
        tmp.mkdir(parents=True)
        cfg = tmp / "prometheus.yml"
        cfg.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "scrape_configs:\n  - job_name: syncd\n"
            f"    static_configs:\n      - targets: ['{target}']\n", encoding="utf-8")
        self.log = (tmp / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [_tool("prometheus"), f"--config.file={cfg}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(lambda: self._answers("/-/ready"), 60, "prometheus ready")

    def _answers(self, path: str) -> bool:
        try:
            return get(f"http://127.0.0.1:{self.port}{path}")[0] == 200
        except OSError:
            return False

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": promql})
        code, body = get(url)
        assert code == 200, body
        result: list[dict[str, Any]] = json.loads(body)["data"]["result"]
        return result

    def value(self, promql: str) -> float | None:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator[Any]:
    started: list[Prometheus] = []

    def start(target: str) -> Prometheus:
        started.append(Prometheus(tmp_path / f"prom{len(started)}", target))
        return started[-1]

    yield start
    for p in started:
        p.close()


def _published(setup: Setup, tmp_path: Path, throttle_proxy: Any
               ) -> tuple[Daemon, Any, dict[str, bytes], Path]:
    """A daemon pulling a model through a proxy that starts paused: the first pass waits."""
    vol = tmp_path / "vol"
    vol.mkdir()
    files = version_files("v1", shards=2)
    setup.publish_artifact("tiny-llama", files)
    proxy = throttle_proxy(setup.server.port)
    proxy.pause()
    cfg = setup.config("pull", vol, extra=ART, endpoint=proxy.endpoint_url)
    daemon = setup.start(cfg, log_level="debug")
    return daemon, proxy, files, cfg


def test_readyz_flips_when_the_model_is_published_and_healthz_stays_ok(
        setup: Setup, tmp_path: Path, throttle_proxy: Any) -> None:
    daemon, proxy, _, _ = _published(setup, tmp_path, throttle_proxy)
    base = daemon.http()
    code, body = get(f"{base}/readyz")
    assert code == 503, body
    assert json.loads(body)["missing"] == ["m: no pass has finished yet"]
    code, body = get(f"{base}/healthz")
    assert code == 200 and json.loads(body)["ok"] is True
    proxy.resume()
    wait_for(lambda: get(f"{base}/readyz")[0] == 200, 60, "readyz 200")
    ready = json.loads(get(f"{base}/readyz")[1])
    assert ready["ready"] is True and ready["missing"] == []
    art = ready["mirrors"]["m"]["artifacts"]["tiny-llama"]
    assert art["state"] == "ready" and art["current"] == art["wanted"]
    assert get(f"{base}/healthz")[0] == 200
    assert get(f"{base}/nope")[0] == 404
    # the container HEALTHCHECK's verb reads the same endpoint
    health = subprocess.run([SYNCD, "health", "--url", f"{base}/healthz"], env=env(),
                            capture_output=True, text=True, timeout=30, check=False)
    assert health.returncode == 0 and health.stdout.startswith("healthy"), health.stderr
    assert daemon.stop() == 0
    gone = subprocess.run([SYNCD, "health", "--url", f"{base}/healthz", "--timeout", "2"],
                          env=env(), capture_output=True, text=True, timeout=30, check=False)
    assert gone.returncode == 1 and gone.stderr.count("\n") == 1, gone.stderr


def test_prometheus_scrapes_bytes_and_lease_during_a_sync(
        setup: Setup, tmp_path: Path, throttle_proxy: Any, prometheus_for: Any) -> None:
    daemon, proxy, files, _ = _published(setup, tmp_path, throttle_proxy)
    base = daemon.http()
    prom = prometheus_for(base.removeprefix("http://"))
    wait_for(lambda: prom.value('up{job="syncd"}') == 1, 60, "first scrape")
    proxy.resume()
    size = sum(len(d) for d in files.values())
    moved = wait_for(lambda: (v := prom.value(
        'sum(syncd_transferred_bytes_total{mirror="m",direction="pull"})')) and v >= size and v,
        60, "bytes counted in prometheus")
    assert moved >= size
    assert prom.value('syncd_lease_held{job="syncd"}') == 1
    assert (prom.value('syncd_lease_generation{job="syncd"}') or 0) >= 1
    assert wait_for(lambda: prom.value('syncd_artifacts{mirror="m",state="ready"}') == 1, 30,
                    "artifact ready in prometheus")
    objects = prom.value('sum(syncd_transferred_objects_total{mirror="m"})')
    assert objects == len(files)  # every file of the model, each published once
    assert prom.value('syncd_build_info{job="syncd"}') == 1
    assert (prom.value('syncd_last_success_timestamp_seconds{mirror="m"}') or 0) > 0
    assert daemon.stop() == 0


def test_promtool_accepts_the_metrics_output(setup: Setup, tmp_path: Path,
                                             throttle_proxy: Any) -> None:
    daemon, proxy, _, _ = _published(setup, tmp_path, throttle_proxy)
    proxy.resume()
    base = daemon.http()
    wait_for(lambda: get(f"{base}/readyz")[0] == 200, 60, "readyz 200")
    code, metrics = get(f"{base}/metrics")
    assert code == 200
    text = metrics.decode()
    for name in ("syncd_transferred_bytes_total", "syncd_transfer_duration_seconds_bucket",
                 "syncd_sync_duration_seconds_count", "syncd_errors_total",
                 "syncd_verification_failures_total", "syncd_refused_keys",
                 "syncd_pending_objects", "syncd_replication_lag_seconds",
                 "syncd_last_success_timestamp_seconds", "syncd_lease_held",
                 "syncd_lease_generation", "syncd_lease_transitions_total",
                 "syncd_transfers_in_flight", "syncd_build_info"):
        assert f"# TYPE {name.removesuffix('_bucket').removesuffix('_count')} " in text, name
    check = subprocess.run([_tool("promtool"), "check", "metrics"], input=metrics,
                           capture_output=True, timeout=60, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.strip() == b"" and check.stderr.strip() == b"", check.stderr
    assert daemon.stop() == 0


PROCESS_EVENTS = {"daemon_started", "daemon_stopped", "config_reloaded", "config_rejected",
                  "stop_forced", "event_loop_stuck", "http_unchanged"}


def test_logs_name_mirror_and_target_and_never_a_credential(setup: Setup, tmp_path: Path,
                                                            throttle_proxy: Any) -> None:
    daemon, proxy, _, cfg = _published(setup, tmp_path, throttle_proxy)
    proxy.resume()
    base = daemon.http()
    wait_for(lambda: get(f"{base}/readyz")[0] == 200, 60, "readyz 200")
    bodies = [get(f"{base}{p}")[1] for p in ("/metrics", "/healthz", "/readyz")]
    setup.put("tiny-llama/extra.bin", b"x" * 100)  # a second version passes through the logs
    wait_for(lambda: daemon.events("artifact_switched") or daemon.events("pass_done"), 30)
    # a wrong secret: the error lines must not echo the one that was tried either
    wrong = subprocess.run([SYNCD, "--log-level", "debug", "sync", "--once", "-c", str(cfg)],
                           env=env(AWS_SECRET_ACCESS_KEY=SECRET_KEY[::-1]), capture_output=True,
                           timeout=60, check=False)
    assert daemon.stop() == 0
    outputs = {"daemon log": daemon.log.read_bytes(), "wrong-secret stdout": wrong.stdout,
               "wrong-secret stderr": wrong.stderr,
               **{f"http body {i}": b for i, b in enumerate(bodies)}}
    assert len(outputs["daemon log"]) > 2000  # debug logs of a whole sync were produced
    events = daemon.events()
    assert {e["event"] for e in events} >= {"lease_acquired", "plan_computed", "pass_done"}
    for e in events:
        assert "level" in e and "timestamp" in e, e
        if e["event"] not in PROCESS_EVENTS:
            assert e.get("mirror") == "m" and e.get("target"), e
    for where, data in outputs.items():
        for secret in (SECRET_KEY, SECRET_KEY[::-1], ACCESS_KEY):
            assert secret.encode() not in data, f"{secret[:4]}... found in {where}"
