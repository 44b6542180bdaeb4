"""The code style the team agreed on is checked, not hoped for: ruff and mypy (strict) clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          check=False)


def test_ruff_is_clean() -> None:
    run = _run(str(BIN / "ruff"), "check", "syncd", "tests", "bench", "docs")
    assert run.returncode == 0, run.stdout + run.stderr


def test_mypy_is_clean() -> None:
    run = _run(str(BIN / "mypy"), "syncd", "tests")
    assert run.returncode == 0, run.stdout + run.stderr
