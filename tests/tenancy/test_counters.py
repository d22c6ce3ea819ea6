"""The quota counter contract, run on every store: memory, SQLite, PostgreSQL and Redis (real
servers). Two store objects on one database or one Redis stand for two servers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from metis_rag.config import AuthSettings, QuotaSettings, Settings
from metis_rag.errors import QuotaExceeded
from metis_rag.store.db import create_engine, migrate
from metis_rag.tenancy.counters import CounterStore, DatabaseCounters, MemoryCounters
from metis_rag.tenancy.counters.redis import RedisCounters
from metis_rag.tenancy.quotas import Quotas
from tests.cache.conftest import REDIS_URL
from tests.fakeclock import FakeClock

STORES = ["memory", "sqlite", "postgresql", "redis"]


@dataclass
class Backend:
    """Opens stores on one shared backend (one per 'server'), and lets time pass for it."""

    kind: str
    open: Callable[[], Awaitable[CounterStore]]
    clock: FakeClock
    prefix: str

    async def pass_time(self, seconds: float) -> None:
        if self.kind == "redis":  # Redis expires keys on its own clock
            await asyncio.sleep(seconds)
        else:
            self.clock.step(seconds)


@pytest.fixture(params=STORES)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    kind: str = request.param
    clock = FakeClock()
    async with AsyncExitStack() as stack:
        url = ""
        if kind == "postgresql":
            server = request.getfixturevalue("pg_server")
            name = await server.create_database()
            stack.push_async_callback(server.drop_database, name)
            url = server.url(name)
        memory = MemoryCounters(clock)

        async def open_store() -> CounterStore:
            if kind == "memory":
                return memory  # one process: every "server" is the same object
            if kind == "redis":
                store: CounterStore = RedisCounters(REDIS_URL, timeout_s=2.0)
            else:
                engine = create_engine(Settings(data_dir=tmp_path, database_url=url))
                stack.push_async_callback(engine.dispose)
                await migrate(engine)
                store = DatabaseCounters(engine, clock)
            await store.start()
            stack.push_async_callback(store.close)
            return store

        yield Backend(kind, open_store, clock, f"metis-test:{uuid.uuid4().hex}:")


async def test_add_returns_the_running_total_and_get_reads_it(backend: Backend) -> None:
    store = await backend.open()
    key = backend.prefix + "a"
    assert await store.get(key) == 0
    assert await store.add(key, 3, 60) == 3
    assert await store.add(key, 4, 60) == 7
    assert await store.add(key, -2, 60) == 5
    assert await store.get(key) == 5
    assert await store.get(backend.prefix + "b") == 0  # keys are independent


async def test_concurrent_adds_are_all_counted_once(backend: Backend) -> None:
    store = await backend.open()
    key = backend.prefix + "busy"
    values = await asyncio.gather(*(store.add(key, 1, 60) for _ in range(100)))
    # Atomic: each add saw its own total, none was lost or seen twice.
    assert sorted(values) == list(range(1, 101))
    assert await store.get(key) == 100


async def test_a_counter_expires_ttl_after_its_last_add(backend: Backend) -> None:
    store = await backend.open()
    scale = 1.0 if backend.kind == "redis" else 10.0  # real seconds on Redis, kept short
    key = backend.prefix + "ttl"
    await store.add(key, 5, 3 * scale)
    await backend.pass_time(2 * scale)
    assert await store.add(key, 1, 3 * scale) == 6  # not expired; the add renews the TTL
    await backend.pass_time(2 * scale)
    assert await store.get(key) == 6
    await backend.pass_time(2 * scale)
    assert await store.get(key) == 0
    assert await store.add(key, 2, 3 * scale) == 2  # an expired counter starts again from 0


async def test_two_servers_share_their_counters(backend: Backend) -> None:
    if backend.kind == "memory":
        pytest.skip("the memory store is per process by design")
    first, second = await backend.open(), await backend.open()
    key = backend.prefix + "shared"
    await asyncio.gather(*(s.add(key, 1, 60) for s in (first, second) for _ in range(20)))
    assert await first.get(key) == await second.get(key) == 40


async def test_quotas_on_two_servers_share_one_limit(backend: Backend) -> None:
    settings = AuthSettings(quota_key_prefix=backend.prefix, tenant_quotas={
        "acme": QuotaSettings(questions_per_minute=3, llm_tokens_per_day=100)})
    backend.clock.now = 1_700_000_000.0 - 1_700_000_000.0 % 60 + 10  # 10 s into a minute
    a = Quotas(settings, await backend.open(), clock=backend.clock)
    b = Quotas(settings, await backend.open(), clock=backend.clock)
    await a.admit_question("acme")
    await b.admit_question("acme")
    await a.admit_question("acme")
    with pytest.raises(QuotaExceeded) as refused:
        await b.admit_question("acme")
    assert refused.value.details["quota"] == "questions_per_minute"
    assert refused.value.retry_after_s == pytest.approx(50.0)
    await a.admit_question("globex")  # another tenant has its own (here: no) limit
    await a.spend_tokens("acme", 60)
    await b.spend_tokens("acme", 60)
    backend.clock.step(60)  # a new minute: questions again, but the day's tokens are spent
    with pytest.raises(QuotaExceeded) as spent:
        await b.admit_question("acme")
    assert spent.value.details["quota"] == "llm_tokens_per_day"
