"""The shipped systemd unit, checked by systemd's own tools (static analysis: no systemd runs
here) and against the daemon's real timings and exit codes.

`systemd-analyze verify` checks that ExecStart's binary exists and is executable. The unit
names /opt/syncd/bin/syncd, where an install puts it, and that is absent on a development
machine. So verify runs on a copy whose ExecStart names this virtualenv's real `syncd` binary
(the one line changed, and the test checks that), and a second test shows the shipped file's
only complaint is that missing binary. verify does not resolve User= (systemd resolves it
when the unit starts), so the sysusers.d snippet that creates the user is checked by running
`systemd-sysusers` on an empty root.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd.config import DaemonConfig, LeaseConfig
from syncd.errors import ExitCode
from syncd.runtime.health import LOOP_STUCK_S

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "syncd.service"
ENV_FILE = ROOT / "systemd" / "syncd.env"
SYSUSERS = ROOT / "systemd" / "syncd.sysusers"
SYNCD = Path(sys.executable).with_name("syncd")
SHIPPED_EXEC = "/opt/syncd/bin/syncd"
MAX_EXPOSURE = 2.0
TRUE = {"1", "yes", "true", "on"}

Unit = dict[str, dict[str, list[str]]]


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: apt-get install {package}"
    return path


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def parse_unit(text: str) -> Unit:
    """[Section] -> key -> every assignment in order (systemd's list settings accumulate, and
    an empty assignment resets them). Comments start with '#' or ';'."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        assert not line.endswith("\\"), f"line {n}: continuation lines are not parsed here"
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and section is not None, f"line {n}: not Key=Value in a section: {raw!r}"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


@pytest.fixture(scope="module")
def unit() -> Unit:
    return parse_unit(UNIT.read_text(encoding="utf-8"))


def one(unit: Unit, key: str, section: str = "Service") -> str:
    values = unit.get(section, {}).get(key)
    assert values is not None, f"[{section}] {key}= is missing"
    assert len(values) == 1, f"[{section}] {key}= is set {len(values)} times: {values}"
    return values[0]


def effective_list(unit: Unit, key: str, section: str = "Service") -> list[str]:
    """A list setting as systemd sees it: the words after the last empty assignment."""
    words: list[str] = []
    for value in unit.get(section, {}).get(key, []):
        words = words + value.split() if value else []
    return words


def timespan_s(text: str) -> float:
    """Parsed by systemd itself, so "1min 30s" means what it means to systemd."""
    out = run(tool("systemd-analyze", "systemd"), "timespan", text)
    assert out.returncode == 0, out.stderr
    usec = re.search(r"μs:\s*(\d+)", out.stdout)
    assert usec, out.stdout
    return int(usec.group(1)) / 1e6


@pytest.fixture
def verifiable_unit(tmp_path: Path) -> Iterator[Path]:
    """The shipped unit with ExecStart pointed at this virtualenv's syncd: only that line."""
    assert SYNCD.is_file(), f"{SYNCD} is missing: pip install -e . in the virtualenv"
    shipped = UNIT.read_text(encoding="utf-8")
    copy = shipped.replace(f"ExecStart={SHIPPED_EXEC} ", f"ExecStart={SYNCD} ")
    changed = [(a, b) for a, b in zip(shipped.splitlines(), copy.splitlines(), strict=True)
               if a != b]
    assert changed == [(f"ExecStart={SHIPPED_EXEC} run", f"ExecStart={SYNCD} run")]
    path = tmp_path / "syncd.service"  # verify wants a valid unit name
    path.write_text(copy, encoding="utf-8")
    yield path


def test_unit_passes_systemd_analyze_verify_with_execstart_pointed_at_real_binary(
        verifiable_unit: Path) -> None:
    verify = run(tool("systemd-analyze", "systemd"), "verify", "--man=no", str(verifiable_unit))
    about_unit = [ln for ln in (verify.stdout + verify.stderr).splitlines()
                  if "syncd" in ln]
    assert verify.returncode == 0 and not about_unit, verify.stdout + verify.stderr


def test_unit_shipped_file_fails_verify_only_for_missing_install_binary(tmp_path: Path) -> None:
    """What the copy above leaves out: on a host with syncd installed there is no complaint."""
    path = tmp_path / "syncd.service"
    shutil.copyfile(UNIT, path)
    verify = run(tool("systemd-analyze", "systemd"), "verify", "--man=no", str(path))
    problems = [ln for ln in (verify.stdout + verify.stderr).splitlines() if ln.strip()]
    if Path(SHIPPED_EXEC).exists():
        assert verify.returncode == 0 and not problems, problems
    else:
        assert problems == [f"syncd.service: Command {SHIPPED_EXEC} is not executable: "
                            "No such file or directory"]


def test_unit_security_exposure_is_ok_or_better_offline(tmp_path: Path) -> None:
    path = tmp_path / "syncd.service"
    shutil.copyfile(UNIT, path)
    # --threshold is on systemd's 0-100 scale: 20 is exposure 2.0.
    security = run(tool("systemd-analyze", "systemd"), "security", "--offline=true",
                   f"--threshold={round(MAX_EXPOSURE * 10)}", "--no-pager", str(path))
    overall = re.search(r"Overall exposure level for syncd\.service: (\d+\.\d) (\w+)",
                        security.stdout)
    assert overall, security.stdout + security.stderr
    exposure, verdict = float(overall.group(1)), overall.group(2)
    assert exposure <= MAX_EXPOSURE and verdict in {"PERFECT", "SAFE", "OK"}, security.stdout
    assert security.returncode == 0, security.stdout + security.stderr


