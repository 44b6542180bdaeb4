"""The lease journal (syncd/lease/journal.py) and its audit (tests/journal_audit.py) on real
parts: volume directories, a full tmpfs, a process killed with SIGKILL after its rename."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import structlog

from syncd.errors import LeaseLost, NoSpace
from syncd.lease.journal import Journal
from syncd.lease.lease import Lease
from syncd.lease.record import Holder, LeaseRecord, Timing, me
from syncd.lease.volume import VolumeLease
from syncd.listing import Entry
from syncd.plan import Action, Copy, Delete, Plan, Reason
from syncd.stores.base import Fence
from syncd.stores.volume import VolumeStore
from syncd.transfer import Transfer
from tests import journal_audit
from tests.journal_audit import Finding
from tests.lease.full_disk import fill_inodes, small_tmpfs
from tests.sources import BytesSource

REPO = Path(__file__).resolve().parents[2]
FAST = Timing(ttl_s=0.3, renew_interval_s=0.05, renew_deadline_s=0.2, skew_margin_s=0.1)
IDENTITY = ("instance", "pid", "nonce", "event", "at")


def _holder(name: str) -> Holder:
    return replace(me(name), id=name, nonce=f"{name}-{uuid.uuid4().hex}", boot="")


def _lines(path: Path, *events: str) -> list[dict[str, Any]]:
    return [dict(e) for e in journal_audit.read(path) if not events or e["event"] in events]


@dataclass
class Side:
    """A volume, the lease on it and a store writing to it."""

    root: Path
    backend: VolumeLease
    store: VolumeStore

    def lease(self, name: str, journal: Path, timing: Timing = FAST, **kw: Any
              ) -> tuple[Lease, Journal]:
        holder = _holder(name)
        j = Journal(str(journal), name, nonce=holder.nonce)
        return Lease(self.backend, timing, holder, journal=j, **kw), j


async def _side(root: Path) -> Side:
    root.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - test setup
    backend = VolumeLease(root)
    await backend.prepare()
    store = VolumeStore(root, part_size=5 << 20, multipart_threshold=5 << 20)
    await store.check(writable=True)
    return Side(root, backend, store)


@pytest.fixture
async def side(tmp_path: Path) -> AsyncIterator[Side]:
    s = await _side(tmp_path / "vol")
    yield s
    await s.store.close()


async def _publish(side: Side, journal: Journal, key: str, fence: Fence,
                   data: bytes = b"x") -> None:
    staged = await side.store.stage(BytesSource(key, data), frozenset(), fence.generation)
    with journal.write("publish", key, fence) as w:
        await side.store.publish(staged, w.fence)


# --- lease events ----------------------------------------------------------------------------

async def test_lease_lines_name_their_writer_and_carry_monotonic_validity_windows(
        side: Side, tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    a, _ = side.lease("a", path)
    assert await a.try_acquire() == "free"
    for _ in range(3):
        await asyncio.sleep(0.01)
        assert await a.renew()
    await a.release()
    lines = _lines(path)
    assert [e["event"] for e in lines] == ["acquired", "renewed", "renewed", "renewed",
                                           "released"]
    for e in lines:
        assert set(IDENTITY) <= set(e), e
        assert (e["instance"], e["pid"], e["nonce"]) == ("a", os.getpid(), a.holder.nonce)
        assert e["gen"] == 1 and e["target"] == str(side.root)
    windows = [(e["start"], e["valid_until"]) for e in lines[:4]]
    for (start, until), e in zip(windows, lines, strict=False):
        assert start <= e["at"] and until == pytest.approx(start + FAST.renew_deadline_s)
    assert windows == sorted(windows) and len(set(windows)) == 4
    assert lines[0]["reason"] == "free" and lines[0]["previous"] is None
    assert lines[4]["fenced_at"] <= lines[4]["at"]
    assert Journal(None, "x").enabled is False
    default = Journal(str(tmp_path / "d.jsonl"), "d")
    default.event("hello")
    assert _lines(tmp_path / "d.jsonl")[0]["nonce"] == me("d").nonce  # the holder's nonce


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _SlowFirstRenewal:
    """The volume backend, but its first renewal waits for `gate` (a slow write)."""

    def __init__(self, inner: VolumeLease) -> None:
        self._inner = inner
        self.kind, self.target = inner.kind, inner.target
        self.gate = asyncio.Event()
        self._first = True

    async def renew(self, record: LeaseRecord, token: Any) -> Any:
        if self._first:
            self._first = False
            await self.gate.wait()
        return await self._inner.renew(record, token)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def test_a_renewal_that_ends_after_a_later_one_never_moves_the_window_back(
        side: Side, tmp_path: Path) -> None:
    clock, slow, holder = _Clock(), _SlowFirstRenewal(side.backend), _holder("a")
    path = tmp_path / "a.jsonl"
    a = Lease(slow, FAST, holder, clock=clock,
              journal=Journal(str(path), "a", nonce=holder.nonce))
    await a.try_acquire()
    clock.now += 0.05
    first = asyncio.create_task(a.renew())  # begins at 1000.05; its write is slow
    await asyncio.sleep(0.01)
    clock.now += 0.05
    assert await a.renew()  # begins at 1000.10, done at once
    slow.gate.set()
    assert await first  # ends last, but began first: the window stays
    windows = [(e["start"], e["valid_until"]) for e in _lines(path, "acquired", "renewed")]
    assert [w[0] for w in windows] == pytest.approx([1000.0, 1000.10, 1000.10])
    assert windows == sorted(windows)
    assert a.valid_for() == pytest.approx(FAST.renew_deadline_s)
    assert journal_audit.regressions([path]) == []


# --- publications ----------------------------------------------------------------------------

def _transfer(src: VolumeStore, side: Side, fence: Fence, journal: Journal) -> Transfer:
    return Transfer(src, side.store, {}, fence, concurrency=2, log=structlog.get_logger(),
                    journal=journal)


@pytest.fixture
async def source(tmp_path: Path) -> AsyncIterator[VolumeStore]:
    root = tmp_path / "src"
    root.mkdir()
    (root / "a.bin").write_bytes(os.urandom(32 << 10))
    (root / "big.bin").write_bytes(os.urandom(1 << 20))
    store = VolumeStore(root, part_size=5 << 20, multipart_threshold=5 << 20)
    yield store
    await store.close()


async def _entries(store: VolumeStore) -> dict[str, Entry]:
    return (await store.list()).entries


async def test_publications_and_deletes_are_journaled_before_and_after_with_their_keys(
        side: Side, source: VolumeStore, tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    a, journal = side.lease("a", path, Timing())
    await a.try_acquire()
    for name in ("old-1.txt", "old-2.txt"):
        (side.root / name).write_bytes(b"old")
    have = await _entries(side.store)
    actions: list[Action] = [Copy(k, Reason.NEW, e)
                             for k, e in (await _entries(source)).items()]
    actions += [Delete(k, Reason.ABSENT_FROM_SOURCE, have[k]) for k in ("old-1.txt", "old-2.txt")]
    plan = Plan(actions)
    stats = await _transfer(source, side, a.fence(), journal).run(plan)
    assert (stats.copied, stats.deleted) == (2, 2)

    begins = _lines(path, "publish_begin", "delete_begin")
    ends = _lines(path, "publish", "delete")
    assert sorted(e.get("key", "") for e in begins) == ["", "a.bin", "big.bin"]
    assert [e["keys"] for e in begins if e["op"] == "delete"] == [["old-1.txt", "old-2.txt"]]
    assert [e["keys"] for e in ends if e["op"] == "delete"] == [["old-1.txt", "old-2.txt"]]
    for begin in begins:
        end = next(e for e in ends if e["seq"] == begin["seq"])
        assert begin["start"] == end["start"] <= end["checked_at"] <= end["end"] == end["at"]
        assert end["outcome"] == "ok" and end["gen"] == begin["gen"] == 1
        assert begin["target"] == end["target"] == str(side.root)
        assert set(IDENTITY) <= set(begin)
    assert journal_audit.problems([path]) == []


async def test_a_publication_cut_off_by_a_full_disk_before_its_rename_is_failed(
        source: VolumeStore, tmp_path: Path) -> None:
    """A small file is written at publication, in the call that renames it: ENOSPC there
    stops it before its rename, so nothing landed and the journal says so. Out of inodes,
    not blocks: the free-space check before staging passes, the file cannot be created."""
    path = tmp_path / "a.jsonl"
    with small_tmpfs(tmp_path / "full", inodes=64) as root:
        side = await _side(root)
        a, journal = side.lease("a", path, Timing())
        await a.try_acquire()
        fill_inodes(root)
        entries = await _entries(source)
        with pytest.raises(NoSpace):
            await _transfer(source, side, a.fence(), journal).run(
                Plan([Copy("a.bin", Reason.NEW, entries["a.bin"])]))
        assert not (root / "a.bin").exists()
        assert os.listdir(root / ".syncd/tmp") == []
    [end] = _lines(path, "publish", "publish_failed", "publish_fenced")
    assert (end["event"], end["outcome"], end["key"]) == ("publish_failed", "failed", "a.bin")
    assert end["error"].startswith("NoSpace") and end["checked_at"] is None
    [p] = journal_audit.publications([path])
    assert not p.may_have_landed


async def test_a_publication_the_fence_refuses_is_fenced_and_lands_nothing(
        side: Side, source: VolumeStore, tmp_path: Path) -> None:
    clock, path = _Clock(), tmp_path / "a.jsonl"
    a, journal = side.lease("a", path, Timing(), clock=clock)
    await a.try_acquire()
    entries = await _entries(source)
    clock.now += Timing().renew_deadline_s  # no renewal in time: the lease is lost
    with pytest.raises(LeaseLost):
        await _transfer(source, side, a.fence(), journal).run(
            Plan([Copy("a.bin", Reason.NEW, entries["a.bin"])]))
    assert not (side.root / "a.bin").exists()
    events = [e["event"] for e in _lines(path)]
    assert events == ["acquired", "publish_begin", "lost", "publish_fenced"]
    assert _lines(path, "publish_fenced")[0]["outcome"] == "fenced"


class _Boom(Exception):
    pass


@pytest.mark.parametrize(("how", "event", "outcome"), [
    ("ok", "publish", "ok"),
    ("error before the commit point", "publish_failed", "failed"),
    ("cancelled before the commit point", "publish_failed", "failed"),
    ("fence refused", "publish_fenced", "fenced"),
    ("error after the commit point", "publish", "unknown"),
    ("fence refused after the commit point", "publish", "unknown"),
    ("unmarked: ok", "publish", "ok"),
    ("unmarked: error", "publish", "unknown"),
    ("unmarked: fence refused", "publish_fenced", "fenced"),
    ("committing() then error", "publish", "unknown"),
    ("error before committing()", "publish_failed", "failed"),
])
async def test_the_outcome_says_what_happened(side: Side, tmp_path: Path, how: str,
                                              event: str, outcome: str) -> None:
    clock, path = _Clock(), tmp_path / "a.jsonl"
    a, journal = side.lease("a", path, Timing(), clock=clock)
    await a.try_acquire()
    fence = a.fence()

    async def attempt() -> None:
        fenced = not how.startswith("unmarked") and "committing()" not in how
        with journal.write("publish", "k", fence if fenced else fence.generation,
                           marks_commit="committing()" in how) as w:
            f = w.fence if fenced else fence
            if "after" in how:
                f.check()
            if "committing() then" in how:
                w.committing()
            if "fence refused" in how:
                clock.now += 1000
                f.check()
            if "cancelled" in how:
                raise asyncio.CancelledError
            if "error" in how:
                raise _Boom("disk on fire")

    if how.endswith("ok"):
        await attempt()
    else:
        with pytest.raises((_Boom, LeaseLost, asyncio.CancelledError)):
            await attempt()
    [end] = _lines(path, "publish", "publish_failed", "publish_fenced")
    assert (end["event"], end["outcome"]) == (event, outcome)
    assert ("error" in end) == (outcome != "ok")


async def test_a_fence_handed_out_refuses_once_its_publication_is_journaled(
        side: Side, tmp_path: Path) -> None:
    """A worker thread may still run when the outcome is written (a cancelled to_thread):
    it can no longer pass the fence, so "failed" stays true."""
    a, journal = side.lease("a", tmp_path / "a.jsonl", Timing())
    await a.try_acquire()
    with pytest.raises(_Boom), journal.write("publish", "k", a.fence()) as w:
        late = w.fence
        raise _Boom
    with pytest.raises(LeaseLost, match="already ended"):
        late.check()
    a.fence().check()  # the lease itself is fine


KILLED_AFTER_RENAME = """
import asyncio, os, signal, sys
from pathlib import Path
from syncd.lease.journal import Journal
from syncd.lease.lease import Lease
from syncd.lease.record import Timing, me
from syncd.lease.volume import VolumeLease
from syncd.stores.volume import VolumeStore
from tests.sources import BytesSource

