"""The byte budget bounds what is held at once and never deadlocks on an oversized request."""

from __future__ import annotations

import asyncio

from syncd.budget import ByteBudget


async def test_budget_never_exceeds_limit_under_contention():
    budget = ByteBudget(10)

    async def hold(n: int) -> None:
        await budget.take(n)
        await asyncio.sleep(0)
        assert budget.used <= budget.limit
        await budget.give(n)

    await asyncio.gather(*(hold(n) for n in [3, 4, 5, 6, 2, 7, 1] * 5))
    assert budget.used == 0
    assert 0 < budget.peak <= 10


async def test_budget_grants_an_oversized_request_alone():
    budget = ByteBudget(10)
    await budget.take(4)
    waiter = asyncio.create_task(budget.take(25))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    await budget.give(4)
    await asyncio.wait_for(waiter, 1)
    assert budget.used == 25