def test_unit_is_notify_service_started_with_run_and_reloaded_by_sighup(unit: Unit) -> None:
    assert one(unit, "Type") == "notify"
    assert one(unit, "NotifyAccess") == "main"  # a child cannot report for the daemon
    assert one(unit, "ExecStart") == f"{SHIPPED_EXEC} run"
    assert re.fullmatch(r"(/usr)?/bin/kill -(HUP|SIGHUP|s HUP) \$MAINPID",
                        one(unit, "ExecReload"))


def test_unit_watchdog_fires_after_loop_stuck_is_logged(unit: Unit) -> None:
    """The daemon logs event_loop_stuck after LOOP_STUCK_S; the kill comes later, so the
    journal says why."""
    assert timespan_s(one(unit, "WatchdogSec")) > LOOP_STUCK_S


def test_unit_restarts_on_failure_but_not_on_config_or_usage_errors(unit: Unit) -> None:
    assert one(unit, "Restart") == "on-failure"
    assert timespan_s(one(unit, "RestartSec")) > 0
    prevented = set(effective_list(unit, "RestartPreventExitStatus"))
    assert prevented == {str(int(ExitCode.USAGE)), str(int(ExitCode.CONFIG))}
    assert one(unit, "StartLimitBurst", "Unit")
    assert timespan_s(one(unit, "StartLimitIntervalSec", "Unit")) > 0


def test_unit_stop_timeout_exceeds_default_grace_plus_release_deadline(unit: Unit) -> None:
    """SIGTERM: in-flight transfers get grace_s, then leases are released within
    renew_deadline_s; systemd must not SIGKILL the daemon during either."""
    budget_s = DaemonConfig().grace_s + LeaseConfig().renew_deadline_s
    assert timespan_s(one(unit, "TimeoutStopSec")) > budget_s


def test_unit_reads_environment_file_and_config_path(unit: Unit) -> None:
    assert one(unit, "EnvironmentFile").lstrip("-") == "/etc/syncd/syncd.env"
    environment = effective_list(unit, "Environment")
    assert "SYNCD_CONFIG=/etc/syncd/syncd.toml" in environment


def test_unit_runs_as_dedicated_user_the_sysusers_snippet_creates(unit: Unit,
                                                                  tmp_path: Path) -> None:
    assert one(unit, "User") == "syncd" and one(unit, "Group") == "syncd"
    assert "DynamicUser" not in unit["Service"]  # files on the volume need a stable owner
    (tmp_path / "etc").mkdir()
    made = run(tool("systemd-sysusers", "systemd"), f"--root={tmp_path}", str(SYSUSERS))
    assert made.returncode == 0, made.stderr
    passwd = (tmp_path / "etc" / "passwd").read_text(encoding="utf-8").splitlines()
    [entry] = [ln.split(":") for ln in passwd if ln.startswith("syncd:")]
    assert entry[6] in {"/usr/sbin/nologin", "/sbin/nologin", "/bin/false"}
    assert int(entry[2]) != 0
    group = (tmp_path / "etc" / "group").read_text(encoding="utf-8")
    assert re.search(r"^syncd:x:\d+:", group, re.M)


def test_unit_system_is_read_only_but_volume_roots_and_log_dir(unit: Unit) -> None:
    assert one(unit, "ProtectSystem") == "strict"
    assert effective_list(unit, "ReadWritePaths") == ["/runpod-volume"]
    assert "/runpod-volume" in effective_list(unit, "RequiresMountsFor", "Unit")
    assert one(unit, "LogsDirectory") == "syncd"  # the lease journal, when configured
    assert one(unit, "ProtectHome") in TRUE | {"read-only", "tmpfs"}


def test_unit_drops_every_privilege(unit: Unit) -> None:
    assert one(unit, "NoNewPrivileges") in TRUE
    assert one(unit, "PrivateTmp") in TRUE
    assert one(unit, "PrivateDevices") in TRUE
    assert unit["Service"]["CapabilityBoundingSet"] == [""]  # an empty set: no capability
    assert unit["Service"]["AmbientCapabilities"] == [""]
    for key in ("ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
                "ProtectControlGroups", "ProtectClock", "ProtectHostname", "RestrictNamespaces",
                "RestrictRealtime", "RestrictSUIDSGID", "LockPersonality",
                "MemoryDenyWriteExecute"):
        assert one(unit, key) in TRUE, key
    assert set(effective_list(unit, "RestrictAddressFamilies")) == {
        "AF_UNIX",  # NOTIFY_SOCKET, journald
        "AF_INET", "AF_INET6",  # S3 endpoints, the local HTTP endpoints
    }
    assert "@system-service" in effective_list(unit, "SystemCallFilter")


def test_unit_leaves_other_processes_visible_to_dead_holder_detection(unit: Unit) -> None:
    """syncd.lease.record.holder_dead reads /proc/sys/kernel/random/boot_id (hidden by
    ProcSubset=pid) and takes a missing /proc/<pid> as a dead holder: ProtectProc=invisible
    would hide a live holder of another user, and its lease would be taken over."""
    assert one(unit, "ProtectProc") in {"noaccess", "default"}
    assert unit["Service"].get("ProcSubset", ["all"])[-1] == "all"


def test_env_file_is_assignments_and_comments_without_secrets() -> None:
    assigned: dict[str, str] = {}
    for n, raw in enumerate(ENV_FILE.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key), f"line {n}: {raw!r}"
        assigned[key] = value
    assert assigned.get("SYNCD_CONFIG") == "/etc/syncd/syncd.toml"
    secrets = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
    assert not secrets & assigned.keys(), "credentials must stay commented placeholders"
    text = ENV_FILE.read_text(encoding="utf-8")
    assert all(f"# {name}=" in text for name in secrets - {"AWS_SESSION_TOKEN"})
