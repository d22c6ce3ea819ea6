"""Closing the audit log while a batch is being written keeps that batch: close() lets the
write finish instead of cancelling it (a cancelled write had already taken the batch from the
queue, and the batch was lost)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from metis_rag.config import Settings
from metis_rag.store.db import create_engine, migrate, session_factory
from metis_rag.tenancy.audit import AuditLog
from metis_rag.tenancy.models import AuditRecord


class GatedSessions:
    """A session factory whose first write waits for `release`, once `writing` is set."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self.writing = asyncio.Event()
        self.release = asyncio.Event()

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[Any]:
        async with self._sessions() as session:
            execute = session.execute

            async def gated(*args: Any, **kwargs: Any) -> Any:
                if not self.writing.is_set():
                    self.writing.set()
                    await self.release.wait()
                return await execute(*args, **kwargs)

            session.execute = gated  # type: ignore[method-assign]
            yield session


async def test_close_during_a_write_keeps_the_batch(tmp_path: Path) -> None:
    engine = create_engine(Settings(data_dir=tmp_path))
    try:
        await migrate(engine)
        sessions = session_factory(engine)
        gated = GatedSessions(sessions)
        audit = AuditLog(gated, window_ms=1)  # type: ignore[arg-type]
        await audit.start()
        audit.record(tenant="t", actor="key:1", action="documents.upload", target="a.txt")
        await asyncio.wait_for(gated.writing.wait(), 10)  # the background flush took the batch
        closing = asyncio.create_task(audit.close())
        for _ in range(3):  # close() runs to where it waits (or, before the fix, cancels)
            await asyncio.sleep(0)
        assert not closing.done()
        gated.release.set()
        await asyncio.wait_for(closing, 10)
        async with sessions() as session:
            count = await session.scalar(select(func.count()).select_from(AuditRecord))
        assert count == 1
    finally:
        await engine.dispose()
