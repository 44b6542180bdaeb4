"""syncd.stores.versions: artifact versions on a real volume, made current by one rename.

A worker loading a model must see all of one version or all of another, and a reader that
resolved the link keeps its files across a switch. A writer that lost its lease must change
nothing. Everything here runs on the real filesystem under tmp_path.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from syncd.artifacts import LEGACY
from syncd.errors import LeaseLost, StoreError
from syncd.keys import RESERVED_DIR
from syncd.listing import Entry, Recorded, fingerprint
from syncd.stores.base import OpenFence
from syncd.stores.versions import Versions
from syncd.stores.volume import VolumeStore
from syncd.verify import OWN_ALGO, hash_bytes
from tests.fences import CountdownFence

V1 = {"w.bin": b"weights one", "sub/config.json": b'{"v": 1}'}
V2 = {"w.bin": b"weights two!", "sub/config.json": b'{"v": 2}'}


class LostFence:
    """The fence of a writer whose lease another instance has taken over."""

    generation = 3

    def check(self) -> None:
        raise LeaseLost("lease taken over by generation 4")


@pytest.fixture
async def store(tmp_path: Path) -> VolumeStore:
    root = tmp_path / "vol"
    root.mkdir()
    volume = VolumeStore(root, part_size=8 << 20, multipart_threshold=8 << 20)
    await volume.check(writable=True)
    return volume


async def build(versions: Versions, version: str, files: dict[str, bytes]) -> Path:
    """A complete version as the pull side leaves it before the switch."""
    await versions.prepare(version, OpenFence())
    content = versions.content(version)
    for rel, data in files.items():
        (content / rel).parent.mkdir(parents=True, exist_ok=True)
        (content / rel).write_bytes(data)
    return content


def read_all(top: Path) -> dict[str, bytes]:
    return {p.relative_to(top).as_posix(): p.read_bytes()
            for p in sorted(top.rglob("*")) if p.is_file()}


def strays(directory: Path) -> list[str]:
    """Temporary links a switch leaves behind if it failed to clean up."""
    return [p.name for p in directory.iterdir() if ".syncd-" in p.name]


def real(path: Path) -> Path:
    """Where a reader that resolves `path` once ends up."""
    return path.resolve(strict=True)


def present(path: Path) -> bool:
    """Whether the name exists, even as a dangling link."""
    return os.path.lexists(path)


def fingerprint_of(path: Path) -> str:
    st = os.stat(path)
    return fingerprint(Entry(path.name, st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino))


def recorded(path: Path) -> Recorded:
    """What syncd records once it has published and verified `path`."""
    data = path.read_bytes()
    return Recorded(f"{len(data)}:etag", fingerprint_of(path),
                    f"{OWN_ALGO}:{hash_bytes(data, [OWN_ALGO])[OWN_ALGO]}")


# --- building -----------------------------------------------------------------------------------


async def test_versions_prepare_makes_a_version_dir_no_reader_knows_about(
    store: VolumeStore,
) -> None:
    versions = Versions(store, "llama")
    await versions.prepare("v1", OpenFence())
    assert versions.path("v1") == store.root / RESERVED_DIR / "artifacts" / "llama" / "v1"
    assert versions.path("v1").is_dir()
    assert versions.content("v1") == versions.path("v1") / "llama"
    assert await versions.on_disk() == ["v1"]
    assert await versions.current() is None
    assert not (store.root / "llama").exists()


async def test_versions_builder_lists_the_version_with_mirror_keys(store: VolumeStore) -> None:
    """The version dir repeats the artifact path, so the builder takes the mirror's keys."""
    versions = Versions(store, "models/llama")
    await build(versions, "v1", V1)
    builder = versions.builder("v1")
    assert builder.root == versions.path("v1")
    assert builder.tmp_dir == store.tmp_dir  # staging stays on the same volume
    listing = await builder.list()
    assert sorted(listing.entries) == ["models/llama/sub/config.json", "models/llama/w.bin"]


async def test_versions_prepare_is_idempotent(store: VolumeStore) -> None:
    versions = Versions(store, "llama")
    content = await build(versions, "v1", V1)
    await versions.prepare("v1", OpenFence())
    assert read_all(content) == V1


# --- switching ----------------------------------------------------------------------------------


