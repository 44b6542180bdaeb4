"""syncd.runtime.leases: the Keeper's lease writes survive the shutdown that cancels it.

A renewal cut off mid-flight may already have landed on the server; if the Keeper forgot it,
the release that follows would be conditioned on a stale version, refused, and the successor
would wait out the whole TTL. A proxy that lets the request through but slows its answer to
a trickle puts the shutdown exactly there. Moto only: rclone ignores conditional writes, so
it can hold no S3 lease at all (tests/lease covers that refusal).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import replace

from syncd.config import S3Config
from syncd.lease.lease import Lease
from syncd.lease.record import Timing, me
from syncd.lease.s3 import S3Lease
from syncd.ops import logging as logs
from syncd.runtime.leases import Keeper, KeeperState
from syncd.stores.s3 import S3Store
from tests.lease.backends import TRANSFER, s3_lease
from tests.servers import S3Server, ThrottleProxy

TIMING = Timing(ttl_s=60, renew_interval_s=0.2, renew_deadline_s=40, skew_margin_s=15)


async def _until(check: Callable[[], bool], what: str, within: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        assert loop.time() < deadline, f"not within {within} s: {what}"
        await asyncio.sleep(0.02)


async def test_a_renewal_cut_off_by_shutdown_still_lets_the_release_through(
        moto_s3: S3Server, throttle_proxy: Callable[..., ThrottleProxy]) -> None:
    bucket = f"keeper-{uuid.uuid4().hex[:12]}"
    moto_s3.client().create_bucket(Bucket=bucket)
    proxy = throttle_proxy(moto_s3.port)
    via = S3Config(endpoint_url=proxy.endpoint_url, addressing_style="path", max_attempts=1,
                   connect_timeout_s=2, read_timeout_s=30)
    async with S3Store(via, TRANSFER, bucket, "models/") as store:
        backend = S3Lease(store, proxy.endpoint_url)
        await backend.prepare()
        holder = replace(me("a"), id="a", nonce="nonce-a", boot="")
        lease = Lease(backend, TIMING, holder)
        transitions: list[str] = []
        keeper = Keeper(lease, logs.get(), observe=lambda _t, what: transitions.append(what))
        task = asyncio.create_task(keeper.run())
        await _until(lambda: keeper.holding, "held")
        sent = proxy.bytes_to_server
        proxy.set_rate(1.0)  # requests pass; answers trickle at one byte a second
        await _until(lambda: proxy.bytes_to_server > sent, "a renewal sent")
        await asyncio.sleep(0.5)  # the server has applied it; its answer is still coming
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        proxy.set_rate(None)
        async with asyncio.timeout(20):
            await keeper.release()
        assert keeper.state == KeeperState.RELEASED
        assert transitions == ["acquired", "released"]
    async with s3_lease(moto_s3, bucket) as direct:
        successor = Lease(direct, TIMING, replace(me("b"), id="b", nonce="nonce-b", boot=""))
        assert await successor.try_acquire() == "released"  # not left for the TTL
        assert successor.gen == 2
