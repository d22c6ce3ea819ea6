"""`RedisBackend` specifics: namespaces, SCAN-based clear, and the circuit breaker."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from metis_rag.cache import RedisBackend
from tests.fakeclock import FakeClock
from tests.spawn import RedisServer

from .conftest import REDIS_URL, unique_namespace


async def test_namespaces_are_isolated() -> None:
    first = RedisBackend(REDIS_URL, namespace=unique_namespace(), timeout_s=2)
    second = RedisBackend(REDIS_URL, namespace=unique_namespace(), timeout_s=2)
    async with first, second:
        await first.set("k", b"1")
        await second.set("k", b"2")
        assert await first.clear() == 1
        assert await first.get("k") is None
        assert await second.get("k") == b"2"
        assert await second.clear() == 1


async def test_clear_walks_every_scan_page() -> None:
    backend = RedisBackend(REDIS_URL, namespace=unique_namespace(), timeout_s=2, scan_count=100)
    async with backend:
        await backend.set_many({f"doc:{i}": b"x" for i in range(2500)})
        await backend.set("other", b"y")
        assert await backend.clear("doc:") == 2500
        assert await backend.get_many(["doc:0", "doc:2499", "other"]) == {"other": b"y"}
        await backend.clear()


async def test_breaker_opens_skips_and_recovers(
    redis_server: RedisServer, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    redis_server.kill()
    # A generous timeout: this test is about the breaker, and a loaded machine can take more
    # than the default 50 ms to open a fresh connection.
    backend = RedisBackend(
        redis_server.url, namespace="t:", cooldown_s=5, failure_threshold=3, clock=clock,
        timeout_s=2.0,
    )
    with caplog.at_level(logging.INFO, logger="metis_rag.cache.redis"):
        async with backend:  # start() pings: the first failure, and no exception
            assert await backend.get("k") is None
            await backend.set("k", b"v")
            assert (backend.errors, backend.healthy) == (3, False)
            assert await backend.get_many(["k"]) == {}
            assert await backend.clear() == -1
            assert (backend.errors, backend.skipped) == (3, 2)  # Redis was not even asked

            clock.step(5)
            assert await backend.get("k") is None  # the probe, still refused
            assert (backend.errors, backend.healthy) == (4, False)

            redis_server.start()
            await backend.set("k", b"v")  # a new cool-down is running: skipped
            with redis_server.client() as raw:
                assert raw.get("t:k") is None
            clock.step(5)
            await backend.set("k", b"v")  # the probe goes through and closes the breaker
            assert backend.healthy
            assert await backend.get("k") == b"v"
            assert (await backend.stats()).errors == 4
    lines = [r.getMessage() for r in caplog.records if r.name == "metis_rag.cache.redis"]
    assert len(lines) == 2
    assert "unhealthy" in lines[0] and redis_server.url in lines[0]
    assert "healthy again" in lines[1]


async def test_slow_redis_is_a_fast_miss(redis_server: RedisServer, clock: FakeClock) -> None:
    backend = RedisBackend(redis_server.url, timeout_s=0.05, cooldown_s=5, clock=clock)
    async with backend:
        await backend.set("k", b"v")
        await backend.append("log", b"x")
        redis_server.pause()  # accepts bytes, never answers
        try:
            assert await backend.read_list("log") is None  # unreadable: not (0, []), "empty"
            for _ in range(2):
                started = time.perf_counter()
                assert await backend.get("k") is None
                assert time.perf_counter() - started < 0.5
            assert not backend.healthy
            errors, skipped = backend.errors, backend.skipped
            assert await backend.get("k") is None
            # Open breaker: Redis was not asked (a request to the paused server would have
            # timed out and counted an error). Its speed is a figure of bench_cache_backends.py.
            assert (backend.errors, backend.skipped) == (errors, skipped + 1)
            assert await backend.read_list("log") is None
        finally:
            redis_server.resume()
        clock.step(5)
        assert await backend.get("k") == b"v"
        assert backend.healthy
        assert await backend.read_list("log") == (1, [b"x"])
        await backend.clear()


async def test_a_cancelled_probe_does_not_wedge_the_breaker(
    redis_server: RedisServer, clock: FakeClock
) -> None:
    backend = RedisBackend(redis_server.url, timeout_s=0.05, cooldown_s=5, clock=clock)
    async with backend:
        redis_server.pause()
        try:
            for _ in range(3):
                await backend.get("k")
            assert not backend.healthy
            clock.step(5)
            probe = asyncio.create_task(backend.get("k"))
            while not backend._probing:  # until the probe is sent to the frozen server
                await asyncio.sleep(0)
            probe.cancel()
            with pytest.raises(asyncio.CancelledError):
                await probe
        finally:
            redis_server.resume()
        await backend.set("k", b"v")  # the next call probes in its place
        assert backend.healthy
        assert await backend.get("k") == b"v"


def test_password_is_not_logged() -> None:
    from metis_rag.cache.redis import _redact

    assert _redact("redis://user:s3cret@host:6379/0") == "redis://user:***@host:6379/0"
    assert _redact("redis://:s3cret@host/0") == "redis://:***@host/0"
    assert _redact("redis://host:6379") == "redis://host:6379"
