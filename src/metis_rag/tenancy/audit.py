"""The audit log: who did what, when, from where, with what outcome.

Records are queued in memory and written in batches (like conversation messages), so a question
costs no synchronous write; `flush()` waits for what is queued (reads, tests, shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .keys import stop
from .models import AuditRecord

log = logging.getLogger("metis.audit")
_MAX_PENDING = 50_000  # past this, with the database down, the oldest records are dropped


def outcome_of(status: int) -> str:
    return "ok" if status < 400 else "refused" if status < 500 else "failed"


class AuditLog:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, window_ms: float = 200,
                 clock: Callable[[], float] = time.time) -> None:
        self._sessions = sessions
        self._window_s = window_ms / 1000
        self._clock = clock
        # Raw tuples: the request pays an append; rows are built when the batch is written.
        self._pending: list[tuple[Any, ...]] = []
        self._queued = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.dropped = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="metis-audit")

    async def close(self) -> None:
        # A write under way finishes first: cancelled, it would lose the batch it took.
        async with self._lock:
            await stop(self._task)
        self._task = None
        with contextlib.suppress(Exception):
            await self.flush()

    def record(self, *, tenant: str, actor: str, action: str, target: str = "",
               status: int = 200, client: str = "", detail: dict[str, Any] | None = None,
               trace_id: str = "") -> None:
        """Queue one record; never blocks, never raises."""
        if len(self._pending) >= _MAX_PENDING:
            del self._pending[: _MAX_PENDING // 10]  # rare: drop the oldest tenth at once
            self.dropped += _MAX_PENDING // 10
        self._pending.append((self._clock(), tenant, actor, action, target, status, client,
                              detail, trace_id))
        if not self._queued.is_set():
            self._queued.set()

    async def flush(self) -> None:
        async with self._lock:
            batch, self._pending = self._pending, []
            if not batch:
                return
            rows = [{"at": datetime.fromtimestamp(at, UTC), "tenant": tenant, "actor": actor[:64],
                     "action": action[:40], "target": target[:300],
                     "outcome": outcome_of(status), "status": status, "client": client[:64],
                     "detail": detail or {}, "trace_id": trace_id[:128]}
                    for at, tenant, actor, action, target, status, client, detail, trace_id
                    in batch]
            try:
                async with self._sessions() as session, session.begin():
                    await session.execute(insert(AuditRecord), rows)
            except Exception:
                self._pending[:0] = batch  # kept for the next try, oldest first
                raise

    async def _run(self) -> None:
        while True:
            await self._queued.wait()
            await asyncio.sleep(self._window_s)  # let the window fill: one write per batch
            self._queued.clear()
            try:
                await self.flush()
            except Exception:
                log.warning("writing the audit log failed; retrying", exc_info=True)
                await asyncio.sleep(1.0)
                self._queued.set()


async def query_audit(
    session: AsyncSession, tenant: str | None, *, action: str | None = None, actor: str | None = None,
    outcome: str | None = None, since: datetime | None = None, until: datetime | None = None,
    trace_id: str | None = None, limit: int = 50, offset: int = 0,
) -> tuple[list[AuditRecord], int]:
    """The tenant's records (every tenant's: None), newest first."""
    conds = [] if tenant is None else [AuditRecord.tenant == tenant]
    if action is not None:
        conds.append(AuditRecord.action == action)
    if actor is not None:
        conds.append(AuditRecord.actor == actor)
    if outcome is not None:
        conds.append(AuditRecord.outcome == outcome)
    if trace_id is not None:
        conds.append(AuditRecord.trace_id == trace_id)
    if since is not None:
        conds.append(AuditRecord.at >= since)
    if until is not None:
        conds.append(AuditRecord.at < until)
    rows = (await session.execute(
        select(AuditRecord).where(*conds).order_by(AuditRecord.at.desc(), AuditRecord.id.desc())
        .limit(limit).offset(offset))).scalars().all()
    total = (await session.execute(
        select(func.count(AuditRecord.id)).where(*conds))).scalar_one()
    return list(rows), int(total)
