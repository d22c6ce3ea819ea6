"""Redis cache that degrades to misses and no-ops when Redis is down or slow."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from ..errors import MissingDependency
from .base import BackendStats, CacheBackend, check_ttl
from .broadcast import encode_invalidation

if TYPE_CHECKING:
    import numpy as np
    from redis.asyncio import Redis

logger = logging.getLogger(__name__)


class RedisBackend(CacheBackend):
    """Keys are stored as ``namespace + key``; `clear` walks them with SCAN and UNLINK.

    With `invalidation_channel`, each `clear` and `delete` is published there once Redis has
    applied it, for the other servers' in-process tiers (`broadcast.py`).

    Every round trip gets `timeout_s`. A failed or late call counts an error and returns a miss
    (or does nothing); after `failure_threshold` failures in a row the backend turns unhealthy,
    logs one line, and skips Redis entirely for `cooldown_s` seconds of `clock`. Then the next
    call is let through as a probe: success logs one line and restores the backend, failure
    starts another cool-down. Nothing Redis does is raised to the caller.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        namespace: str = "metis:cache:",
        timeout_s: float = 0.05,
        cooldown_s: float = 5.0,
        failure_threshold: int = 3,
        max_connections: int = 64,
        scan_count: int = 1000,
        invalidation_channel: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        try:
            import redis.asyncio
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
        except ImportError:  # pragma: no cover - depends on the installed extras
            raise MissingDependency("redis", "redis") from None
        self.url = url
        self.namespace = namespace
        self.timeout_s = timeout_s
        self.cooldown_s = cooldown_s
        self.failure_threshold = failure_threshold
        self.scan_count = scan_count
        self.invalidation_channel = invalidation_channel
        self._clock = clock
        # A blocking pool makes a burst of calls queue for a connection (within the timeout)
        # instead of failing at once with "Too many connections". No retries inside redis-py:
        # a retry would outlive the timeout, and the breaker below is the retry policy.
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout_s,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self._client: Redis = redis.asyncio.Redis.from_pool(pool)  # the client owns the pool
        self.errors = 0
        self.skipped = 0
        self._failures_in_a_row = 0
        self._unhealthy_until: float | None = None
        self._probing = False

    @property
    def healthy(self) -> bool:
        return self._unhealthy_until is None

    async def start(self) -> None:
        await self._call(lambda r: r.ping())

    async def close(self) -> None:
        try:
            await self._client.aclose()
        except Exception:  # closing sockets of a dead server must not fail shutdown
            logger.debug("error closing redis cache client", exc_info=True)

    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self._call(lambda r: r.get(self.namespace + key))
        return value

    async def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        keys = list(dict.fromkeys(keys))
        if not keys:
            return {}
        values = await self._call(lambda r: r.mget([self.namespace + k for k in keys]))
        if values is None:
            return {}
        return {k: v for k, v in zip(keys, values, strict=True) if v is not None}

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        check_ttl(ttl_s)
        px = None if ttl_s is None else math.ceil(ttl_s * 1000)
        await self._call(lambda r: r.set(self.namespace + key, value, px=px))

    async def set_many(self, items: Mapping[str, bytes], ttl_s: float | None = None) -> None:
        check_ttl(ttl_s)
        if not items:
            return
        px = None if ttl_s is None else math.ceil(ttl_s * 1000)

        async def set_all(r: Redis) -> Any:
            pipe = r.pipeline(transaction=False)
            for key, value in items.items():
                pipe.set(self.namespace + key, value, px=px)
            return await pipe.execute()

        await self._call(set_all)

    async def delete(self, key: str) -> None:
        await self._call(lambda r: r.unlink(self.namespace + key))
        await self._publish("delete", key)

    async def clear(self, prefix: str | None = None) -> int:
        """Remove matching keys one SCAN page at a time; -1 if Redis failed part way."""
        pattern = _glob_escape(self.namespace + (prefix or "")) + "*"

        def scan_page(r: Redis, cursor: int) -> Awaitable[Any]:
            return r.scan(cursor, match=pattern, count=self.scan_count)

        def unlink(r: Redis, keys: list[bytes]) -> Awaitable[Any]:
            return r.unlink(*keys)

        removed, cursor = 0, 0
        while True:
            page = await self._call(partial(scan_page, cursor=cursor))
            if page is None:
                return -1
            cursor, keys = page
            if keys:
                unlinked = await self._call(partial(unlink, keys=keys))
                if unlinked is None:
                    return -1
                removed += int(unlinked)
            if cursor == 0:
                await self._publish("clear", prefix)
                return removed

    async def _publish(self, op: str, key: str | None) -> None:
        """Tell every server's in-process tier (`broadcast.InvalidationListener`)."""
        if self.invalidation_channel is not None:
            message = encode_invalidation(op, key)
            channel = self.invalidation_channel
            await self._call(lambda r: r.publish(channel, message))

    async def append(self, key: str, value: bytes, ttl_s: float | None = None, *,
                     vector: np.ndarray | None = None) -> None:
        check_ttl(ttl_s)
        name = self.namespace + key

        async def push(r: Redis) -> Any:
            pipe = r.pipeline(transaction=True)
            pipe.rpush(name, value)
            if ttl_s is None:
                pipe.persist(name)
            else:
                pipe.pexpire(name, math.ceil(ttl_s * 1000))
            return await pipe.execute()

        await self._call(push)

    async def read_list(self, key: str, start: int = 0) -> tuple[int, list[bytes]] | None:
        """One round trip (LLEN and LRANGE in a transaction); None when Redis fails (not
        (0, []): that would tell a reader the list was cleared, and it would drop its mirror)."""
        name = self.namespace + key

        async def read(r: Redis) -> Any:
            pipe = r.pipeline(transaction=True)
            pipe.llen(name)
            pipe.lrange(name, start, -1)
            return await pipe.execute()

        found = await self._call(read)
        if found is None:
            return None
        return int(found[0]), list(found[1])

    async def stats(self) -> BackendStats:
        return BackendStats(entries=None, bytes=None, errors=self.errors, healthy=self.healthy)

    async def _call(self, op: Callable[[Redis], Awaitable[Any]]) -> Any:
        """Redis's reply to `op`, or None if Redis failed, was late, or is being skipped."""
        is_probe = self._admit()
        if is_probe is None:
            self.skipped += 1
            return None
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await op(self._client)
        except Exception as exc:  # the contract: Redis trouble is a miss, never an exception
            self._failed(exc, is_probe)
            return None
        except BaseException:
            if is_probe:  # a cancelled probe proves nothing; let the next call probe instead
                self._probing = False
            raise
        self._succeeded()
        return result

    def _admit(self) -> bool | None:
        """None: skip Redis; False: a normal call; True: the one probe of a cool-down's end."""
        if self._unhealthy_until is None:
            return False
        if self._probing or self._clock() < self._unhealthy_until:
            return None
        self._probing = True
        return True

    def _failed(self, exc: Exception, is_probe: bool) -> None:
        self.errors += 1
        self._failures_in_a_row += 1
        if is_probe:
            self._probing = False
            self._unhealthy_until = self._clock() + self.cooldown_s
        elif self.healthy and self._failures_in_a_row >= self.failure_threshold:
            self._unhealthy_until = self._clock() + self.cooldown_s
            logger.warning(
                "redis cache at %s is unhealthy (%s); treating it as empty, retrying in %.1f s",
                _redact(self.url),
                _describe(exc),
                self.cooldown_s,
            )

    def _succeeded(self) -> None:
        self._failures_in_a_row = 0
        if self._unhealthy_until is not None:
            self._unhealthy_until = None
            self._probing = False
            logger.info("redis cache at %s is healthy again", _redact(self.url))


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _describe(exc: Exception) -> str:
    text = str(exc)
    if isinstance(exc, TimeoutError) and not text:
        return "timed out"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[-1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))
