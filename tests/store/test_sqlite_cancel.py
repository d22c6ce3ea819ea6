"""A statement cancelled mid-flight on SQLite (aiosqlite) must not leave SQLite's write lock
held: a shutdown that cancels a running ingestion must leave the database writable at once.

The cancellation lands at one point, every run: the statement has run its first step (its
writes are done, the write lock is held) and the task is awaiting its result. The garbage
collector is paused meanwhile: it would otherwise close the abandoned cursor, and release the
lock, when it happens to run, which is what made the leak rare.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from metis_rag.config import Settings
from metis_rag.store.db import create_engine
from tests.sqlhold import Hold, gc_paused

Work = Callable[[AsyncConnection], Awaitable[None]]


async def _insert_returning(conn: AsyncConnection) -> None:
    # As the ORM's flush and the chunk insert of an ingestion do.
    await conn.execute(text("INSERT INTO t VALUES ('a', hold(1)) RETURNING k"))


async def _select_after_a_write(conn: AsyncConnection) -> None:
    # A read in a transaction that has written: the transaction holds the lock, not the read.
    await conn.execute(text("INSERT INTO t VALUES ('a', 1)"))
    await conn.execute(text("SELECT hold(k) FROM t"))


async def _in_transaction(engine: AsyncEngine, work: Work) -> None:
    async with engine.begin() as conn:
        await work(conn)


async def _in_autocommit(engine: AsyncEngine, work: Work) -> None:
    # As the quota counters' connection: each statement is its own transaction, and one whose
    # RETURNING rows are not read yet is still open.
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await work(conn)


def _writable_now(path: Path) -> bool:
    probe = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        probe.execute("INSERT INTO t VALUES ('probe', 0)")
        return True
    except sqlite3.OperationalError as exc:
        assert "locked" in str(exc), exc
        return False
    finally:
        probe.close()


@pytest.mark.parametrize(("scope", "work"), [
    (_in_transaction, _insert_returning),
    (_in_transaction, _select_after_a_write),
    (_in_autocommit, _insert_returning),
], ids=["insert-returning", "select-after-write", "autocommit-returning"])
async def test_a_cancelled_statement_leaves_the_database_writable(
    tmp_path: Path, scope: Any, work: Work,
) -> None:
    hold = Hold()
    engine = create_engine(Settings(data_dir=tmp_path))
    hold.install(engine)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER)"))
        with gc_paused():
            task = asyncio.create_task(scope(engine, work))
            assert await asyncio.to_thread(hold.entered.wait, 10)
            task.cancel()
            hold.release.set()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert _writable_now(tmp_path / "metis.db"), "a cancelled statement kept the lock"
        async with engine.begin() as conn:  # and the engine itself writes on
            await conn.execute(text("INSERT INTO t VALUES ('after', 2)"))
    finally:
        hold.release.set()
        await engine.dispose()
