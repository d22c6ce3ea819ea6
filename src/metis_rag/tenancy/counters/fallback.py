"""`LocalFallback`: a store that keeps counting in this process while its primary (Redis) is
down, and hands those counts to the primary when it answers again.

The choice, for quotas: a Redis outage must neither fail every question (fail closed) nor lift
every limit (fail open). While the primary is down, a counter reads as the last value this
server saw from it plus what this server counted since, so each server still enforces the
limits on its own (N servers may let a tenant through up to N times a limit for the length of
the outage). Nothing counted is lost: the counts are added to the primary before its next add.
Only a server that stops during an outage loses the counts it had not handed over.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from .base import CounterStore

log = logging.getLogger("metis.quotas")


class LocalFallback(CounterStore):
    def __init__(self, primary: CounterStore, *, cooldown_s: float = 2.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.primary = primary
        self.name = primary.name
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._down_until: float | None = None
        self._seen: dict[str, tuple[int, float]] = {}  # key -> (primary's value, expires at)
        self._unsynced: dict[str, tuple[int, float]] = {}  # key -> (delta, ttl_s)
        self._replaying = asyncio.Lock()
        self.failures = 0

    @property
    def healthy(self) -> bool:
        return self._down_until is None

    @property
    def unsynced(self) -> int:
        """Counters with counts not yet handed to the primary."""
        return len(self._unsynced)

    async def start(self) -> None:
        try:
            await self.primary.start()
        except Exception as exc:  # a server starts with Redis down; it counts locally meanwhile
            self._went_down(exc)

    async def close(self) -> None:
        if self._unsynced and not self._cooling():
            try:
                await self._replay()
            except Exception as exc:
                log.warning("quota counters: %d counts could not be handed to %s at shutdown "
                            "(%s)", len(self._unsynced), self.primary.name, exc)
        await self.primary.close()

    async def add(self, key: str, amount: int, ttl_s: float) -> int:
        if not self._cooling():
            try:
                if self._unsynced:
                    await self._replay()
                value = await self.primary.add(key, amount, ttl_s)
            except Exception as exc:
                self._went_down(exc)
            else:
                self._came_back()
                now = self._clock()
                if len(self._seen) > 10_000:  # forget the values of windows that are over
                    self._seen = {k: v for k, v in self._seen.items() if v[1] > now}
                self._seen[key] = (value, now + ttl_s)
                return value
        delta, _ = self._unsynced.get(key, (0, ttl_s))
        self._unsynced[key] = (delta + amount, ttl_s)
        return self._last_seen(key) + delta + amount

    async def get(self, key: str) -> int:
        if not self._cooling():
            try:
                if self._unsynced:
                    await self._replay()
                value = await self.primary.get(key)
            except Exception as exc:
                self._went_down(exc)
            else:
                self._came_back()
                return value
        return self._last_seen(key) + self._unsynced.get(key, (0, 0.0))[0]

    def _cooling(self) -> bool:
        return self._down_until is not None and self._clock() < self._down_until

    def _last_seen(self, key: str) -> int:
        value, expires = self._seen.get(key, (0, 0.0))
        return value if expires > self._clock() else 0

    async def _replay(self) -> None:
        async with self._replaying:  # one replay at a time: a delta is handed over once
            for key, (delta, ttl_s) in list(self._unsynced.items()):
                await self.primary.add(key, delta, ttl_s)
                left = self._unsynced[key][0] - delta  # adds made while this one was in flight
                if left:
                    self._unsynced[key] = (left, ttl_s)
                else:
                    del self._unsynced[key]

    def _went_down(self, exc: Exception) -> None:
        self.failures += 1
        if self._down_until is None:
            log.warning("quota counters: %s failed (%s); counting in this process for now",
                        self.primary.name, exc or type(exc).__name__)
        self._down_until = self._clock() + self._cooldown_s

    def _came_back(self) -> None:
        if self._down_until is not None:
            self._down_until = None
            log.warning("quota counters: %s answers again; local counts handed over",
                        self.primary.name)
