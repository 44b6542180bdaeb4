"""The plan a dry run prints is the plan the pass carries out, and the pass does exactly that
(issue 18, item 1). Over generated trees with artifacts, markers, files still settling, file
<-> directory changes and both delete settings, against a real S3 server (moto) and a real
volume directory:

- `plan_for` (what `--dry-run` and `check` use) reads only, and plans what `cycle` then plans;
- every planned copy arrives with the source's bytes, every planned delete is gone, every
  refused or held key and every key the plan does not name is left as it was, an artifact is
  switched to the planned version or keeps the one it had;
- a second plan right after has nothing left to copy or delete (the pass converged).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncd import config as config_mod
from syncd.config import Config
from syncd.listing import Entry, Listing
from syncd.pass_plan import PassPlan, Step
from syncd.plan import Copy, Delete, Refuse, Skip
from syncd.runtime.mirror import cycle, opened, plan_for
from syncd.runtime.passes import Memory
from syncd.settle import Quiet
from tests.conftest import new_bucket_name
from tests.mirrors import write_config
from tests.servers import S3Server

EXAMPLES = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])
KEYS = ["ckpt-1/w.bin", "ckpt-1/c.json", "ckpt-1/_COMPLETE", "ckpt-2/w.bin", "m/a",
        "m/a/b.txt", "top.txt", "x/y/z.bin"]
BODIES = [b"1", b"22", b"333", b"4444" * 100]
TREES = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(BODIES), max_size=len(KEYS))


def _on_a_volume(files: dict[str, bytes]) -> dict[str, bytes]:
    """A volume cannot hold a file and a directory at one path: the directory wins."""
    dirs = {"/".join(k.split("/")[:i]) for k in files for i in range(1, k.count("/") + 1)}
    return {k: v for k, v in files.items() if k not in dirs}


def _volume(root: Path) -> dict[str, bytes]:
    """What a reader finds under `root`, artifact links followed, syncd's own dir left out."""
    out: dict[str, bytes] = {}
    for top, dirs, names in os.walk(root, followlinks=True):
        rel_top = Path(top).relative_to(root).as_posix()
        if rel_top == ".":
            dirs[:] = [d for d in dirs if d != ".syncd"]
            rel_top = ""
        for name in names:
            out[f"{rel_top}/{name}".lstrip("/")] = (Path(top) / name).read_bytes()
    return out


def _write_volume(root: Path, files: dict[str, bytes]) -> None:
    for key, body in files.items():
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)


class Bucket:
    def __init__(self, server: S3Server) -> None:
        self.client = server.client()
        self.name = new_bucket_name()
        self.client.create_bucket(Bucket=self.name)

    def set(self, files: dict[str, bytes]) -> None:
        for key in self.files():
            if key not in files and not key.startswith(".syncd/"):
                self.client.delete_object(Bucket=self.name, Key=f"models/{key}")
        for key, body in files.items():
            self.client.put_object(Bucket=self.name, Key=f"models/{key}", Body=body)

    def files(self) -> dict[str, bytes]:
        out = {}
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.name, Prefix="models/")
        for page in pages:
            for obj in page.get("Contents", ()):
                body = self.client.get_object(Bucket=self.name, Key=obj["Key"])["Body"].read()
                out[obj["Key"].removeprefix("models/")] = body
        return out


@pytest.fixture
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    counter = iter(range(1 << 30))

    def fresh() -> Path:
        return tmp_path_factory.mktemp(f"agree{next(counter)}")
    yield fresh


def _config(where: Path, server: S3Server, bucket: str, *, direction: str, delete: bool,
            marker: bool) -> Config:
    vol = where / "vol"
    vol.mkdir(exist_ok=True)
    extra = ['artifacts = ["ckpt-*"]', "keep_versions_s = 0",
             f"delete = {'true' if delete else 'false'}", "max_delete_fraction = 1.0"]
    if marker:
        extra.append('marker = "_COMPLETE"')
    path = write_config(where / "c.toml", server.endpoint_url, bucket, direction=direction,
                        root=vol, extra="\n".join(extra))
    return config_mod.load(path)


def _steps(plan: PassPlan) -> list[tuple[str, Step, str | None, str | None]]:
    return [(a.name, a.step, a.version, a.detail) for a in plan.artifacts]


async def _dry(cfg: Config) -> PassPlan:
    mirror = cfg.mirrors[0]
    async with opened(cfg, mirror, write=False) as sides:
        plan, _ = await plan_for(sides, mirror, cfg)
    return plan


async def _run(cfg: Config, memory: Memory | None = None) -> PassPlan:
    seen: list[PassPlan] = []
    _, stats = await cycle(cfg, cfg.mirrors[0], log=structlog.get_logger(), memory=memory,
                           planned=seen.append)
    assert stats.failed == 0, [str(e) for e in stats.errors]
    return seen[0]