async def test_versions_switch_links_the_artifact_to_the_version(store: VolumeStore) -> None:
    versions = Versions(store, "llama")
    content = await build(versions, "v1", V1)
    assert await versions.switch("v1", OpenFence()) is None
    link = store.root / "llama"
    assert link.is_symlink()
    assert not os.path.isabs(os.readlink(link))  # the volume may be mounted anywhere
    assert real(link) == real(content)
    assert read_all(link) == V1
    assert await versions.current() == "v1"
    assert strays(store.root) == []


async def test_versions_switch_again_replaces_the_link_and_keeps_the_old_version(
    store: VolumeStore,
) -> None:
    versions = Versions(store, "llama")
    old = await build(versions, "v1", V1)
    new = await build(versions, "v2", V2)
    await versions.switch("v1", OpenFence())
    resolved = real(store.root / "llama")  # a worker loading v1
    assert await versions.switch("v2", OpenFence()) is None
    assert await versions.current() == "v2"
    assert real(store.root / "llama") == real(new)
    assert read_all(store.root / "llama") == V2
    assert read_all(resolved) == V1
    assert read_all(old) == V1
    assert await versions.on_disk() == ["v1", "v2"]
    assert strays(store.root) == []


async def test_versions_switch_never_leaves_the_artifact_path_missing(
    store: VolumeStore,
) -> None:
    """A reader racing many switches always resolves the link to one whole version."""
    versions = Versions(store, "llama")
    targets = {versions.link_target(v) for v in ("v1", "v2")}
    await build(versions, "v1", V1)
    await build(versions, "v2", V2)
    await versions.switch("v1", OpenFence())
    link = store.root / "llama"
    seen: set[str] = set()
    missing: list[OSError] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            try:
                seen.add(os.readlink(link))
            except OSError as exc:
                missing.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(40):
            await versions.switch("v2" if i % 2 == 0 else "v1", OpenFence())
    finally:
        done.set()
        thread.join()
    assert missing == []
    assert seen <= targets
    assert await versions.current() == "v1"


async def test_versions_switch_takes_over_a_plain_directory(store: VolumeStore) -> None:
    """A model copied in by hand before syncd managed it is retired, never deleted."""
    legacy = store.root / "llama"
    (legacy / "sub").mkdir(parents=True)
    (legacy / "w.bin").write_bytes(b"hand copied")
    (legacy / "sub" / "config.json").write_bytes(b"{}")
    versions = Versions(store, "llama")
    assert await versions.current() == LEGACY
    content = await build(versions, "v1", V1)
    kept = await versions.switch("v1", OpenFence())
    assert kept is not None
    assert kept.startswith(f"{LEGACY}-")
    assert legacy.is_symlink()
    assert real(legacy) == real(content)
    assert await versions.current() == "v1"
    retired = store.root / RESERVED_DIR / "artifacts" / "llama" / kept
    assert read_all(retired) == {"w.bin": b"hand copied", "sub/config.json": b"{}"}
    assert sorted(await versions.on_disk()) == sorted([kept, "v1"])
    assert strays(store.root) == []


async def test_versions_switch_refuses_to_replace_a_regular_file(store: VolumeStore) -> None:
    versions = Versions(store, "llama")
    await build(versions, "v1", V1)
    (store.root / "llama").write_bytes(b"someone else's file")
    with pytest.raises(StoreError, match="is a file"):
        await versions.switch("v1", OpenFence())
    assert (store.root / "llama").read_bytes() == b"someone else's file"
    assert strays(store.root) == []


async def test_versions_nested_artifact_links_up_to_the_volume_root(store: VolumeStore) -> None:
    versions = Versions(store, "models/llama")
    content = await build(versions, "v1", V1)
    await versions.switch("v1", OpenFence())
    link = store.root / "models" / "llama"
    assert os.readlink(link).startswith("../")
    assert os.readlink(link) == versions.link_target("v1")
    assert real(link) == real(content)
    assert read_all(link) == V1
    assert await versions.current() == "v1"
    assert versions.base.name == "models%2Fllama"  # one directory per artifact, however deep


async def test_versions_nested_artifact_takes_over_a_plain_directory(store: VolumeStore) -> None:
    legacy = store.root / "models" / "llama"
    legacy.mkdir(parents=True)
    (legacy / "w.bin").write_bytes(b"old")
    versions = Versions(store, "models/llama")
    assert await versions.current() == LEGACY
    await build(versions, "v1", V1)
    kept = await versions.switch("v1", OpenFence())
    assert kept is not None
    assert read_all(versions.path(kept)) == {"w.bin": b"old"}
    assert read_all(legacy) == V1
    assert strays(store.root / "models") == []


