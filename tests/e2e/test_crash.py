"""kill -9 during ingestion: the next start finds no vector without its chunk and no chunk
without its vector, and finishing the ingestion stores every document exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from metis_rag.config import Settings
from metis_rag.services import open_services
from metis_rag.store import repo
from metis_rag.store.models import Chunk, Document

pytestmark = pytest.mark.slow

WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november "
    "oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu"
).split()


def write_docs(directory: Path, n: int) -> None:
    directory.mkdir(parents=True)
    for i in range(n):
        sentences = [
            f"Document {i} sentence {j} talks about {WORDS[(i + j) % 26]} and "
            f"{WORDS[(i * j) % 26]} in detail." for j in range(60)
        ]
        (directory / f"doc{i:03d}.txt").write_text(" ".join(sentences))


def ingest_cmd(docs: Path, data_dir: Path) -> list[str]:
    return [sys.executable, "-m", "metis_rag", "ingest", str(docs), "--collection", "crash",
            "--data-dir", str(data_dir), "--json"]


async def check_consistent(settings: Settings) -> tuple[int, int]:
    async with open_services(settings, role="client") as services:  # start-up reconciles the index
        async with services.sessions() as session:
            coll = await repo.get_collection(session, "default", "crash")
            in_db = await repo.chunk_ids_of_collection(session, coll.id)
            docs = (await session.execute(select(func.count(Document.id)))).scalar_one()
            per_doc = await session.execute(
                select(Document.chunk_count, func.count(Chunk.id))
                .join(Chunk, Chunk.document_id == Document.id, isouter=True)
                .group_by(Document.id)
            )
            for declared, actual in per_doc:
                assert declared == actual  # a document is never half written
            fts = (await session.execute(text("SELECT count(*) FROM chunks_fts"))).scalar_one()
            assert fts == len(in_db)
        assert await services.vectors.ids(coll.id) == in_db
        return int(docs), len(in_db)


def stored_chunks(database: Path) -> int:
    """Chunks committed to the SQLite store so far, read beside the writer (WAL)."""
    if not database.exists():
        return 0
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)) as conn:
        try:
            return int(conn.execute("SELECT count(*) FROM chunks").fetchone()[0])
        except sqlite3.OperationalError:  # not migrated yet: no chunks table
            return 0


def test_kill_9_during_ingestion_leaves_a_consistent_store(make_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings: Settings = make_settings()
    docs = tmp_path / "docs"
    write_docs(docs, 60)
    env = {**os.environ, "METIS_DATA_DIR": str(settings.data_dir)}
    database = settings.data_dir / "metis.db"
    for _ in range(3):  # killed as soon as it has stored more chunks, i.e. mid-ingestion
        before = stored_chunks(database)
        proc = subprocess.Popen(ingest_cmd(docs, settings.data_dir), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while stored_chunks(database) <= before:
            assert proc.poll() is None, "the ingestion ended before storing anything new"
            assert time.monotonic() < deadline, "the ingestion stored nothing new"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        asyncio.run(check_consistent(settings))
    done = subprocess.run(ingest_cmd(docs, settings.data_dir), env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    n_docs, n_chunks = asyncio.run(check_consistent(settings))
    assert n_docs == 60 and n_chunks > 60
