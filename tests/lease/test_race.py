"""Ten processes race for one lease, 100 rounds, on each backend: for a free lease and for a
lease that every contender has just judged stale (the ABA case). Exactly one winner per
generation every round, and the record left behind is the winner's."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import queue
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from syncd.lease.record import LeaseRecord, decode, me
from syncd.lease.s3 import LEASE_KEY
from tests.lease.backends import backend
from tests.servers import S3Server

CONTENDERS = 10
ROUNDS = 100


def _record(target: str, gen: int, name: str) -> LeaseRecord:
    return LeaseRecord(target=target, gen=gen, holder=replace(me(name), id=name, nonce=name),
                       ttl_s=60, acquired_wall=time.time(), renewed_wall=time.time())


async def _contend(index: int, kind: str, root: str, endpoint: str | None, bucket: str,
                   barrier: Any, results: Any) -> None:
    server = S3Server("moto", int(endpoint.rsplit(":", 1)[1]), [], Path("/dev/null")) \
        if endpoint else None
    for mode in ("free", "stale"):
        for r in range(ROUNDS):
            target = f"{mode}-{r}"
            async with backend(kind, Path(root) / target, server, bucket) as b:
                if kind == "s3":
                    b.store.prefix = f"{target}/"  # type: ignore[attr-defined]
                else:
                    await b.prepare()
                if mode == "stale" and index == 0:
                    assert await b.create(await b.read(), _record(target, 1, "old")) is not None
                await asyncio.to_thread(barrier.wait)
                view = await b.read()
                name = f"p{index}-{mode}-{r}"
                await asyncio.to_thread(barrier.wait)  # everyone decided on the same view
                token = await b.create(view, _record(target, view.next_gen, name))
                results.put((mode, r, view.gen, name if token is not None else None))


def _worker(*args: Any) -> None:
    asyncio.run(_contend(*args))


@pytest.mark.timeout(600)
@pytest.mark.parametrize("kind", ["volume", "s3"])
def test_exactly_one_winner_per_generation_every_round(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    endpoint, bucket = None, ""
    if kind == "s3":
        server: S3Server = request.getfixturevalue("moto_s3")
        endpoint, bucket = server.endpoint_url, f"race-{uuid.uuid4().hex[:12]}"
        server.client().create_bucket(Bucket=bucket)
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(CONTENDERS), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(i, kind, str(tmp_path), endpoint, bucket,
                                                 barrier, results)) for i in range(CONTENDERS)]
    for p in procs:
        p.start()
    outcomes: dict[tuple[str, int], list[tuple[int, str | None]]] = {}
    received = 0
    deadline = time.monotonic() + 400
    while received < 2 * ROUNDS * CONTENDERS:
        try:
            mode, r, seen, winner = results.get(timeout=1)
        except queue.Empty:
            failed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            assert not failed and time.monotonic() < deadline, f"contenders failed: {failed}"
            continue
        received += 1
        outcomes.setdefault((mode, r), []).append((seen, winner))
    for p in procs:
        p.join(60)
        assert p.exitcode == 0

    for (mode, r), got in outcomes.items():
        winners = [w for _, w in got if w is not None]
        assert len(winners) == 1, (mode, r, got)
        assert {seen for seen, _ in got} == {0 if mode == "free" else 1}
        if kind == "volume":
            data = (tmp_path / f"{mode}-{r}/.syncd/leases"
                    / f"gen-{(1 if mode == 'free' else 2):010d}.json").read_bytes()
        else:
            data = server.client().get_object(
                Bucket=bucket, Key=f"{mode}-{r}/{LEASE_KEY}")["Body"].read()
        record = decode(data)
        assert record.holder.nonce == winners[0]
        assert record.gen == (1 if mode == "free" else 2)
    assert len(outcomes) == 2 * ROUNDS
