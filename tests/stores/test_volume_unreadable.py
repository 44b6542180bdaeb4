"""A volume listing goes on past what it cannot read (issue 18, item 3): each such path is
named in `Listing.unreadable` with the reason, the rest is listed, and the listing stays
complete. Root bypasses file modes, so the store runs in a child process as root without
the capabilities that do (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), as it would as any user."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

_PROBE = """
import asyncio, json, sys
from pathlib import Path
from syncd.errors import SyncdError
from syncd.stores.base import OpenFence
from syncd.stores.volume import VolumeStore

async def main() -> None:
    store = VolumeStore(Path(sys.argv[1]), part_size=5 << 20, multipart_threshold=5 << 20)
    try:
        await store.check(writable=True, fence=OpenFence())
        await store.clean_temporaries(OpenFence())
        listing = await store.list()
    except SyncdError as exc:
        print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
        return
    print(json.dumps({"complete": listing.complete, "entries": sorted(listing.entries),
                      "unreadable": listing.unreadable, "refused": listing.refused}))

asyncio.run(main())
"""


def _list_unprivileged(root: Path) -> dict[str, Any]:
    setpriv = shutil.which("setpriv")
    assert setpriv is not None
    done = subprocess.run(
        [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--", sys.executable,
         "-c", _PROBE, str(root)], capture_output=True, text=True, timeout=60, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.fixture
def volume(tmp_path: Path) -> Any:
    root = tmp_path / "vol"
    for rel, data in [("ok.txt", b"ok"), ("sub/deep/ok.bin", b"deep"),
                      ("nosearch/hidden.bin", b"x"), ("closed/inner/hidden.bin", b"y"),
                      ("sub/locked/z.bin", b"z")]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    modes = {"nosearch": 0o600, "closed": 0o000, "sub/locked": 0o300}
    for rel, mode in modes.items():
        (root / rel).chmod(mode)
    yield root
    for rel in modes:
        (root / rel).chmod(0o755)


def test_volume_listing_names_unreadable_directories_and_lists_the_rest(volume):
    got = _list_unprivileged(volume)
    assert "error" not in got, got
    assert got["complete"] is True
    assert got["entries"] == ["ok.txt", "sub/deep/ok.bin"]
    assert set(got["unreadable"]) == {"nosearch", "closed", "sub/locked"}
    assert got["unreadable"]["nosearch"] == "cannot search directory: Permission denied"
    assert got["unreadable"]["closed"] == "cannot list directory: Permission denied"
    assert got["unreadable"]["sub/locked"] == "cannot list directory: Permission denied"
    assert all("\n" not in why for why in got["unreadable"].values())


def test_volume_listing_of_an_unreadable_root_fails_as_a_read(tmp_path):
    root = tmp_path / "vol"
    root.mkdir()
    (root / ".syncd").mkdir()
    root.chmod(0o300)
    try:
        got = _list_unprivileged(root)
    finally:
        root.chmod(0o755)
    assert got["error"] == "AccessDenied"
    assert f"cannot read {root}" in got["message"]
