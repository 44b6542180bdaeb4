"""The developer entry point `dev` and the CI scripts.

`./dev test` installs the Debian packages the tests need when they are missing: one dpkg-query
for all of them, apt-get (one update, then one install) as root or through sudo, one line
naming the exact command otherwise. These tests source `dev` and call its functions with
stand-ins for dpkg-query, apt-get and sudo first on PATH (and nothing else on it), so nothing
is installed; the stand-ins append what they were asked to a log.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT / "dev"
SCRIPTS = (DEV, ROOT / ".ci" / "run", ROOT / ".ci" / "fresh-root")
NOBODY = 65534

# dpkg-query -W -f='${Package} ${Status}\n' PKG...: the packages named in $INSTALLED are installed.
DPKG_QUERY = r"""#!/bin/sh
printf "%s\n" "dpkg-query $*" >>"$STUB_LOG"
status=0
for arg in "$@"; do
    case "$arg" in -*) continue ;; esac
    case " $INSTALLED " in
        *" $arg "*) printf '%s install ok installed\n' "$arg" ;;
        *) echo "dpkg-query: no packages found matching $arg" >&2; status=1 ;;
    esac
done
exit "$status"
"""
APT_GET = r"""#!/bin/sh
printf "%s\n" "apt-get $* (DEBIAN_FRONTEND=$DEBIAN_FRONTEND)" >>"$STUB_LOG"
"""
SUDO = r"""#!/bin/sh
printf "%s\n" "sudo $*" >>"$STUB_LOG"
"""


@dataclass(frozen=True, slots=True)
class Run:
    code: int
    stderr: str
    calls: list[str]


class Stubs:
    """A world-readable scratch dir (the non-root runs are uid 65534) with dev's copy and bin/."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.bin = base / "bin"
        self.bin.mkdir()
        self.log = base / "calls.log"
        self.dev = base / "dev"
        shutil.copy(DEV, self.dev)
        for path in (base, self.bin):
            path.chmod(0o755)
        self.dev.chmod(0o755)

    def add(self, name: str, text: str) -> None:
        path = self.bin / name
        path.write_text(text, encoding="utf-8")
        path.chmod(0o755)

    def run(self, script: str, *, installed: str = "", root: bool | None = None,
            env: dict[str, str] | None = None) -> Run:
        """Source dev and run `script`, as root, as uid 65534, or as whoever runs the tests."""
        self.log.write_text("", encoding="utf-8")
        self.log.chmod(0o666)
        prefix: list[str] = []
        if root is False and os.geteuid() == 0:
            prefix = [shutil.which("setpriv") or "setpriv", f"--reuid={NOBODY}",
                      f"--regid={NOBODY}", "--clear-groups", "--"]
        elif root is True and os.geteuid() != 0:  # root in a user namespace of its own
            prefix = [shutil.which("unshare") or "unshare", "--user", "--map-root-user", "--"]
        done = subprocess.run(
            [*prefix, "/bin/bash", "-c", f'source "$1"; {script}', "bash", str(self.dev)],
            env={"PATH": str(self.bin), "HOME": str(self.base), "STUB_LOG": str(self.log),
                 "INSTALLED": installed, **(env or {})},
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False)
        calls = self.log.read_text(encoding="utf-8").splitlines()
        return Run(done.returncode, done.stderr, calls)


@pytest.fixture
def stubs() -> Iterator[Stubs]:
    with tempfile.TemporaryDirectory(prefix="syncd-dev-test-") as base:
        made = Stubs(Path(base))
        made.add("dpkg-query", DPKG_QUERY)
        made.add("apt-get", APT_GET)
        for tool in ("env", "dirname"):     # dev runs them outside the stand-ins' reach
            (made.bin / tool).symlink_to(shutil.which(tool) or f"/usr/bin/{tool}")
        yield made


def _test_packages() -> list[str]:
    """TEST_PACKAGES from dev itself, as "package:command"."""
    done = subprocess.run(["/bin/bash", "-c", 'source "$1"; printf "%s\\n" "${TEST_PACKAGES[@]}"',
                           "bash", str(DEV)], capture_output=True, text=True, timeout=60,
                          check=True)
    return done.stdout.split()


PACKAGES = [entry.split(":", 1)[0] for entry in _test_packages()]
ENSURE = 'ensure_packages "${TEST_PACKAGES[@]}"'