# --- reading the current version ----------------------------------------------------------------


async def test_versions_current_is_none_without_the_artifact(store: VolumeStore) -> None:
    assert await Versions(store, "llama").current() is None
    assert await Versions(store, "models/llama").current() is None


async def test_versions_current_is_none_for_a_file_or_a_foreign_link(
    store: VolumeStore, tmp_path: Path
) -> None:
    """syncd reports only links it made itself; it must not claim someone else's."""
    (store.root / "file").write_bytes(b"x")
    (store.root / "foreign").symlink_to(tmp_path)
    (store.root / "lookalike").symlink_to(".syncd/artifacts/other/v1/lookalike")
    for name in ("file", "foreign", "lookalike"):
        assert await Versions(store, name).current() is None


# --- seeding ------------------------------------------------------------------------------------


async def test_versions_seed_links_only_files_whose_fingerprint_matches(
    store: VolumeStore,
) -> None:
    """Bytes syncd verified are reused; a file changed since (or missing) is downloaded."""
    versions = Versions(store, "llama")
    old = await build(versions, "v1", {"same.bin": b"s", "sub/same.json": b"j", "edited": b"e"})
    await versions.prepare("v2", OpenFence())
    expected = {
        "same.bin": recorded(old / "same.bin"),
        "sub/same.json": recorded(old / "sub" / "same.json"),
        "edited": recorded(old / "edited"),
        "gone": Recorded("1:e", "1:1:1"),
    }
    os.utime(old / "edited", ns=(1, 1))  # touched after syncd verified it
    seeded = await versions.seed(old, "v2", expected, OpenFence())
    new = versions.content("v2")
    assert seeded.how.links, seeded.how  # a local disk (tests/test_fskind.py)
    assert (seeded.linked, seeded.copied) == (2, {})
    assert read_all(new) == {"same.bin": b"s", "sub/same.json": b"j"}
    assert (new / "same.bin").stat().st_ino == (old / "same.bin").stat().st_ino


async def test_versions_seed_skips_links_and_files_already_built(store: VolumeStore) -> None:
    versions = Versions(store, "llama")
    old = await build(versions, "v1", {"a": b"a", "b": b"b"})
    (old / "ln").symlink_to(old / "a")
    new = await build(versions, "v2", {"b": b"downloaded"})
    expected = {"a": recorded(old / "a"), "b": recorded(old / "b"), "ln": recorded(old / "a")}
    assert (await versions.seed(old, "v2", expected, OpenFence())).linked == 1
    assert read_all(new) == {"a": b"a", "b": b"downloaded"}
    assert not (new / "ln").exists()


async def test_versions_seed_from_a_legacy_directory(store: VolumeStore) -> None:
    legacy = store.root / "llama"
    legacy.mkdir()
    (legacy / "w.bin").write_bytes(b"w")
    versions = Versions(store, "llama")
    await versions.prepare("v1", OpenFence())
    seeded = await versions.seed(legacy, "v1", {"w.bin": recorded(legacy / "w.bin")},
                                 OpenFence())
    assert seeded.linked == 1
    assert read_all(versions.content("v1")) == {"w.bin": b"w"}


async def test_versions_seed_stops_at_the_next_file_once_the_fence_is_lost(
    store: VolumeStore,
) -> None:
    """A holder fenced out midway links nothing more into its build (issue 17)."""
    versions = Versions(store, "llama")
    files = {f"f{i}": bytes([i]) for i in range(6)}
    old = await build(versions, "v1", files)
    await versions.prepare("v2", OpenFence())
    expected = {k: recorded(old / k) for k in files}
    await versions.seed(old, "v2", {}, OpenFence())  # the volume's link probe is done once
    fence = CountdownFence(allowed=2)
    with pytest.raises(LeaseLost):
        await versions.seed(old, "v2", expected, fence)
    assert len(read_all(versions.content("v2"))) == 2 == fence.passed
    assert fence.refused == 1


async def test_versions_prepare_with_a_lost_lease_creates_nothing(store: VolumeStore) -> None:
    versions = Versions(store, "llama")
    with pytest.raises(LeaseLost):
        await versions.prepare("v1", LostFence())
    assert not (store.meta_dir / "artifacts").exists()


# --- fencing ------------------------------------------------------------------------------------


