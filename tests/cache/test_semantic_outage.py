"""The semantic level while its shared lists cannot be read: a real Redis stopped mid-test, a
real PostgreSQL database that refuses connections. Each server keeps serving from its mirror,
and catches up on what others added once the backend is back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from metis_rag.cache import RedisBackend
from metis_rag.cache.postgres import PostgresBackend
from metis_rag.cache.semantic import SemanticIndex
from metis_rag.devtools.pgvector_server import PgServer
from metis_rag.store.db import migrate
from tests.spawn import RedisServer

from .test_semantic import PARA, PART, Q, index, unit

OTHER, OTHER_PARA = "How do I delete a user?", "How can I delete a user?"



@asynccontextmanager
async def _two_servers(
    redis: RedisServer,
) -> AsyncIterator[tuple[RedisBackend, RedisBackend, SemanticIndex, SemanticIndex]]:
    """Two servers' semantic indexes on one Redis, each with its own short-timeout client;
    yields both clients (the tests watch them lose and find Redis) and both indexes."""
    a_log = RedisBackend(redis.url, namespace="s:", timeout_s=0.05, cooldown_s=0.2)
    b_log = RedisBackend(redis.url, namespace="s:", timeout_s=0.05, cooldown_s=0.2)
    async with a_log, b_log:
        yield a_log, b_log, index(a_log), index(b_log)

async def test_redis_stopped_mid_test_keeps_the_mirror_and_catches_up_after(
    redis_server: RedisServer,
) -> None:
    async with _two_servers(redis_server) as (a_log, b_log, server_a, server_b):
        v = unit(1)
        await server_a.add(PART, v, "key-a", Q)
        found = await server_b.match(PART, unit(2, near=v), PARA)
        assert found is not None and found.candidate.key == "key-a"  # B mirrors A's question

        redis_server.pause()  # SIGSTOP: every call times out, then the breaker skips Redis
        try:
            for seed in range(3, 9):
                found = await server_b.match(PART, unit(seed, near=v), PARA)
                assert found is not None and found.candidate.key == "key-a"
            assert not b_log.healthy and server_b.stats()["log_errors"] >= 6
            assert server_b.entries == 1
        finally:
            redis_server.resume()

        deadline = time.monotonic() + 5
        while not b_log.healthy:  # B's next lookups probe Redis and find it back
            assert time.monotonic() < deadline, "Redis did not come back"
            await asyncio.sleep(0.05)
            assert await server_b.match(PART, v, Q) is not None
        await until_healthy(a_log)
        await server_a.add(PART, unit(7), "key-b", OTHER)
        found = await server_b.match(PART, unit(7), OTHER_PARA)
        assert found is not None and found.candidate.key == "key-b"
        assert server_b.entries == 2
        await a_log.clear()


async def until_healthy(backend: RedisBackend) -> None:
    deadline = time.monotonic() + 5
    while not backend.healthy:  # a call after the cool-down probes Redis
        assert time.monotonic() < deadline, "Redis did not come back"
        await asyncio.sleep(0.05)
        await backend.get("probe")


async def test_redis_restarted_without_its_data_is_read_again_from_the_start(
    redis_server: RedisServer,
) -> None:
    async with _two_servers(redis_server) as (a_log, b_log, server_a, server_b):
        v = unit(1)
        await server_a.add(PART, v, "key-a", Q)
        assert await server_b.match(PART, v, Q) is not None

        await asyncio.to_thread(redis_server.kill)  # a crash: the lists are gone
        found = await server_b.match(PART, unit(2, near=v), PARA)
        assert found is not None and found.candidate.key == "key-a"  # the mirror serves

        await asyncio.to_thread(redis_server.start)
        await until_healthy(a_log)
        await until_healthy(b_log)
        # A refills the list past what B had read before B reads it again.
        await server_a.add(PART, unit(7), "key-b", OTHER)
        await server_a.add(PART, unit(8), "key-c", "How do I add a user?")
        found = await server_b.match(PART, unit(7), OTHER_PARA)
        assert found is not None and found.candidate.key == "key-b"
        # The restart took the list: B drops its mirror, as for a clear.
        assert server_b.entries == 2
        await a_log.clear()


@pytest.fixture
async def database(pg_server: PgServer) -> AsyncIterator[str]:
    name = await pg_server.create_database()
    try:
        yield name
    finally:
        await _allow_connections(pg_server, name, True)
        await pg_server.drop_database(name)


async def _allow_connections(server: PgServer, name: str, allow: bool) -> None:
    admin = await server.connect()
    try:
        await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS {str(allow).lower()}')
        if not allow:  # and end the pools' open connections, as a database restart would
            await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                "WHERE datname = $1", name)
    finally:
        await admin.close()


async def test_postgres_unreachable_keeps_the_mirror_and_catches_up_after(
    pg_server: PgServer, database: str,
) -> None:
    engines: list[AsyncEngine] = [create_async_engine(pg_server.url(database)) for _ in "ab"]
    try:
        await migrate(engines[0])
        server_a, server_b = (index(PostgresBackend(e)) for e in engines)
        v = unit(1)
        await server_a.add(PART, v, "key-a", Q)
        found = await server_b.match(PART, unit(2, near=v), PARA)
        assert found is not None and found.candidate.key == "key-a"

        await _allow_connections(pg_server, database, False)
        for seed in range(3, 6):
            found = await server_b.match(PART, unit(seed, near=v), PARA)
            assert found is not None and found.candidate.key == "key-a"
        await server_a.add(PART, unit(9), "key-lost", "How do I add a user?")  # no exception
        assert server_b.stats()["log_errors"] == 3 and server_a.stats()["log_errors"] == 1

        await _allow_connections(pg_server, database, True)
        await server_a.add(PART, unit(7), "key-b", OTHER)
        found = await server_b.match(PART, unit(7), OTHER_PARA)
        assert found is not None and found.candidate.key == "key-b"
        assert server_b.entries == 2 and server_b.stats()["log_errors"] == 3
    finally:
        for engine in engines:
            await engine.dispose()


async def test_postgres_unreachable_makes_searched_lookups_miss_until_it_is_back(
    pg_server: PgServer, database: str,
) -> None:
    engines: list[AsyncEngine] = [create_async_engine(pg_server.url(database)) for _ in "ab"]
    try:
        await migrate(engines[0])
        logs = [PostgresBackend(e) for e in engines]
        for log in logs:
            await log.start()
        server_a, server_b = (index(log) for log in logs)
        assert server_b.searched  # pgvector: nothing mirrored, so nothing to serve from
        v = unit(1)
        await server_a.add(PART, v, "key-a", Q)

        await _allow_connections(pg_server, database, False)
        assert await server_b.match(PART, unit(2, near=v), PARA) is None  # a miss, no exception
        assert server_b.stats()["log_errors"] == 1

        await _allow_connections(pg_server, database, True)
        found = await server_b.match(PART, unit(3, near=v), PARA)
        assert found is not None and found.candidate.key == "key-a"
    finally:
        for engine in engines:
            await engine.dispose()
