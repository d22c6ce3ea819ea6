"""Counters in this process only: one server, or tests."""

from __future__ import annotations

import time
from collections.abc import Callable

from .base import CounterStore

_PURGE_EVERY_S = 60.0


class MemoryCounters(CounterStore):
    name = "memory"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._values: dict[str, tuple[int, float]] = {}  # key -> (value, expires at)
        self._purged_at = clock()

    async def add(self, key: str, amount: int, ttl_s: float) -> int:
        return self.add_now(key, amount, ttl_s)

    def add_now(self, key: str, amount: int, ttl_s: float) -> int:
        """`add` without a suspension point (callers that must not yield in between)."""
        now = self._clock()
        if now - self._purged_at > _PURGE_EVERY_S:
            self._purge(now)
        value, expires = self._values.get(key, (0, 0.0))
        value = (value if expires > now else 0) + amount
        self._values[key] = (value, now + ttl_s)
        return value

    async def get(self, key: str) -> int:
        return self.get_now(key)

    def get_now(self, key: str) -> int:
        value, expires = self._values.get(key, (0, 0.0))
        return value if expires > self._clock() else 0

    def _purge(self, now: float) -> None:
        self._values = {k: v for k, v in self._values.items() if v[1] > now}
        self._purged_at = now
