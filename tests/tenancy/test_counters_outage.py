"""Quota counters when Redis fails: counted in the process meanwhile, handed over afterwards."""

from __future__ import annotations

import logging

import pytest

from metis_rag.config import AuthSettings, QuotaSettings
from metis_rag.errors import QuotaExceeded
from metis_rag.tenancy.counters import LocalFallback
from metis_rag.tenancy.counters.redis import RedisCounters
from metis_rag.tenancy.quotas import Quotas
from tests.fakeclock import FakeClock
from tests.spawn import RedisServer


def fallback(server: RedisServer, clock: FakeClock) -> LocalFallback:
    return LocalFallback(RedisCounters(server.url, timeout_s=0.2), cooldown_s=5, clock=clock)


async def test_a_hung_redis_loses_no_count(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    async with fallback(redis_server, clock) as store:
        assert await store.add("k", 3, 60) == 3
        redis_server.pause()  # hung: every call times out
        with caplog.at_level(logging.WARNING, "metis.quotas"):
            assert await store.add("k", 1, 60) == 4  # what it last saw, plus its own count
            assert await store.add("k", 1, 60) == 5  # cooling down: Redis is not even asked
            assert await store.get("k") == 5
        assert not store.healthy and store.unsynced == 1
        assert ["counting in this process" in r.message for r in caplog.records] == [True]
        redis_server.resume()
        clock.step(6)
        # The outage's counts went to Redis first. The add that timed out had reached the
        # paused Redis, which ran it on waking: a count can be counted twice, never lost.
        assert await store.add("k", 1, 60) in (6, 7)
        assert store.healthy and store.unsynced == 0
    with redis_server.client() as direct:
        assert int(direct.get("k")) in (6, 7)


async def test_a_restarted_redis_gets_the_counts_made_while_it_was_gone(
    redis_server: RedisServer,
) -> None:
    clock = FakeClock()
    async with fallback(redis_server, clock) as store:
        await store.add("k", 3, 60)
        redis_server.kill()  # nothing persisted: its 3 are gone with it
        assert await store.add("k", 2, 60) == 5
        redis_server.start()
        clock.step(6)
        assert await store.get("k") == 2  # the outage's 2 are not lost
        assert store.healthy


async def test_the_limit_holds_on_each_server_during_an_outage(
    redis_server: RedisServer,
) -> None:
    clock = FakeClock(1_700_000_000.0 - 1_700_000_000.0 % 60 + 5)
    settings = AuthSettings(quotas=QuotaSettings(questions_per_minute=3))
    async with fallback(redis_server, clock) as store:
        quotas = Quotas(settings, store, clock=clock)
        await quotas.admit_question("acme")
        await quotas.admit_question("acme")
        redis_server.pause()
        await quotas.admit_question("acme")  # answered, not failed: counted locally
        with pytest.raises(QuotaExceeded):
            await quotas.admit_question("acme")
        redis_server.resume()


async def test_a_server_starts_while_redis_is_down(
    redis_server: RedisServer,
) -> None:
    clock = FakeClock()
    redis_server.kill()
    async with fallback(redis_server, clock) as store:
        assert not store.healthy
        assert await store.add("k", 1, 60) == 1
        redis_server.start()
        clock.step(6)
        assert await store.add("k", 1, 60) == 2
    with redis_server.client() as direct:
        assert int(direct.get("k")) == 2
