"""`wait_at_most`: the loop-timer wait that the background writers and `wait()` share."""

from __future__ import annotations

import asyncio

from metis_rag.aio import wait_at_most


async def test_set_by_another_task_before_the_time_is_up() -> None:
    event = asyncio.Event()
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await wait_at_most(event, 60) is True


async def test_the_time_runs_out() -> None:
    event = asyncio.Event()
    assert await wait_at_most(event, 0.01) is False
    assert event.is_set()  # left set on a timeout: callers clear it


async def test_already_set_returns_at_once() -> None:
    event = asyncio.Event()
    event.set()
    assert await wait_at_most(event, 60) is True


async def test_the_timer_is_cancelled_when_the_event_comes_first() -> None:
    event = asyncio.Event()
    asyncio.get_running_loop().call_later(0.01, event.set)
    await wait_at_most(event, 0.05)
    event.clear()
    await asyncio.sleep(0.1)
    assert not event.is_set()  # the expired timer did not set it later
