"""A fake monotonic clock with an async `sleep`, for code that takes `clock` and `sleep`.

Sleepers wake only when the test moves time: `advance(s)` by hand, or `drive(aw)`, which runs
`aw` and jumps straight to the next wake-up whenever every task is asleep (virtual time).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.slept: list[float] = []
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._order), future))
        await future

    def next_wakeup(self) -> float | None:
        """When the earliest sleeper wakes; None when nobody sleeps on this clock."""
        waiting = [when for when, _, future in self._sleepers if not future.done()]
        return min(waiting, default=None)

    def step(self, seconds: float) -> None:
        """Moves time for code that only reads the clock (nobody sleeps on it)."""
        assert not self._sleepers, "a task sleeps on this clock: use advance()"
        self.now += seconds

    async def advance(self, seconds: float) -> None:
        target = self.now + seconds
        await settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            self._wake_next()
            await settle()
        self.now = target
        await settle()

    async def drive(
        self, awaitable: Awaitable[T], max_wakeups: int = 100_000,
        busy: Callable[[], bool] | None = None,
    ) -> T:
        """Awaits `awaitable`, jumping the clock forward whenever everything is asleep (and
        `busy()`, if given, says no real I/O is under way: time stands still during it)."""
        task = asyncio.ensure_future(awaitable)
        for _ in range(max_wakeups):
            await settle()
            if task.done():
                return task.result()
            if self._sleepers and not (busy and busy()):
                self._wake_next()
            else:
                await asyncio.sleep(0.001)  # something waits on real I/O
        task.cancel()
        raise AssertionError("drive() gave up: the awaitable never finished")

    def _wake_next(self) -> None:
        when, _, future = heapq.heappop(self._sleepers)
        self.now = max(self.now, when)
        if not future.done():
            future.set_result(None)


async def settle(rounds: int = 20) -> None:
    """Lets every ready task run until it blocks again."""
    for _ in range(rounds):
        await asyncio.sleep(0)
