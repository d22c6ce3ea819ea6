"""Two servers' caches on one Redis: what one clears or deletes, the other's memory tier forgets."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass

import pytest

from metis_rag.cache import MemoryBackend, RedisBackend
from metis_rag.cache.broadcast import InvalidationListener
from metis_rag.cache.tiered import TieredCache
from tests.cache.conftest import REDIS_URL, unique_namespace
from tests.spawn import RedisServer
from tests.waiting import eventually


@dataclass
class Server:
    memory: MemoryBackend
    cache: TieredCache
    listener: InvalidationListener


async def open_server(stack: AsyncExitStack, url: str, namespace: str, channel: str) -> Server:
    memory = MemoryBackend()
    redis = RedisBackend(url, namespace=namespace, timeout_s=2.0, invalidation_channel=channel)
    await stack.enter_async_context(redis)
    listener = InvalidationListener(url, channel, [memory], reconnect_s=0.1)
    await listener.start()
    stack.push_async_callback(listener.close)
    return Server(memory, TieredCache([memory, redis], prefix="exact:"), listener)


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Server, Server]]:
    namespace, channel = unique_namespace(), f"metis-test:inval:{uuid.uuid4().hex}"
    async with AsyncExitStack() as stack:
        yield (await open_server(stack, REDIS_URL, namespace, channel),
               await open_server(stack, REDIS_URL, namespace, channel))


async def eventually_missing(cache: TieredCache, key: str, within_s: float = 2.0) -> float:
    started = time.perf_counter()
    while await cache.get(key) is not None:
        assert time.perf_counter() - started < within_s, f"{key} still served after {within_s} s"
        await asyncio.sleep(0.005)
    return time.perf_counter() - started


async def test_a_clear_on_one_server_empties_the_others_memory_tier(
    pair: tuple[Server, Server],
) -> None:
    a, b = pair
    await a.cache.set("ns:1:q", {"answer": "old"})
    assert await b.cache.get("ns:1:q") == {"answer": "old"}  # B now holds it in memory too
    assert await b.memory.get("exact:ns:1:q") is not None
    await a.cache.clear("ns:")
    await eventually_missing(b.cache, "ns:1:q")
    assert await b.memory.get("exact:ns:1:q") is None


async def test_a_delete_reaches_the_others_memory_tier_and_a_narrow_clear_stays_narrow(
    pair: tuple[Server, Server],
) -> None:
    a, b = pair
    await a.cache.set_many({"ns:1:q": 1, "other:1:q": 2})
    assert await b.cache.get_many(["ns:1:q", "other:1:q"]) == {"ns:1:q": 1, "other:1:q": 2}
    await a.cache.delete("ns:1:q")
    await eventually_missing(b.cache, "ns:1:q")
    await a.cache.clear("nothing-here:")
    # Messages on one channel arrive in order: once B has dropped the marker, it has handled
    # the narrow clear too.
    await a.cache.set("marker:1:q", 3)
    assert await b.cache.get("marker:1:q") == 3
    await a.cache.delete("marker:1:q")
    await eventually_missing(b.cache, "marker:1:q")
    assert await b.memory.get("exact:other:1:q") is not None


async def test_a_listener_that_lost_redis_forgets_everything_when_it_is_back(
    redis_server: RedisServer,
) -> None:
    channel = f"metis-test:inval:{uuid.uuid4().hex}"
    async with AsyncExitStack() as stack:
        b = await open_server(stack, redis_server.url, "t:", channel)
        await b.memory.set("exact:k", b"v")
        # A clear published while Redis is down would never reach B. SIGKILL closes B's
        # connection whenever the server comes back, so no wait is needed in between.
        redis_server.kill()
        redis_server.start()
        await eventually(lambda: b.listener.reconnects > 0, what="the listener never reconnected")
        assert await b.memory.get("exact:k") is None
