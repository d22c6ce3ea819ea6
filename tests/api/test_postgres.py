"""The HTTP API on PostgreSQL: pool settings are applied and a saturated pool sheds load with 503."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from metis_rag.app import create_app
from metis_rag.config import PostgresSettings, Settings
from metis_rag.devtools.pgvector_server import PgServer
from metis_rag.store.db import create_engine, migrate, session_factory
from metis_rag.store.lookup import CollectionLookup
from tests.files import txt_bytes
from tests.lifespan import lifespan
from tests.uploads import wait_tasks

pytestmark = pytest.mark.slow


@pytest.fixture
async def pg_database(pg_server: PgServer) -> AsyncIterator[str]:
    name = await pg_server.create_database()
    yield name
    await pg_server.drop_database(name)


async def test_a_saturated_pool_answers_503_and_recovers(
    make_settings: Callable[..., Settings], pg_server: PgServer, pg_database: str
) -> None:
    pool = PostgresSettings(pool_size=1, max_overflow=0, pool_timeout_s=0.5)
    app = create_app(make_settings(database_url=pg_server.url(pg_database), postgres=pool))
    locker = await pg_server.connect(pg_database)
    async with lifespan(app) as manager:
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app),
                                   base_url="http://metis")
        health = (await client.get("/api/health")).json()["components"]["database"]
        assert health["detail"].startswith("postgresql") and "of 1+0 connections" in health["detail"]
        lock = locker.transaction()
        await lock.start()
        await locker.execute("LOCK TABLE collections IN ACCESS EXCLUSIVE MODE")
        # The upload takes the pool's only connection and waits on the lock...
        upload = asyncio.create_task(
            client.post("/api/documents", files={"files": ("a.txt", txt_bytes())}))
        waiting = "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'"
        while not await locker.fetchval(waiting, pg_database):
            assert not upload.done(), upload.result().text
            await asyncio.sleep(0.05)
        # ...so another request gets a clear 503 after pool_timeout_s instead of hanging.
        r = await client.get("/api/documents")
        assert r.status_code == 503, r.text
        assert r.json()["code"] == "database_busy" and r.headers["retry-after"] == "1"
        await lock.rollback()
        accepted = await upload
        assert accepted.status_code == 202, accepted.text
        await wait_tasks(client, accepted.json()["task_ids"])
        assert (await client.get("/api/documents")).json()["total"] == 1
        await client.aclose()
    await locker.close()


async def terminate_all(admin: Any, database: str) -> None:
    """Ends every other connection to the database and waits until they are gone (the app
    may open new ones meanwhile: those are not waited for)."""
    pids = await admin.fetchval(
        "SELECT array_agg(pid) FROM pg_stat_activity WHERE datname = $1 "
        "AND pid <> pg_backend_pid()", database)
    assert pids
    await admin.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", pids)
    while await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)", pids):
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("pre_ping", [True, False])
async def test_cached_answers_survive_dropped_connections(
    make_settings: Callable[..., Settings], pg_server: PgServer, pg_database: str, pre_ping: bool
) -> None:
    """A database restart drops every pooled connection: with pre-ping the pool notices on
    checkout; without it, the collection lookup (a read) retries once on a fresh connection."""
    pool = PostgresSettings(pool_pre_ping=pre_ping)
    app = create_app(make_settings(database_url=pg_server.url(pg_database), postgres=pool))
    admin = await pg_server.connect(pg_database)
    async with lifespan(app) as manager:
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app),
                                   base_url="http://metis")
        accepted = await client.post("/api/documents", files={"files": ("a.txt", txt_bytes())})
        await wait_tasks(client, accepted.json()["task_ids"])
        q = {"message": "What is in the document?"}
        first = await client.post("/api/chat/query", json=q)
        assert first.status_code == 200, first.text
        assert (await client.post("/api/chat/query", json=q)).json()["cache"]["level"] == "exact"
        await terminate_all(admin, pg_database)
        again = await client.post("/api/chat/query", json=q)
        assert again.status_code == 200, again.text
        assert again.json()["cache"]["level"] == "exact"
        assert again.json()["answer"] == first.json()["answer"]
        await client.aclose()
    await admin.close()


async def test_the_collection_lookup_retries_once_on_a_dropped_connection(
    tmp_path: Path, pg_server: PgServer, pg_database: str
) -> None:
    settings = Settings(data_dir=tmp_path, database_url=pg_server.url(pg_database),
                        postgres=PostgresSettings(pool_pre_ping=False, pool_size=1,
                                                  max_overflow=0))
    engine = create_engine(settings)
    await migrate(engine)
    lookup = CollectionLookup(session_factory(engine))
    created = await lookup.get_or_create("default", "c")
    assert await lookup.version(created.id) == created.version
    admin = await pg_server.connect(pg_database)
    await terminate_all(admin, pg_database)
    # The pool's only connection is dead and nothing pings it: the read is tried again.
    assert await lookup.version(created.id) == created.version
    assert await lookup.find("default", "c") == created
    await admin.close()
    await engine.dispose()


async def test_concurrent_lookups_share_queries_and_see_every_earlier_commit(
    tmp_path: Path, pg_server: PgServer, pg_database: str
) -> None:
    settings = Settings(data_dir=tmp_path, database_url=pg_server.url(pg_database))
    engine = create_engine(settings)
    await migrate(engine)
    lookup = CollectionLookup(session_factory(engine))
    created = await lookup.get_or_create("default", "c")
    admin = await pg_server.connect(pg_database)
    queries = lookup.reads.queries
    earlier = [asyncio.ensure_future(lookup.find("default", "c")) for _ in range(50)]
    # A deletion elsewhere commits while those lookups are in flight...
    await admin.execute("UPDATE collections SET version = version + 1 WHERE id = $1", created.id)
    # ...so every lookup that starts after it must see it, whatever is still in flight.
    later = await asyncio.gather(*(lookup.find("default", "c") for _ in range(50)))
    assert {ref.version for ref in later} == {created.version + 1}
    assert {ref.version for ref in await asyncio.gather(*earlier)} <= {
        created.version, created.version + 1}
    assert await lookup.version(created.id) == created.version + 1
    assert lookup.reads.queries - queries <= 6  # a few shared queries, not 101
    await admin.close()
    await engine.dispose()
