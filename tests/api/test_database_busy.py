"""Writes while another connection holds SQLite's write lock past the busy timeout (what a
long write transaction does under load): uploads answer 503 `database_busy` with Retry-After
and store nothing; cached answers keep coming and their conversation rows are written once the
lock is free; the same upload then goes through whole."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from metis_rag.app import create_app
from metis_rag.config import Settings
from tests.files import md_bytes, txt_bytes
from tests.lifespan import lifespan
from tests.uploads import ingest, replace

pytestmark = [pytest.mark.slow]

BUSY_TIMEOUT_S = 0.5


@contextmanager
def write_lock_held(database: Path) -> Iterator[None]:
    """Another writer (its own connection, as another process would have) holds the lock."""
    conn = sqlite3.connect(database, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def assert_busy(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["code"] == "database_busy", body
    assert "Traceback" not in response.text and "sqlite" not in body["message"].lower()
    assert int(response.headers["retry-after"]) >= 1


async def _counts(client: httpx.AsyncClient) -> tuple[int, int]:
    docs = (await client.get("/api/documents", params={"limit": 1})).json()["total"]
    tasks = (await client.get("/api/tasks", params={"limit": 1})).json()["total"]
    return docs, tasks


async def test_uploads_under_a_held_write_lock_answer_503_and_store_nothing(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(sqlite_busy_timeout_s=BUSY_TIMEOUT_S)
    assert settings.sqlite_path is not None
    app = create_app(settings)
    async with lifespan(app) as manager, httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://metis") as client:
        first = (await ingest(client, {"keys.txt": txt_bytes()}))["results"][0]
        ask = {"message": "How do I rotate the API keys?"}
        assert (await client.post("/api/chat/query", json=ask)).status_code == 200  # cached now
        before = await _counts(client)
        old_chunks = (await client.get(f"/api/documents/{first['document_id']}",
                                       params={"chunks": True})).json()["chunks"]

        with write_lock_held(settings.sqlite_path):
            posted, put, *answers = await asyncio.gather(
                client.post("/api/documents", files=[("files", ("ops.md", md_bytes()))]),
                client.put(f"/api/documents/{first['document_id']}",
                           files={"files": ("keys.txt", md_bytes())}),
                *(client.post("/api/chat/query", json=ask) for _ in range(20)),
            )
        assert_busy(posted)
        assert_busy(put)
        # Cached answers do not wait for the lock: their rows are written behind them.
        assert [a.status_code for a in answers] == [200] * 20
        assert {a.json()["cache"]["level"] for a in answers} == {"exact"}

        # Nothing of the refused uploads was stored: no task, no document, the old content.
        await asyncio.sleep(BUSY_TIMEOUT_S * 2)  # anything started meanwhile has settled
        assert await _counts(client) == before
        still = (await client.get(f"/api/documents/{first['document_id']}",
                                  params={"chunks": True})).json()["chunks"]
        assert still == old_chunks
        # The answers given meanwhile were logged once the lock was free.
        conv = answers[-1].json()["conversation_id"]
        messages = (await client.get(f"/api/conversations/{conv}")).json()["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant"]

        # Asked again, as Retry-After says, both go through whole.
        created = (await ingest(client, {"ops.md": md_bytes()}))["results"][0]
        assert created["status"] == "created" and created["chunks"] > 0
        await replace(client, first["document_id"], "keys.txt", md_bytes() + b"\nReplaced.\n")
        swapped = (await client.get(f"/api/documents/{first['document_id']}",
                                    params={"chunks": True})).json()["chunks"]
        assert swapped != old_chunks and any("02:00" in c["text"] for c in swapped)
