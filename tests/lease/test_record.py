"""Lease records: the self-checking encoding and the dead-holder proof."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncd.lease.record import Corrupt, LeaseRecord, Timing, View, decode, encode, holder_dead, me


def _record(**kw: object) -> LeaseRecord:
    base = LeaseRecord(target="/vol", gen=3, holder=me("a"), ttl_s=60.0, acquired_wall=1.0,
                       renewed_wall=2.0)
    return replace(base, **kw)  # type: ignore[arg-type]


@given(gen=st.integers(1, 2**40), beat=st.integers(0, 2**31), released=st.booleans(),
       target=st.text(max_size=50))
def test_encode_decode_round_trips(gen: int, beat: int, released: bool, target: str) -> None:
    record = _record(gen=gen, beat=beat, released=released, target=target)
    assert decode(encode(record)) == record


@pytest.mark.parametrize("mangle", [
    lambda b: b"",
    lambda b: b[: len(b) // 2],  # truncated
    lambda b: b"\x00" * len(b),
    lambda b: b"not json at all",
    lambda b: b"[1, 2, 3]",
    lambda b: b.replace(b'"gen": 3', b'"gen": 4'),  # hand-edited: the CRC no longer matches
    lambda b: b.replace(b'"released": false', b'"released": true'),
])
def test_damaged_records_are_corrupt_never_valid(mangle: Callable[[bytes], bytes]) -> None:
    data = encode(_record())
    with pytest.raises(Corrupt):
        decode(mangle(data))


def test_a_record_rewritten_with_a_fresh_crc_but_bad_shape_is_corrupt() -> None:
    from syncd.lease import record as mod

    body = {"v": 1, "target": "/vol", "gen": 0, "holder": {"id": "x"}, "ttl_s": 1}
    data = json.dumps({**body, "crc": mod._crc(body)}).encode()
    with pytest.raises(Corrupt):
        decode(data)


def test_holder_dead_only_when_provable() -> None:
    local = me("a")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        from syncd.lease.record import start_ticks

        alive = replace(local, pid=child.pid, nonce="other", started=start_ticks(child.pid) or 0)
        assert not holder_dead(alive, local)
        assert holder_dead(replace(alive, started=alive.started + 1), local)  # pid reused
        assert not holder_dead(replace(alive, boot="another-boot"), local)  # other kernel
        assert not holder_dead(replace(alive, pidns="pid:[1]"), local)  # other namespace
    finally:
        child.kill()
        child.wait()
    assert holder_dead(alive, local)  # gone
    assert holder_dead(replace(local, nonce="earlier"), local)  # our pid, an earlier process
    assert not holder_dead(local, local)


def test_zombie_holder_counts_as_dead() -> None:
    local = me("a")
    from syncd.lease.record import start_ticks

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    ticks = start_ticks(child.pid)
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped
    try:
        assert holder_dead(replace(local, pid=child.pid, nonce="z", started=ticks or 0), local)
    finally:
        child.wait()


def test_next_generation_never_goes_below_the_floor() -> None:
    assert View().next_gen == 1
    assert View(gen=4).next_gen == 5
    assert View(gen=0, floor=9, corrupt="x").next_gen == 10
    assert Timing(ttl_s=60, skew_margin_s=15).takeover_after(None) == 75
    assert Timing(ttl_s=10, skew_margin_s=5).takeover_after(60) == 65  # the holder's TTL rules
