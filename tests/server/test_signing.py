"""The global signing limit: concurrency bounded, waiters served in turn or refused."""

from __future__ import annotations

import asyncio

import pytest

from spiffed.server.signing import SigningBusyError, SigningLimiter


async def test_at_most_max_concurrent_hold_a_slot() -> None:
    limiter = SigningLimiter(max_concurrent=2, max_wait=30)
    release = asyncio.Event()
    peak = 0

    async def sign() -> None:
        nonlocal peak
        async with limiter.slot():
            peak = max(peak, limiter.busy)
            await release.wait()

    tasks = [asyncio.create_task(sign()) for _ in range(5)]
    try:
        for _ in range(1000):  # two hold a slot, three queue behind them
            if limiter.busy == 2 and limiter.waiting == 3:
                break
            await asyncio.sleep(0)
        assert (limiter.busy, limiter.waiting) == (2, 3)
    finally:
        release.set()
    await asyncio.gather(*tasks)
    assert peak == 2 and limiter.busy == 0 and limiter.refused == 0


async def test_a_waiter_is_refused_when_no_slot_frees_in_time() -> None:
    limiter = SigningLimiter(max_concurrent=1, max_wait=0.01)
    hold = asyncio.Event()

    async def holder() -> None:
        async with limiter.slot():
            await hold.wait()

    task = asyncio.create_task(holder())
    while limiter.busy < 1:
        await asyncio.sleep(0)
    with pytest.raises(SigningBusyError, match="busy signing"):
        async with limiter.slot():
            pass
    assert limiter.refused == 1 and limiter.waiting == 0
    hold.set()
    await task
    async with limiter.slot():  # the slot is usable again
        assert limiter.busy == 1


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="max_concurrent"):
        SigningLimiter(max_concurrent=0)