def test_everything_installed_costs_one_dpkg_query_and_no_apt(stubs: Stubs) -> None:
    run = stubs.run(ENSURE, installed=" ".join(PACKAGES))
    assert (run.code, run.stderr) == (0, "")
    assert len(run.calls) == 1 and run.calls[0].startswith("dpkg-query -W ")
    assert run.calls[0].split()[-len(PACKAGES):] == PACKAGES


def test_missing_packages_are_installed_as_root_after_one_update(stubs: Stubs) -> None:
    installed = " ".join(p for p in PACKAGES if p not in ("buildah", "fuse3"))
    run = stubs.run(ENSURE, installed=installed, root=True)
    assert run.code == 0, run.stderr
    assert run.calls[1:] == [
        "apt-get -o DPkg::Lock::Timeout=300 update -qq (DEBIAN_FRONTEND=noninteractive)",
        "apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends buildah "
        "fuse3 (DEBIAN_FRONTEND=noninteractive)",
    ]
    assert "dev: installing Debian packages buildah fuse3 (apt-get)" in run.stderr


def test_without_root_they_are_installed_through_sudo(stubs: Stubs) -> None:
    stubs.add("sudo", SUDO)
    run = stubs.run(ENSURE, installed="", root=False)
    assert run.code == 0, run.stderr
    wanted = " ".join(PACKAGES)
    assert run.calls[1:] == [
        "sudo -n env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 "
        "update -qq",
        "sudo -n env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 "
        "install -y -q --no-install-recommends " + wanted,
    ]


def test_without_root_or_sudo_one_line_names_the_command_to_run(stubs: Stubs) -> None:
    run = stubs.run(ENSURE, installed=" ".join(p for p in PACKAGES if p != "shellcheck"),
                    root=False)
    assert run.code == 1
    assert run.stderr == ("dev: missing Debian packages shellcheck; as root run: apt-get update"
                          " && apt-get install -y --no-install-recommends shellcheck\n")
    assert [c.split()[0] for c in run.calls] == ["dpkg-query"]


def test_a_failed_install_names_the_command_to_run(stubs: Stubs) -> None:
    stubs.add("apt-get", APT_GET + "exit 100\n")
    run = stubs.run(ENSURE, installed="", root=True)
    assert run.code == 1
    assert run.stderr.splitlines()[-1].startswith("dev: could not install prometheus ")
    assert len(run.calls) == 2      # the update failed: no install attempted


def test_dev_no_apt_checks_and_installs_nothing(stubs: Stubs) -> None:
    run = stubs.run(ENSURE, installed="", env={"DEV_NO_APT": "1"})
    assert (run.code, run.stderr, run.calls) == (0, "", [])


def test_without_dpkg_it_names_the_missing_tools_and_goes_on(stubs: Stubs) -> None:
    (stubs.bin / "dpkg-query").unlink()
    stubs.add("promtool", "#!/bin/sh\n")
    run = stubs.run(ENSURE, installed="")
    assert run.code == 0 and run.calls == []
    assert run.stderr.startswith("dev: not Debian or Ubuntu, so install these yourself")
    assert "systemd-analyze (systemd)" in run.stderr and "promtool" not in run.stderr


def test_every_debian_package_a_test_names_is_in_the_list() -> None:
    """tool("promtool", "prometheus") in a test means ./dev test must install prometheus."""
    named = set()
    for path in (ROOT / "tests").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        named |= {m[1] for m in re.finditer(r'\b_?tool\(\s*"[^"]+",\s*"([^"]+)"\)', text)}
    assert named, "the pattern found no tool(...) call: update this test"
    assert named <= set(PACKAGES)


def test_each_package_says_which_tests_need_it() -> None:
    text = DEV.read_text(encoding="utf-8")
    for package in PACKAGES:
        line = next(li for li in text.splitlines() if li.strip().startswith(f"{package}:"))
        assert "tests/" in line.split("#", 1)[1], line


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_passes_bash_n_and_shellcheck(script: Path) -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck not found: install the Debian package shellcheck", pytrace=False)
    for cmd in (["bash", "-n", str(script)], [shellcheck, str(script)]):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        assert (done.returncode, done.stdout + done.stderr) == (0, ""), cmd


def test_ci_runs_exactly_the_readme_test_command() -> None:
    commands = [line for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.startswith("#")]
    assert commands[-1] == 'exec ./dev test "$@"'
    assert not any("apt" in line for line in commands)
