"""Counters in Redis: INCRBY and PEXPIRE in one MULTI/EXEC round trip, shared by every server.

Errors are raised (a failed add is not counted): `fallback.LocalFallback` decides what a
request does when Redis is down.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ...errors import MissingDependency
from .base import CounterStore

if TYPE_CHECKING:
    from redis.asyncio import Redis


class RedisCounters(CounterStore):
    name = "redis"

    def __init__(self, url: str, *, timeout_s: float = 0.25, max_connections: int = 64) -> None:
        try:
            import redis.asyncio
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
        except ImportError:  # pragma: no cover - depends on the installed extras
            raise MissingDependency("redis", "redis") from None
        self.url = url
        # As in cache.redis: a burst queues for a pooled connection within the timeout, and
        # redis-py does not retry (a retry would outlive the timeout; the fallback decides).
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=timeout_s, socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0),
        )
        self._client: Redis = redis.asyncio.Redis.from_pool(pool)

    async def start(self) -> None:
        await self._client.ping()

    async def close(self) -> None:
        try:
            await self._client.aclose()
        except Exception:  # closing the sockets of a dead server must not fail shutdown
            pass

    async def add(self, key: str, amount: int, ttl_s: float) -> int:
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.incrby(key, amount)
            pipe.pexpire(key, math.ceil(ttl_s * 1000))
            value, _ = await pipe.execute()
        return int(value)

    async def get(self, key: str) -> int:
        value = await self._client.get(key)
        return int(value or 0)
