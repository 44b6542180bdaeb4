"""examples/: what operators copy must work as written.

The alert rules pass promtool and their own unit tests (each alert fires on the series that
should fire it, not on healthy ones); every metric the rules, the dashboard and the scrape
configs name is one syncd exports; the Kubernetes pod's probes and scrape annotations point at
the port its sidecar listens on; the RunPod entrypoint really waits for a model that
`syncd sync --once` published from a real S3 server, and fails with one line when it is not.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from syncd.config import parse
from syncd.errors import IntegrityError
from syncd.ops.address import host_port
from syncd.ops.metrics import LeaseState, Metrics, MirrorState, Snapshot
from syncd.runtime.wait import from_config
from tests.daemons import ART, Setup, version_files
from tests.mirrors import SYNCD, env, syncd, wait_for, write_config
from tests.servers import S3Server, empty_and_delete_bucket

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PROMETHEUS = EXAMPLES / "prometheus"
RULES = PROMETHEUS / "syncd-alerts.yml"
RULE_TESTS = PROMETHEUS / "syncd-alerts.test.yml"
SCRAPE_HOSTS = PROMETHEUS / "prometheus.yml"
SCRAPE_PODS = PROMETHEUS / "prometheus-kubernetes.yml"
DASHBOARD = EXAMPLES / "grafana" / "syncd-dashboard.json"
POD = EXAMPLES / "kubernetes" / "pod.yaml"
CONFIGMAP = EXAMPLES / "kubernetes" / "configmap.yaml"
ENTRYPOINT = EXAMPLES / "runpod" / "entrypoint.sh"

# Labels a scrape adds to every series (job, instance) and those prometheus*.yml attach.
TARGET_LABELS = {"job", "instance", "datacenter", "namespace", "pod"}
PROMETHEUS_SERIES = {"up"}  # written by Prometheus itself, not scraped
GRAFANA_INTERVALS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: apt-get install {package}"
    return path


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd,
                          timeout=120, check=False)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


# --- PromQL: which metrics an expression reads ------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*+)(?!\s*\()")  # *+: no backing off
_SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The series names an expression selects: not functions, keywords, labels, durations."""
    bare = _STRING.sub('""', expr)
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", bare)
    bare = _GROUPING.sub(" ", bare)
    return {n for n in _IDENT.findall(bare) if n.lower() not in _KEYWORDS}


def selector_labels(expr: str) -> list[tuple[str, set[str]]]:
    """(metric, label names its matchers use) for each `metric{...}` in the expression."""
    return [(name, set(_MATCHER.findall(_STRING.sub('""', body))))
            for name, body in _SELECTOR.findall(expr)]


def grafana_to_promql(expr: str) -> str:
    """A dashboard expression as Prometheus would get it: variables filled in."""
    for var, value in GRAFANA_INTERVALS.items():
        expr = expr.replace(var, value)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def exported() -> dict[str, set[str]]:
    """Every series name a daemon exports, with its labels: a registry that has seen each
    kind of event once, the way a running daemon has."""
    metrics = Metrics()
    meter = metrics.mirror("models", "pull")
    meter.begun()
    meter.streamed(10)
    meter.ended(0.5, published=True, verified=True, error=None)
    meter.deleted(1)
    meter.failed(IntegrityError("checksum mismatch"))
    meter.passed(2.0, result="ok")
    metrics.lease_changed("/runpod-volume/models", "acquired")
    metrics.watch(lambda: Snapshot([MirrorState("models", "pull", 1, 3.0, False, {"ready": 1})],
                                   [LeaseState("/runpod-volume/models", True, 4)], 0.1))
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