async def main(root: Path, journal: str) -> None:
    j = Journal(journal, "victim")
    lease = Lease(VolumeLease(root), Timing(), me("victim"), journal=j)
    await lease.backend.prepare()
    assert await lease.try_acquire()
    store = VolumeStore(root, part_size=5 << 20, multipart_threshold=5 << 20)
    await store.check(writable=True)
    staged = await store.stage(BytesSource("k.bin", b"landed"), frozenset(), lease.gen)
    with j.write("publish", "k.bin", lease.fence()) as w:
        await store.publish(staged, w.fence)
        os.kill(os.getpid(), signal.SIGKILL)  # after the rename, before the outcome line

asyncio.run(main(Path(sys.argv[1]), sys.argv[2]))
"""


async def test_a_process_killed_after_its_rename_leaves_a_begin_line_counted_as_landed(
        side: Side, tmp_path: Path) -> None:
    victim = tmp_path / "victim.jsonl"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", KILLED_AFTER_RENAME, str(side.root), str(victim), cwd=REPO)
    assert await proc.wait() == -signal.SIGKILL
    killed = time.monotonic()
    assert (side.root / "k.bin").read_bytes() == b"landed"
    assert [e["event"] for e in _lines(victim)] == ["acquired", "publish_begin"]
    [open_] = journal_audit.publications([victim])
    assert (open_.outcome, open_.end, open_.keys) == ("open", math.inf, ("k.bin",))
    assert open_.may_have_landed

    path = tmp_path / "b.jsonl"
    b, journal = side.lease("b", path, Timing())
    b.holder = replace(b.holder, boot=me("b").boot)  # may prove a local holder dead
    assert await b.try_acquire() == "holder process is gone"
    await _publish(side, journal, "after.bin", b.fence())
    took = _lines(path, "acquired")[0]["at"]
    [first, _] = journal_audit.publications([victim, path])
    assert first.end == took  # its death, proven by the takeover, ends it
    assert journal_audit.problems([victim, path]) == []
    [first, _] = journal_audit.publications([victim, path], halted={"victim": killed})
    assert first.end == killed


# --- the audit -------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Unchecked:
    """The fence of a writer that never checks its lease: what the audit exists to catch."""

    generation: int

    def check(self) -> None:
        return None


async def test_the_audit_passes_a_handover_and_catches_a_writer_past_its_fence(
        side: Side, tmp_path: Path) -> None:
    """Real leases on one volume with a fast timing and the real clock: `a` writes and
    renews, then goes quiet; `b` takes over once it has seen ttl + margin of silence."""
    ja, jb = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a, journal_a = side.lease("a", ja)
    b, journal_b = side.lease("b", jb)
    assert await a.try_acquire() == "free"
    for i in range(3):
        await _publish(side, journal_a, f"a-{i}.bin", a.fence())
        assert await a.renew()
    assert await b.try_acquire() is None
    deadline = time.monotonic() + 10
    while (reason := await b.try_acquire()) is None:
        assert time.monotonic() < deadline, "b never took over"
        await asyncio.sleep(0.02)
    assert reason == "expired"
    await _publish(side, journal_b, "b-0.bin", b.fence())
    assert journal_audit.problems([ja, jb]) == []
    assert [t.gen for t in journal_audit.tenures([jb, ja])] == [1, 2]

    with pytest.raises(LeaseLost):  # a's own fence stops it ...
        await _publish(side, journal_a, "a-late.bin", a.fence())
    assert journal_audit.problems([ja, jb]) == []
    await _publish(side, journal_a, "a-late.bin", _Unchecked(a.gen))  # ... a broken one not
    found = {f.kind for f in journal_audit.problems([ja, jb])}
    assert found == {"published outside validity", "publications overlap"}


def _line(event: str, who: str, at: float, nonce: str = "", **fields: Any
          ) -> dict[str, Any]:
    return {"instance": who, "pid": 1, "nonce": nonce or f"n-{who}", "event": event, "at": at,
            **fields}


def _acquired(who: str, gen: int, at: float, nonce: str = "", reason: str = "free",
              until: float = 0.0) -> dict[str, Any]:
    return _line("acquired", who, at, nonce, gen=gen, target="T", reason=reason,
                 previous=None, start=at, valid_until=until or at + 1)


def _published(who: str, gen: int, seq: int, start: float, end: float | None,
               outcome: str = "ok") -> list[dict[str, Any]]:
    base: dict[str, Any] = {"op": "publish", "key": f"k{seq}", "gen": gen, "seq": seq,
                            "target": "T"}
    out = [_line("publish_begin", who, start, **base, start=start)]
    if end is not None:
        event = "publish" if outcome in ("ok", "unknown") else f"publish_{outcome}"
        out.append(_line(event, who, end, **base, start=start, end=end, outcome=outcome,
                         checked_at=start))
    return out


def _kinds(findings: list[Finding]) -> list[str]:
    return sorted(f.kind for f in findings)


def test_audit_finds_two_holders_of_one_generation_even_under_one_instance_id() -> None:
    one = [_acquired("x", 1, 10.0, nonce="first")]
    two = [_acquired("x", 1, 10.1, nonce="second")]
    assert _kinds(journal_audit.double_holders([one, two])) == ["double holder"]
    assert "first" in str(journal_audit.double_holders([one, two])[0])
    assert journal_audit.double_holders([one, [_acquired("y", 2, 20.0)]]) == []


def test_audit_finds_windows_that_move_back_and_validity_past_a_takeover() -> None:
    a = [_acquired("a", 1, 10.0, until=11.0),
         _line("renewed", "a", 10.6, gen=1, target="T", start=10.5, valid_until=11.5),
         _line("renewed", "a", 10.8, gen=1, target="T", start=10.4, valid_until=11.4)]
    assert _kinds(journal_audit.regressions([a])) == ["window went back"]
    b = [_acquired("b", 2, 11.2, reason="expired")]
    assert _kinds(journal_audit.overlaps([a, b])) == ["validity overlaps acquisition"]
    later = [_acquired("b", 2, 11.6, reason="expired")]
    assert journal_audit.overlaps([a, later]) == []
    released = [*a, _line("released", "a", 10.95, gen=1, target="T", fenced_at=10.9)]
    assert journal_audit.overlaps([released, [_acquired("b", 2, 10.92)]]) == []
    assert _kinds(journal_audit.overlaps([released, [_acquired("b", 2, 10.85)]])) == [
        "validity overlaps acquisition"]


def test_audit_counts_what_may_have_landed_and_an_open_begin_to_infinity() -> None:
    a = [_acquired("a", 1, 10.0), *_published("a", 1, 1, 10.1, 10.2),
         *_published("a", 1, 2, 10.3, 10.4, outcome="failed"),  # landed nothing
         *_published("a", 1, 3, 10.5, None)]  # killed: may land any time
    b = [_acquired("b", 2, 12.0, reason="expired"), *_published("b", 2, 1, 12.1, 12.2)]
    assert _kinds(journal_audit.problems([a, b])) == ["publications overlap"]
    assert journal_audit.problems([a, b], halted={"a": 10.6}) == []
    ps = journal_audit.publications([a, b], halted={"a": 10.6})
    assert [(p.keys, p.outcome, p.end) for p in ps] == [
        (("k1",), "ok", 10.2), (("k2",), "failed", 10.4), (("k3",), "open", 10.6),
        (("k1",), "ok", 12.2)]
    stray = [*_published("c", 2, 1, 12.3, 12.4)]  # never acquired generation 2
    assert _kinds(journal_audit.problems([a, b, stray], halted={"a": 10.6})) == [
        "published without holding"]
    late = [*_published("a", 1, 9, 11.5, 11.6)]  # after a's validity (10.0 + 1)
    assert _kinds(journal_audit.problems([a, late], halted={"a": 99})) == [
        "published outside validity"]


def test_audit_reads_a_journal_whose_last_line_was_torn(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    path.write_bytes(b'{"event": "acquired", "at": 1}\n{"event": "publ')
    assert [e["event"] for e in journal_audit.read(path)] == ["acquired"]
    path.write_bytes(b'{"event": "acq\n{"event": "acquired", "at": 1}\n')
    with pytest.raises(ValueError, match="line 1"):
        journal_audit.read(path)
    assert journal_audit.read(tmp_path / "missing.jsonl") == []
