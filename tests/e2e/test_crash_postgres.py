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


def consistent(now: dict[str, int]) -> bool:
    return not now or (now["without_vector"] == 0 and now["torn_docs"] == 0)


async def test_kill_9_never_leaves_a_chunk_without_its_vector(
    pg_server: PgServer, tmp_path: Path, prepared_models: Path
) -> None:
    name = await pg_server.create_database()
    url = pg_server.url(name)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "models").symlink_to(prepared_models, target_is_directory=True)
    docs = tmp_path / "docs"
    write_docs(docs, 30)
    env = {**os.environ, "METIS_DATABASE_URL": url, "METIS_DATA_DIR": str(data_dir)}
    observed: list[dict[str, int]] = []
    try:
        for _ in range(2):  # killed as soon as it has written more chunks, i.e. mid-ingestion
            before = (await state(url)).get("chunks", 0)
            proc = subprocess.Popen(ingest_cmd(docs, data_dir), env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while proc.poll() is None:
                observed.append(await state(url))
                if observed[-1].get("chunks", 0) > before:
                    break
                await asyncio.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            observed.append(await state(url))
            assert consistent(observed[-1]), observed[-1]
        run = asyncio.create_task(asyncio.to_thread(
            subprocess.run, ingest_cmd(docs, data_dir), env=env, capture_output=True, text=True,
            timeout=600))
        while not run.done():  # a reader polling throughout must never see a torn state
            observed.append(await state(url))
            await asyncio.sleep(0.01)
        done = await run
        assert done.returncode == 0, done.stderr
        final = await state(url)
        assert final["docs"] == 30 and final["chunks"] > 30, final
        torn = [o for o in observed + [final] if not consistent(o)]
        assert not torn, torn[:3]
        assert len({o["chunks"] for o in observed if o}) > 3  # the reader saw ingestion progress
        assert not (data_dir / "vectors").exists()  # nothing went to the embedded index
    finally:
        await pg_server.drop_database(name)
