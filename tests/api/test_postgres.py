"""The HTTP API on PostgreSQL: pool settings are applied and a saturated pool sheds load with 503."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from asgi_lifespan import LifespanManager

from metis_rag.app import create_app
from metis_rag.config import PostgresSettings, Settings
from metis_rag.devtools.pgvector_server import PgServer
from tests.files import txt_bytes
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
    async with LifespanManager(app, startup_timeout=120) as manager:
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
