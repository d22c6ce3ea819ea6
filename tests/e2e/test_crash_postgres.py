"""Ingestion into PostgreSQL + pgvector is one transaction per group of documents, vectors
included: after kill -9, before any start-up repair, and as seen by any concurrent reader (another
server), every chunk has its vector and every document all its chunks."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from metis_rag.devtools.pgvector_server import PgServer
from tests.e2e.test_crash import ingest_cmd, write_docs

pytestmark = pytest.mark.slow


async def state(url: str) -> dict[str, int]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            if (await conn.execute(text("SELECT to_regclass('chunks')"))).scalar() is None:
                return {}
            row = (await conn.execute(text(
                "SELECT (SELECT count(*) FROM documents), (SELECT count(*) FROM chunks), "
                "(SELECT count(*) FROM chunks WHERE vec IS NULL), "
                "(SELECT count(*) FROM documents d WHERE d.chunk_count <> "
                " (SELECT count(*) FROM chunks c WHERE c.document_id = d.id))"))).one()
            return {"docs": row[0], "chunks": row[1], "without_vector": row[2], "torn_docs": row[3]}
    finally:
        await engine.dispose()


async def test_kill_9_never_leaves_a_chunk_without_its_vector(
    pg_server: PgServer, tmp_path: Path, prepared_models: Path
) -> None:
    name = await pg_server.create_database()
    url = pg_server.url(name)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "models").symlink_to(prepared_models, target_is_directory=True)
    docs = tmp_path / "docs"
    write_docs(docs, 40)
    env = {**os.environ, "METIS_DATABASE_URL": url, "METIS_DATA_DIR": str(data_dir)}
    try:
        seen = []
        for delay in (3.0, 5.5):
            proc = subprocess.Popen(ingest_cmd(docs, data_dir), env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            await asyncio.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            now = await state(url)
            if now:
                assert now["without_vector"] == 0 and now["torn_docs"] == 0, now
                seen.append(now["chunks"])
        run = asyncio.create_task(asyncio.to_thread(
            subprocess.run, ingest_cmd(docs, data_dir), env=env, capture_output=True, text=True,
            timeout=600))
        observed = []
        while not run.done():  # a reader polling throughout must never see a torn state
            observed.append(await state(url))
            await asyncio.sleep(0.01)
        done = await run
        assert done.returncode == 0, done.stderr
        torn = [o for o in observed if o and (o["without_vector"] or o["torn_docs"])]
        assert not torn, torn[:3]
        assert len({o["chunks"] for o in observed if o}) > 2  # the poller saw ingestion progress
        final = await state(url)
        assert final["docs"] == 40 and final["chunks"] > 40, final
        assert final["without_vector"] == 0 and final["torn_docs"] == 0
        assert any(0 < n < final["chunks"] for n in seen), seen  # a kill landed mid-ingestion
        assert not (data_dir / "vectors").exists()  # nothing went to the embedded index
    finally:
        await pg_server.drop_database(name)
