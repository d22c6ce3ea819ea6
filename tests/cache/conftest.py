"""Fixtures for the cache tests: a fake clock and one `backend` per implementation (the
killable redis-server, `redis_server`, is the suite's, in tests/conftest.py)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from metis_rag.cache import CacheBackend, DiskBackend, MemoryBackend, RedisBackend
from metis_rag.cache.postgres import PostgresBackend
from metis_rag.store.db import migrate
from tests.fakeclock import FakeClock

REDIS_URL = os.environ.get("METIS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_700_000_000.0)


def unique_namespace() -> str:
    return f"metis-test:{uuid.uuid4().hex}:"


@pytest.fixture(params=["memory", "disk", "redis", "postgresql", "postgresql-plain"])
async def backend(
    request: pytest.FixtureRequest, clock: FakeClock, tmp_path: Path
) -> AsyncIterator[CacheBackend]:
    """`postgresql` has pgvector (lists searched in the database), `postgresql-plain` has not."""
    if not request.param.startswith("postgresql"):
        async with _backend(request.param, clock, tmp_path) as store:
            yield store
        return
    server = request.getfixturevalue("pg_server")  # a fresh database, migrated
    name = await server.create_database()
    engine = create_async_engine(server.url(name))
    try:
        await migrate(engine)
        if request.param == "postgresql-plain":
            # What migration 0021 leaves where the server has no pgvector: no vector column.
            async with engine.begin() as conn:
                await conn.execute(text("ALTER TABLE cache_list_items DROP COLUMN vec"))
        async with PostgresBackend(engine, clock=clock) as pg:
            assert pg.searches_lists == (request.param == "postgresql")
            yield pg
    finally:
        await engine.dispose()
        await server.drop_database(name)


@asynccontextmanager
async def _backend(kind: str, clock: FakeClock, tmp_path: Path) -> AsyncIterator[CacheBackend]:
    if kind == "memory":
        store: CacheBackend = MemoryBackend(clock=clock)
    elif kind == "disk":
        store = DiskBackend(tmp_path / "cache", clock=clock)
    else:
        # A generous timeout: these tests check behaviour, and a slow CI box must not turn a
        # set into a silent no-op. Outage behaviour has its own tests.
        store = RedisBackend(REDIS_URL, namespace=unique_namespace(), timeout_s=2.0)
    async with store:
        if isinstance(store, RedisBackend):
            assert store.healthy, f"Redis at {REDIS_URL} is not reachable"
        yield store
        if isinstance(store, RedisBackend):
            await store.clear()
            # A Redis backend hides failures as misses; make sure none happened here.
            assert store.errors == 0


@pytest.fixture
def pass_time(backend: CacheBackend, clock: FakeClock) -> Callable[[float], Awaitable[None]]:
    """Let `seconds` pass for `backend`: on the fake clock, or for real on Redis's own clock."""

    async def wait(seconds: float) -> None:
        if isinstance(backend, RedisBackend):
            await asyncio.sleep(seconds)
        else:
            clock.step(seconds)

    return wait
