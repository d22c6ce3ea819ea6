"""Invalidations of the shared Redis tier, broadcast to every server's in-process tier.

With several servers on one Redis, each keeps its own `MemoryBackend` in front of Redis: a
`clear` or `delete` that reaches Redis through one server would leave the others' memory tiers
serving what was removed. `RedisBackend` publishes each of its clears and deletes on a pub/sub
channel (after Redis has applied it, so a peer cannot back-fill the old entry from Redis), and
an `InvalidationListener` in every server applies them to its local tiers. A listener that lost
its connection may have missed messages, so it empties its local tiers when it reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import MissingDependency
from .base import CacheBackend

if TYPE_CHECKING:
    from redis.asyncio import Redis

logger = logging.getLogger(__name__)


def encode_invalidation(op: str, key: str | None) -> bytes:
    """`op` is "clear" (`key` a prefix, None for everything) or "delete" (`key` one key)."""
    return json.dumps({"op": op, "key": key}).encode()


class InvalidationListener:
    """Subscribes to `channel` and applies every clear/delete it hears to `local` backends."""

    def __init__(self, url: str, channel: str, local: Sequence[CacheBackend], *,
                 reconnect_s: float = 1.0) -> None:
        try:
            import redis.asyncio
        except ImportError:  # pragma: no cover - depends on the installed extras
            raise MissingDependency("redis", "redis") from None
        self.channel = channel
        self.local = tuple(local)
        self.reconnect_s = reconnect_s
        self.applied = 0
        self.reconnects = 0
        self._client: Redis = redis.asyncio.Redis.from_url(url)
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def start(self, wait_s: float = 2.0) -> None:
        """Start listening; waits up to `wait_s` for the subscription (Redis may be down: the
        listener then keeps trying in the background and the server starts anyway)."""
        self._task = asyncio.create_task(self._run(), name="cache-invalidation-listener")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                await self._subscribed.wait()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        with contextlib.suppress(Exception):
            await self._client.aclose()

    async def _run(self) -> None:
        first = True
        while True:
            try:
                await self._listen(first)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._subscribed.clear()
                logger.warning("cache invalidation channel lost (%s); reconnecting in %.1f s",
                               exc, self.reconnect_s)
            first = False
            await asyncio.sleep(self.reconnect_s)

    async def _listen(self, first: bool) -> None:
        async with self._client.pubsub() as pubsub:
            await pubsub.subscribe(self.channel)
            if not first:  # what was published while we were away is lost: forget it all
                self.reconnects += 1
                await self._apply({"op": "clear", "key": None})
            self._subscribed.set()
            async for message in pubsub.listen():
                if message.get("type") != "message":
                    continue
                try:
                    parsed = json.loads(message["data"])
                except (ValueError, TypeError):
                    logger.warning("ignoring a malformed cache invalidation: %r",
                                   message["data"][:100])
                    continue
                await self._apply(parsed)

    async def _apply(self, message: dict[str, Any]) -> None:
        op, key = message.get("op"), message.get("key")
        for backend in self.local:
            try:
                if op == "clear":
                    await backend.clear(key or None)
                elif op == "delete" and isinstance(key, str):
                    await backend.delete(key)
            except Exception:
                logger.warning("could not apply a cache invalidation to %s",
                               type(backend).__name__, exc_info=True)
        self.applied += 1