def _assert_carried_out(plan: PassPlan, before: dict[str, bytes], after: dict[str, bytes],
                        source: dict[str, bytes]) -> None:
    """`after` is what the plan says `before` becomes, given the source's `source`."""
    named: set[str] = set()
    for action in plan.loose.actions:
        named.add(action.key)
        if isinstance(action, Copy):
            assert after.get(action.key) == source[action.key], action
        elif isinstance(action, Delete):
            assert action.key not in after, action
        elif isinstance(action, Refuse | Skip):
            assert after.get(action.key) == before.get(action.key), action
    for art in plan.artifacts:
        mine = {k for k in set(before) | set(after) | set(source)
                if k.startswith(f"{art.name}/")}
        named |= mine
        if art.step in (Step.BUILD, Step.READY) and art.files:
            wanted = {f"{art.name}/{rel}": source[f"{art.name}/{rel}"] for rel in art.files}
            assert {k: after[k] for k in mine if k in after} == wanted, art
        elif art.step in (Step.HOLD, Step.KEEP):
            assert {k: after.get(k) for k in mine} == {k: before.get(k) for k in mine}, art
    for key in set(before) | set(after):
        if key not in named and not key.startswith("ckpt-"):
            assert after.get(key) == before.get(key), key


@EXAMPLES
@given(first=TREES, second=TREES, delete=st.booleans())
def test_a_pull_does_what_its_dry_run_said(moto_server: S3Server, workdir: Any,
                                           first: dict[str, bytes], second: dict[str, bytes],
                                           delete: bool) -> None:
    bucket = Bucket(moto_server)
    cfg = _config(workdir(), moto_server, bucket.name, direction="pull", delete=delete,
                  marker=False)
    vol = Path(str(cfg.volume_root(cfg.mirrors[0])))
    bucket.set(first)
    asyncio.run(_run(cfg))
    bucket.set(second)

    before = _volume(vol)
    dry = asyncio.run(_dry(cfg))
    assert _volume(vol) == before  # planning wrote nothing
    done = asyncio.run(_run(cfg))
    assert done.flat().actions == dry.flat().actions
    assert _steps(done) == _steps(dry)
    _assert_carried_out(done, before, _volume(vol), second)

    again = asyncio.run(_dry(cfg)).flat()
    assert not again.copies and not again.deletes and not again.adopts, again.actions


@EXAMPLES
@given(first=TREES, second=TREES, delete=st.booleans(), marker=st.booleans(),
       settling=st.sets(st.sampled_from(KEYS)))
def test_a_push_does_what_its_plan_said(moto_server: S3Server, workdir: Any,
                                        first: dict[str, bytes], second: dict[str, bytes],
                                        delete: bool, marker: bool, settling: set[str]) -> None:
    bucket = Bucket(moto_server)
    cfg = _config(workdir(), moto_server, bucket.name, direction="push", delete=delete,
                  marker=marker)
    vol = Path(str(cfg.volume_root(cfg.mirrors[0])))
    _write_volume(vol, _on_a_volume(first))
    asyncio.run(_run(cfg))
    for path in vol.iterdir():
        if path.name != ".syncd":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    second = _on_a_volume(second)
    _write_volume(vol, second)

    before = {k: v for k, v in bucket.files().items() if not k.startswith(".syncd/")}
    dry = asyncio.run(_dry(cfg))  # a one-shot run waits for no file to settle
    assert {k: v for k, v in bucket.files().items() if not k.startswith(".syncd/")} == before
    # a daemon that saw the settled files a minute ago and the others only now
    quiet = Quiet(quiet_s=30.0)
    stats = {k: (vol / k).stat() for k in second if k not in settling}
    quiet.unsettled(Listing.of(Entry(k, s.st_size, mtime_ns=s.st_mtime_ns, inode=s.st_ino)
                               for k, s in stats.items()), time.monotonic() - 60.0)
    done = asyncio.run(_run(cfg, Memory(quiet=quiet)))
    if not settling & set(second):
        assert done.flat().actions == dry.flat().actions
        assert _steps(done) == _steps(dry)
    after = bucket.files()
    data = {k: v for k, v in after.items()
            if not k.startswith(".syncd/") and not k.endswith(".syncd-manifest.json")}
    old = {k: v for k, v in before.items() if not k.endswith(".syncd-manifest.json")}
    _assert_carried_out(done, old, data, second)
    for art in done.artifacts:
        manifest = f"{art.name}/.syncd-manifest.json"
        if art.step is Step.PUBLISH:
            assert manifest in after, art
        elif art.step is Step.HOLD:
            assert after.get(manifest) == before.get(manifest), art
        elif art.step is Step.REMOVE:
            assert manifest not in after, art

    if not settling & set(second):  # else what still settles is left for a later pass
        again = asyncio.run(_dry(cfg)).flat()
        assert not again.copies and not again.deletes, again.actions
