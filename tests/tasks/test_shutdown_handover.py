"""A shutdown that cancels a write in the middle (a running task's, the heartbeat's) still hands
the process's tasks over at once: the cancelled statement does not keep SQLite's write lock, so
the lease release does not run out the busy timeout ("could not hand over unfinished tasks:
database is locked"). Each test stops the statement in the connection's thread to cancel it at
that point every run, with the garbage collector paused (it would free the lock at random).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import event, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from metis_rag.config import Settings
from metis_rag.store.db import create_engine, migrate
from metis_rag.tasks import repo
from metis_rag.tasks.embedded import EmbeddedBackend
from metis_rag.tasks.handlers import build_registry
from metis_rag.tasks.runner import TaskContext
from metis_rag.tasks.types import TaskSpec
from tests.sqlhold import Hold, gc_paused
from tests.tasks.conftest import task_settings
from tests.waiting import eventually


def short_busy_timeout(tmp_path: Path, heartbeat_s: float) -> Settings:
    # A short busy timeout: without the fix the hand-over fails after it, not after 10 s.
    return Settings(data_dir=tmp_path, sqlite_busy_timeout_s=1, tasks=task_settings(
        heartbeat_s=heartbeat_s, monitor_interval_s=3600))


async def assert_handed_over(engine: AsyncEngine, task_id: str, log_text: str) -> None:
    assert "could not hand over" not in log_text
    async with engine.connect() as conn:
        status, owner = (await conn.execute(
            select(repo.T.c.status, repo.T.c.owner).where(repo.T.c.id == task_id))).one()
    assert (status, owner) == ("pending", None)  # handed over: the next start runs it


async def test_a_shutdown_mid_write_hands_the_tasks_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    settings = short_busy_timeout(tmp_path, heartbeat_s=3600)
    engine = create_engine(settings)
    hold = Hold()
    hold.install(engine)
    await migrate(engine)
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE written (v INTEGER)"))

    submitted = asyncio.Event()

    async def write(ctx: TaskContext) -> None:
        await submitted.wait()  # a task starts before its row commits; the write must not
        async with engine.begin() as conn:  # as an ingestion's chunk insert
            await conn.execute(text("INSERT INTO written VALUES (hold(1)) RETURNING v"))

    registry = build_registry(settings.tasks)
    registry.register("write", write)
    backend = EmbeddedBackend(engine, settings.tasks, registry, data_dir=tmp_path)
    await backend.start(SimpleNamespace(engine=engine, settings=settings))
    try:
        with gc_paused(), caplog.at_level(logging.WARNING, logger="metis.tasks"):
            task = (await backend.submit([TaskSpec("write")]))[0]
            submitted.set()
            assert await asyncio.to_thread(hold.entered.wait, 10)
            running = backend._running[task.id]
            closing = asyncio.create_task(backend.close())
            await eventually(lambda: running.cancelling() > 0, what="the task was not cancelled")
            hold.release.set()
            await closing
        await assert_handed_over(engine, task.id, caplog.text)
    finally:
        hold.release.set()
        await engine.dispose()


async def test_a_shutdown_mid_heartbeat_hands_the_tasks_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    # The heartbeat writes its lease, then reads in the same transaction; the shutdown cancels
    # it first thing. A read cancelled there left the lease's write lock held.
    settings = short_busy_timeout(tmp_path, heartbeat_s=1234)
    engine = create_engine(settings)
    await migrate(engine)
    entered, release = threading.Event(), threading.Event()
    armed = False

    def trace(sql: str) -> None:  # in the connection's thread, as the statement starts
        if armed and sql.lstrip().startswith("SELECT") and "FROM task_workers" in sql:
            entered.set()
            release.wait(10)

    @event.listens_for(engine.sync_engine, "connect")
    def add_trace(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.run_async(lambda driver: driver.set_trace_callback(trace))

    await engine.dispose()  # every connection from now on has the trace
    beat = asyncio.Event()

    async def sleep(seconds: float) -> None:  # the heartbeat's wait ends when the test says
        if seconds == 1234:
            await beat.wait()
            beat.clear()
        else:
            await asyncio.Event().wait()

    backend = EmbeddedBackend(engine, settings.tasks, build_registry(settings.tasks),
                              data_dir=tmp_path, sleep=sleep)
    await backend.start(SimpleNamespace(engine=engine, settings=settings))
    try:
        with gc_paused(), caplog.at_level(logging.WARNING, logger="metis.tasks"):
            task = (await backend.submit([TaskSpec("sleep", params={"seconds": 3600})]))[0]
            armed = True
            beat.set()
            assert await asyncio.to_thread(entered.wait, 10)
            heartbeats = backend._loops[0]
            closing = asyncio.create_task(backend.close())
            await eventually(lambda: heartbeats.cancelling() > 0, what="no heartbeat cancelled")
            release.set()
            await closing
        await assert_handed_over(engine, task.id, caplog.text)
    finally:
        release.set()
        await engine.dispose()