async def test_versions_switch_with_a_lost_lease_changes_nothing(store: VolumeStore) -> None:
    versions = Versions(store, "llama")
    await build(versions, "v1", V1)
    await build(versions, "v2", V2)
    await versions.switch("v1", OpenFence())
    before = os.readlink(store.root / "llama")
    with pytest.raises(LeaseLost):
        await versions.switch("v2", LostFence())
    assert os.readlink(store.root / "llama") == before
    assert await versions.current() == "v1"
    assert strays(store.root) == []


async def test_versions_switch_with_a_lost_lease_leaves_a_plain_directory(
    store: VolumeStore,
) -> None:
    legacy = store.root / "llama"
    legacy.mkdir()
    (legacy / "w.bin").write_bytes(b"old")
    versions = Versions(store, "llama")
    await build(versions, "v1", V1)
    with pytest.raises(LeaseLost):
        await versions.switch("v1", LostFence())
    assert await versions.current() == LEGACY
    assert read_all(legacy) == {"w.bin": b"old"}
    assert await versions.on_disk() == ["v1"]
    assert strays(store.root) == []


async def test_versions_unlink_with_a_lost_lease_keeps_the_link(store: VolumeStore) -> None:
    versions = Versions(store, "llama")
    await build(versions, "v1", V1)
    await versions.switch("v1", OpenFence())
    with pytest.raises(LeaseLost):
        await versions.unlink(LostFence())
    assert (store.root / "llama").is_symlink()
    assert await versions.current() == "v1"


# --- unlinking and removing ---------------------------------------------------------------------


async def test_versions_unlink_removes_the_link_but_keeps_versions(store: VolumeStore) -> None:
    """Readers that resolved the link keep loading from the version directory."""
    versions = Versions(store, "llama")
    content = await build(versions, "v1", V1)
    await versions.switch("v1", OpenFence())
    await versions.unlink(OpenFence())
    assert not present(store.root / "llama")
    assert await versions.current() is None
    assert read_all(content) == V1


async def test_versions_unlink_leaves_a_plain_directory(store: VolumeStore) -> None:
    legacy = store.root / "llama"
    legacy.mkdir()
    (legacy / "w.bin").write_bytes(b"mine")
    await Versions(store, "llama").unlink(OpenFence())
    assert read_all(legacy) == {"w.bin": b"mine"}


@pytest.mark.parametrize("artifact", ["llama", "models/llama"])
async def test_versions_unlink_of_an_absent_artifact_is_a_no_op(
    store: VolumeStore, artifact: str
) -> None:
    """artifact_pull._gone unlinks artifacts that may never have been switched in."""
    await Versions(store, artifact).unlink(OpenFence())
    assert sorted(p.name for p in store.root.iterdir()) == [RESERVED_DIR]


async def test_versions_remove_deletes_one_version(store: VolumeStore) -> None:
    versions = Versions(store, "llama")
    await build(versions, "v1", V1)
    await build(versions, "v2", V2)
    await versions.remove("v1", OpenFence())
    assert await versions.on_disk() == ["v2"]
    assert not versions.path("v1").exists()
    await versions.remove("never-built", OpenFence())
    assert await versions.on_disk() == ["v2"]
    assert read_all(versions.content("v2")) == V2


async def test_versions_remove_stops_at_the_next_entry_once_the_fence_is_lost(
    store: VolumeStore,
) -> None:
    """Pruning by a holder fenced out midway deletes nothing more."""
    versions = Versions(store, "llama")
    files = {f"f{i}": b"x" for i in range(6)}
    await build(versions, "v1", files)
    fence = CountdownFence(allowed=2)
    with pytest.raises(LeaseLost):
        await versions.remove("v1", fence)
    assert len(read_all(versions.content("v1"))) == len(files) - 2
    assert fence.refused == 1