def rules() -> list[dict[str, Any]]:
    return [r for g in load_yaml(RULES)["groups"] for r in g["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dash["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_exprs(dash: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in panels(dash) for t in p.get("targets", [])]


def test_promql_names_skip_functions_keywords_labels_and_durations() -> None:
    expr = ('sum by (mirror) (increase(a_total{kind="x:y", mirror=~"$mirror"}[5m])) > 0 '
            'and on (job) b offset 15m or histogram_quantile(0.9, c_bucket) unless d:rec')
    assert metric_names(expr) == {"a_total", "b", "c_bucket", "d:rec"}
    assert selector_labels(expr) == [("a_total", {"kind", "mirror"})]


# --- Prometheus ---------------------------------------------------------------------------


def test_alert_rules_pass_promtool_check() -> None:
    result = run(tool("promtool", "prometheus"), "check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_fire_on_trouble_and_stay_quiet_on_health() -> None:
    """promtool's unit tests: every expected alert, and no other, at each evaluation."""
    result = run(tool("promtool", "prometheus"), "test", "rules", RULE_TESTS.name,
                 cwd=PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rule_tests_make_every_alert_fire_at_least_once() -> None:
    alerts = {r["alert"] for r in rules() if "alert" in r}
    firing = {case["alertname"] for test in load_yaml(RULE_TESTS)["tests"]
              for case in test["alert_rule_test"] if case.get("exp_alerts")}
    assert alerts - firing == set()
    assert len(alerts) >= 10


def test_alert_rules_carry_severity_summary_and_description() -> None:
    for rule in rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
            assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]


def test_host_scrape_config_passes_promtool_check_with_its_rules() -> None:
    result = run(tool("promtool", "prometheus"), "check", "config", SCRAPE_HOSTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_kubernetes_scrape_config_passes_promtool_check_given_static_discovery(
        tmp_path: Path) -> None:
    """Debian's promtool is built without Kubernetes discovery, so everything else in the file
    (relabeling, rule files) is checked with a static target in its place."""
    text = SCRAPE_PODS.read_text(encoding="utf-8")
    discovery = "    kubernetes_sd_configs:\n      - role: pod\n"
    assert text.count(discovery) == 1
    (tmp_path / SCRAPE_PODS.name).write_text(
        text.replace(discovery, '    static_configs:\n      - targets: ["10.0.0.1:9847"]\n'),
        encoding="utf-8")
    shutil.copy(RULES, tmp_path / RULES.name)
    result = run(tool("promtool", "prometheus"), "check", "config", tmp_path / SCRAPE_PODS.name)
    assert result.returncode == 0, result.stdout + result.stderr


def relabel(configs: list[dict[str, Any]], labels: dict[str, str]) -> dict[str, str] | None:
    """Prometheus' `keep` and `replace` relabeling (the two the example uses); None: dropped."""
    labels = dict(labels)
    for rc in configs:
        value = rc.get("separator", ";").join(labels.get(s, "") for s in rc["source_labels"])
        match = re.fullmatch(rc.get("regex", "(.*)"), value)
        action = rc.get("action", "replace")
        if action == "keep":
            if not match:
                return None
        elif action == "replace":
            if match:
                new = match.expand(re.sub(r"\$(\d+)", r"\\\1", rc.get("replacement", "$1")))
                if new:
                    labels[rc["target_label"]] = new
                else:
                    labels.pop(rc["target_label"], None)
        else:
            raise AssertionError(f"relabel action {action!r} not simulated")
    return labels


def meta_of(pod: dict[str, Any], container: dict[str, Any], port: int) -> dict[str, str]:
    """The labels Kubernetes pod discovery gives one container port of `pod`."""
    def sanitize(name: str) -> str:
        return re.sub(r"[^a-zA-Z0-9_]", "_", name)

    meta = pod["metadata"]
    labels = {"__address__": f"10.1.2.3:{port}", "__metrics_path__": "/metrics",
              "__meta_kubernetes_namespace": "default",
              "__meta_kubernetes_pod_name": meta["name"],
              "__meta_kubernetes_pod_container_name": container["name"],
              "__meta_kubernetes_pod_container_port_number": str(port)}
    for key, value in meta.get("annotations", {}).items():
        labels[f"__meta_kubernetes_pod_annotation_{sanitize(key)}"] = value
    for key, value in meta.get("labels", {}).items():
        labels[f"__meta_kubernetes_pod_label_{sanitize(key)}"] = value
    return labels


def test_kubernetes_scrape_config_scrapes_the_sidecar_port_with_its_datacenter() -> None:
    pod, sidecar = the_pod(), the_sidecar()
    jobs = load_yaml(SCRAPE_PODS)["scrape_configs"]
    assert [j["job_name"] for j in jobs] == ["syncd-pods"]
    targets = [relabel(jobs[0]["relabel_configs"], meta_of(pod, sidecar, p["containerPort"]))
               for p in sidecar["ports"]]
    _, port = host_port(container_env(sidecar)["SYNCD_HTTP__LISTEN"])
    assert targets and all(t is not None for t in targets)
    for target in targets:
        assert target is not None
        assert target["__address__"] == f"10.1.2.3:{port}"
        assert target["__metrics_path__"] == "/metrics"
        assert target["datacenter"] == container_env(sidecar)["SYNCD_DATACENTER"]
    unannotated = {**pod, "metadata": {**pod["metadata"], "annotations": {}}}
    assert relabel(jobs[0]["relabel_configs"], meta_of(unannotated, sidecar, port)) is None


def test_scrape_configs_give_every_target_the_labels_the_alerts_group_by() -> None:
    for job in load_yaml(SCRAPE_HOSTS)["scrape_configs"]:
        assert job["job_name"].startswith("syncd")
        for static in job["static_configs"]:
            assert static["labels"]["datacenter"]
    for job in load_yaml(SCRAPE_PODS)["scrape_configs"]:
        assert job["job_name"].startswith("syncd")
        assert any(rc.get("target_label") == "datacenter" for rc in job["relabel_configs"])


def test_every_metric_the_rules_and_dashboard_read_is_exported_with_those_labels() -> None:
    series = exported()
    recorded = {r["record"] for r in rules() if "record" in r}
    dash = dashboard()
    exprs = [r["expr"] for r in rules()] + dashboard_exprs(dash)
    exprs += [re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", v["query"]["query"])
              for v in dash["templating"]["list"]]
    used = set().union(*(metric_names(e) for e in exprs))
    assert {"syncd_transferred_bytes_total", "syncd_sync_duration_seconds_bucket",
            "process_resident_memory_bytes", "syncd_lease_held"} <= used
    assert used - set(series) - recorded - PROMETHEUS_SERIES == set()
    for expr in exprs:
        for name, labels in selector_labels(expr):
            if name in series:
                assert labels - series[name] - TARGET_LABELS == set(), f"{name} in {expr}"
    # the scrape configs select no series by name (no metric_relabel_configs); keep it so
    for path in (SCRAPE_HOSTS, SCRAPE_PODS):
        assert "metric_relabel_configs" not in path.read_text(encoding="utf-8")


# --- Grafana ------------------------------------------------------------------------------


def test_dashboard_expressions_all_parse(tmp_path: Path) -> None:
    """promtool 2.42 has no command for a bare expression: each becomes a recording rule."""
    exprs = dashboard_exprs(dashboard())
    assert len(exprs) >= 20
    check = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr_{i}", "expr": grafana_to_promql(e)}
        for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(check), encoding="utf-8")
    result = run(tool("promtool", "prometheus"), "check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(exprs)} rules found" in result.stdout


def test_dashboard_imports_anywhere_and_filters_by_mirror() -> None:
    dash = dashboard()
    assert [i["name"] for i in dash["__inputs"]] == ["DS_PROMETHEUS"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert {"mirror", "datacenter"} <= set(variables)
    assert all(v["datasource"]["uid"] == "${DS_PROMETHEUS}" for v in variables.values())
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids))
    for panel in panels(dash):
        assert 0 <= panel["gridPos"]["x"] and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"
            names = metric_names(target["expr"])
            per_mirror = any(n in exported() and "mirror" in exported()[n] for n in names)
            if per_mirror:
                assert 'mirror=~"$mirror"' in target["expr"], target["expr"]
    titles = {p["title"] for p in panels(dash)}
    assert {"Throughput", "Pass duration", "Transfer duration", "Errors by kind",
            "Replication lag", "Lease held", "CPU", "Memory"} <= titles


# --- Kubernetes ---------------------------------------------------------------------------


def the_pod() -> dict[str, Any]:
    docs = list(yaml.safe_load_all(POD.read_text(encoding="utf-8")))
    assert [d["kind"] for d in docs] == ["Pod"]
    pod: dict[str, Any] = docs[0]
    return pod


def the_sidecar() -> dict[str, Any]:
    """syncd, as a native sidecar: an init container that keeps running."""
    sidecars: list[dict[str, Any]] = [
        c for c in the_pod()["spec"]["initContainers"]
        if c.get("restartPolicy") == "Always" and c.get("args") == ["run"]]
    assert len(sidecars) == 1
    return sidecars[0]


def container_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def test_kubernetes_pod_probes_and_annotations_use_the_port_syncd_listens_on() -> None:
    pod, sidecar = the_pod(), the_sidecar()
    host, port = host_port(container_env(sidecar)["SYNCD_HTTP__LISTEN"])
    assert host == "0.0.0.0"
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
    assert sidecar["startupProbe"]["httpGet"] == {"path": "/readyz", "port": port}
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
    assert port in {p["containerPort"] for p in sidecar["ports"]}
    notes = pod["metadata"]["annotations"]
    assert notes == {"prometheus.io/scrape": "true", "prometheus.io/port": str(port),
                     "prometheus.io/path": "/metrics"}
    assert pod["metadata"]["labels"]["datacenter"] == container_env(sidecar)["SYNCD_DATACENTER"]


def test_kubernetes_pod_takes_credentials_from_a_secret_only() -> None:
    sidecar = the_sidecar()
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in sidecar["env"]
            if "secretKeyRef" in e.get("valueFrom", {})}
    assert set(refs) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert not any(e["name"].startswith("AWS_") for e in sidecar["env"] if "value" in e)


def test_kubernetes_pod_containers_run_unprivileged_read_only_and_bounded() -> None:
    spec = the_pod()["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["terminationGracePeriodSeconds"] > 30  # syncd's default daemon.grace_s
    for container in spec["initContainers"] + spec["containers"]:
        ctx = container["securityContext"]
        assert ctx["readOnlyRootFilesystem"] is True, container["name"]
        assert ctx["allowPrivilegeEscalation"] is False, container["name"]
        assert ctx["capabilities"]["drop"] == ["ALL"], container["name"]
        assert {"requests", "limits"} <= set(container["resources"]), container["name"]
        assert "memory" in container["resources"]["limits"], container["name"]


def test_kubernetes_configmap_config_is_valid_and_its_volume_is_shared_with_the_worker() -> None:
    """The mounted config parses with the sidecar's environment, its pull mirror's root lies on
    the volume both containers mount, and the worker's model is an artifact of that mirror."""
    pod, sidecar = the_pod(), the_sidecar()
    configmap = load_yaml(CONFIGMAP)
    config_path = Path(container_env(sidecar)["SYNCD_CONFIG"])
    mount = next(m for m in sidecar["volumeMounts"] if m["mountPath"] == str(config_path.parent))
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    config = parse(configmap["data"][config_path.name], source=str(config_path),
                   env={k: v for k, v in container_env(sidecar).items() if k.startswith("SYNCD_")})
    (worker,) = pod["spec"]["containers"]
    model = container_env(worker)["MODEL_PATH"]
    target = from_config(config, model, None)
    shared = {m["name"]: m["mountPath"] for m in sidecar["volumeMounts"]}
    for m in worker["volumeMounts"]:
        if Path(target.root).is_relative_to(m["mountPath"]):
            assert shared[m["name"]] == m["mountPath"] and m["readOnly"] is True
            break
    else:
        raise AssertionError(f"the worker does not mount {target.root}")


# --- the RunPod entrypoint ----------------------------------------------------------------


def test_entrypoint_passes_bash_n_and_shellcheck() -> None:
    assert os.access(ENTRYPOINT, os.X_OK)
    result = run("bash", "-n", ENTRYPOINT)
    assert result.returncode == 0, result.stderr
    result = run(tool("shellcheck", "shellcheck"), "--shell=bash", ENTRYPOINT)
    assert result.returncode == 0, result.stdout


WORKER = [sys.executable, "-c", "import os; print('MODEL_DIR=' + os.environ['MODEL_DIR'])"]


class Entrypoint:
    """The entrypoint in its own process group (a daemon it starts outlives the exec'd worker),
    output in files, not pipes, which that daemon would hold open."""

    def __init__(self, tmp: Path, **environ: str) -> None:
        self.out, self.err = tmp / "entrypoint.out", tmp / "entrypoint.err"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [str(ENTRYPOINT), *WORKER], env=env(PATH=f"{Path(SYNCD).parent}:"
                                                         f"{os.environ['PATH']}", **environ),
                stdout=out, stderr=err, start_new_session=True)

    def wait(self, timeout: float = 120) -> int:
        return self.proc.wait(timeout)

    def stdout(self) -> str:
        return self.out.read_text()

    def errors(self) -> list[str]:
        return [ln for ln in self.err.read_text().splitlines()
                if ln.startswith("entrypoint: error:")]

    def stop_group(self) -> None:
        """SIGTERM whatever is left of the group (the daemon), and wait until it is gone."""
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return

        def gone() -> bool:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return True
            return False

        wait_for(gone, 60, "the entrypoint's process group to exit")


@pytest.fixture
def published(moto_s3: S3Server, tmp_path: Path) -> Iterator[Setup]:
    """A bucket on the moto server with artifact tiny-llama published the way a pusher does."""
    bucket = f"t-{uuid.uuid4().hex[:16]}"
    moto_s3.client().create_bucket(Bucket=bucket)
    setup = Setup(moto_s3, bucket, tmp_path)
    setup.publish_artifact("tiny-llama", version_files("v1", shards=1))
    yield setup
    empty_and_delete_bucket(moto_s3.client(), bucket)


def test_entrypoint_execs_the_worker_with_model_dir_when_the_model_is_ready(
        published: Setup, tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    config = published.config("pull", volume, extra=ART)
    synced = syncd("sync", "--once", "-c", str(config))
    assert synced.code == 0, synced.stderr
    entry = Entrypoint(tmp_path, SYNCD_CONFIG=str(config), MODEL_SYNC="external",
                       MODEL="tiny-llama", MODEL_WAIT_TIMEOUT="30")
    assert entry.wait() == 0, entry.err.read_text()
    model_dir = Path(entry.stdout().strip().removeprefix("MODEL_DIR="))
    assert model_dir == (volume / "tiny-llama").resolve()
    assert (model_dir / "config.json").read_bytes().startswith(b"v1:")
    assert entry.errors() == []


def test_entrypoint_starts_the_daemon_and_execs_the_worker_once_it_synced(
        published: Setup, tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    config = published.config("pull", volume, extra=ART)
    entry = Entrypoint(tmp_path, SYNCD_CONFIG=str(config), MODEL="tiny-llama",
                       MODEL_WAIT_TIMEOUT="120")
    try:
        assert entry.wait() == 0, entry.err.read_text()
        model_dir = Path(entry.stdout().strip().removeprefix("MODEL_DIR="))
        assert (model_dir / "config.json").read_bytes().startswith(b"v1:")
        os.killpg(entry.proc.pid, 0)  # the daemon outlives the exec, beside the worker
        assert "started syncd run" in entry.err.read_text()
    finally:
        entry.stop_group()


def test_entrypoint_exits_13_with_one_line_when_the_model_is_not_ready(tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    config = write_config(tmp_path / "c.toml", "http://127.0.0.1:9", "nobucket",
                          direction="pull", root=volume, extra=ART)
    entry = Entrypoint(tmp_path, SYNCD_CONFIG=str(config), MODEL_SYNC="external",
                       MODEL="tiny-llama", MODEL_WAIT_TIMEOUT="1")
    assert entry.wait() == 13
    (line,) = entry.errors()
    assert "tiny-llama is not ready, not starting the worker" in line
    assert "not published yet" in line
    assert "syncd: error:" not in entry.err.read_text()  # syncd's line is folded into ours
    assert entry.stdout() == ""  # the worker never ran


def test_entrypoint_fails_at_once_when_the_daemon_it_started_exits(tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    config = write_config(tmp_path / "c.toml", "http://127.0.0.1:9", "nobucket",
                          direction="pull", root=volume, extra=ART)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        began = time.monotonic()
        entry = Entrypoint(tmp_path, SYNCD_CONFIG=str(config), MODEL="tiny-llama",
                           MODEL_WAIT_TIMEOUT="300",
                           SYNCD_HTTP__LISTEN=f"127.0.0.1:{taken.getsockname()[1]}")
        try:
            assert entry.wait() == 1  # syncd's exit code for a port it cannot bind (retryable)
        finally:
            entry.stop_group()
    assert time.monotonic() - began < 60
    (line,) = entry.errors()
    assert "syncd run exited with code 1 before tiny-llama was ready" in line
    assert entry.stdout() == ""


def test_entrypoint_stops_waiting_and_its_children_on_sigterm(tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    config = write_config(tmp_path / "c.toml", "http://127.0.0.1:9", "nobucket",
                          direction="pull", root=volume, extra=ART)
    entry = Entrypoint(tmp_path, SYNCD_CONFIG=str(config), MODEL_SYNC="external",
                       MODEL="tiny-llama", MODEL_WAIT_TIMEOUT="300")
    try:
        wait_for(lambda: "waiting up to" in entry.err.read_text(), 30, "the entrypoint to wait")
        entry.proc.send_signal(signal.SIGTERM)
        assert entry.wait(30) == 143
    finally:
        entry.stop_group()
    assert entry.stdout() == ""