async def test_versions_remove_unlinks_a_symlink_without_following_it(
    store: VolumeStore, tmp_path: Path
) -> None:
    """A link planted among the versions must not make syncd delete what it points at."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"keep")
    versions = Versions(store, "llama")
    await versions.prepare("v1", OpenFence())
    versions.path("planted").symlink_to(outside)
    await versions.remove("planted", OpenFence())
    assert not present(versions.path("planted"))
    assert read_all(outside) == {"precious": b"keep"}


async def test_versions_on_disk_is_empty_before_any_version(store: VolumeStore) -> None:
    assert await Versions(store, "llama").on_disk() == []


# --- fenced switches and leftovers of killed ones -----------------------------------------------


async def test_versions_switch_fenced_after_its_temporary_link_keeps_the_old_version(
    store: VolumeStore,
) -> None:
    """The lease is lost between staging the new link and renaming it over the old one."""
    versions = Versions(store, "llama")
    await build(versions, "v1", V1)
    await build(versions, "v2", V2)
    await versions.switch("v1", OpenFence())
    fence = CountdownFence(allowed=2)  # the switch's start, the temporary link; not the rename
    with pytest.raises(LeaseLost):
        await versions.switch("v2", fence)
    assert fence.refused == 1
    assert await versions.current() == "v1"
    assert read_all(store.root / "llama") == V1
    assert strays(store.root) == []


def killed_switch(versions: Versions, version: str, hexpart: str = "0123456789ab") -> Path:
    """What a switch killed between creating its temporary link and renaming it leaves."""
    parent = (versions.store.root / versions.artifact).parent
    tmp = parent / f".{Path(versions.artifact).name}.syncd-{hexpart}"
    tmp.symlink_to(versions.link_target(version))
    return tmp


@pytest.mark.parametrize("artifact", ["llama", "models/llama"])
async def test_versions_sweep_removes_a_killed_switch_link_and_nothing_alike(
    store: VolumeStore, tmp_path: Path, artifact: str
) -> None:
    versions = Versions(store, artifact)
    await build(versions, "v1", V1)
    await build(versions, "v2", V2)
    await versions.switch("v1", OpenFence())
    leftover = killed_switch(versions, "v2")
    parent, name = leftover.parent, Path(artifact).name
    lookalikes = {
        f".{name}.syncd-0123456789a": "link",  # 11 hex digits
        f".{name}.syncd-0123456789AB": "link",  # upper case: never made by syncd
        f".{name}.syncd-0123456789ab.bak": "link",
        f"{name}.syncd-0123456789ab": "link",  # no leading dot
        f".{name}x.syncd-0123456789ab": "link",  # another name
        f".{name}.syncd-aaaaaaaaaaaa": "file",  # the exact name, but not a link
        f".{name}.syncd-bbbbbbbbbbbb": "foreign",  # the exact name, pointing elsewhere
    }
    for entry, kind in lookalikes.items():
        if kind == "file":
            (parent / entry).write_bytes(b"someone's")
        else:
            (parent / entry).symlink_to(versions.link_target("v2") if kind == "link"
                                        else str(tmp_path))
    assert await versions.sweep(OpenFence()) == 1
    assert not present(leftover)
    assert sorted(p.name for p in parent.iterdir() if ".syncd-" in p.name) == sorted(lookalikes)
    assert await versions.current() == "v1"
    assert read_all(store.root / artifact) == V1
    assert await versions.sweep(OpenFence()) == 0


async def test_versions_sweep_retires_a_directory_a_killed_takeover_swapped_out(
    store: VolumeStore,
) -> None:
    """Killed after RENAME_EXCHANGE and before moving the old directory away: the link is
    in place and the hand-copied directory sits under the temporary name. It is retired
    like any taken-over directory (kept for readers, pruned later), never deleted."""
    versions = Versions(store, "llama")
    await build(versions, "v1", V1)
    swapped = store.root / ".llama.syncd-00ff00ff00ff"
    swapped.mkdir()
    (swapped / "w.bin").write_bytes(b"hand copied")
    (store.root / "llama").symlink_to(versions.link_target("v1"))
    assert await versions.sweep(OpenFence()) == 1
    assert not present(swapped)
    kept = [v for v in await versions.on_disk() if v.startswith(f"{LEGACY}-")]
    assert len(kept) == 1
    assert read_all(versions.path(kept[0])) == {"w.bin": b"hand copied"}
    assert await versions.current() == "v1"


async def test_versions_sweep_with_a_lost_lease_removes_nothing(store: VolumeStore) -> None:
    versions = Versions(store, "llama")
    await build(versions, "v1", V1)
    leftover = killed_switch(versions, "v1")
    with pytest.raises(LeaseLost):
        await versions.sweep(LostFence())
    assert present(leftover)


async def test_versions_sweep_without_the_artifact_directory_is_a_no_op(
    store: VolumeStore,
) -> None:
    assert await Versions(store, "models/llama").sweep(OpenFence()) == 0
