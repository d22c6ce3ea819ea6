"""Counters in the database (SQLite or PostgreSQL): shared by every server on that database.

Adds are group-committed: while one batch is in the database, the adds that arrive wait for
the next, and each batch is one statement on one connection,
`INSERT ... VALUES (...), (...) ON CONFLICT DO UPDATE ... RETURNING key, value` with one row per
distinct key (the amounts of a key summed). One statement is atomic across processes without a
read-modify-write, and a batch costs one round trip however many requests wait in it: with a
statement (and a transaction) per add, concurrent adds queued for pooled connections and, on
SQLite, met its busy handler, which sleeps in steps of up to 100 ms.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import bindparam, case, delete, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..models import QuotaCounter
from .base import CounterStore

_PURGE_EVERY_S = 300.0
C = QuotaCounter.__table__.c
_Add = tuple[str, int, float, "asyncio.Future[int]"]


class DatabaseCounters(CounterStore):
    name = "database"

    def __init__(self, engine: AsyncEngine, clock: Callable[[], float] = time.time) -> None:
        self._engine = engine
        self._clock = clock
        # Both dialects' insert() build the same ON CONFLICT ... DO UPDATE used below.
        from sqlalchemy.dialects import postgresql, sqlite

        self._insert: Callable[..., Any] = (
            postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert)
        self._get = select(C.value).where(C.key == bindparam("key"),
                                          C.expires_at > bindparam("now"))
        self._pending: list[_Add] = []
        self._writer: asyncio.Task[None] | None = None
        self._conn: AsyncConnection | None = None
        self._purged_at = 0.0

    async def close(self) -> None:
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def add(self, key: str, amount: int, ttl_s: float) -> int:
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((key, amount, ttl_s, done))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write(), name="metis-quota-counters")
        return await done

    async def get(self, key: str) -> int:
        async with self._engine.connect() as conn:
            value = (await conn.execute(self._get, {"key": key, "now": self._clock()})).scalar()
        return int(value or 0)

    async def _write(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    totals = await self._apply(await self._connection(), batch)
                except Exception as exc:  # the connection may be broken: open a new one next
                    await self._drop_connection()
                    for *_, done in batch:
                        if not done.done():
                            done.set_exception(exc)
                    continue
                # Callers of one key see the totals in the order they added: the last gets
                # the total, each earlier one the total less the amounts after it.
                for key, amount, _, done in reversed(batch):
                    if not done.done():
                        done.set_result(totals[key])
                    totals[key] -= amount
        finally:
            self._writer = None

    async def _connection(self) -> AsyncConnection:
        # One connection kept for the counters: a checkout per batch (PostgreSQL's pre-ping,
        # the rollback on return) would cost more round trips than the statement itself.
        if self._conn is None:
            conn = await self._engine.connect()
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            if self._engine.dialect.name == "postgresql":
                # Not waiting for the WAL flush (an fsync, milliseconds) on every batch: a
                # crash of PostgreSQL can forget the last few milliseconds of counts, never
                # corrupt them. Only this connection's commits are affected.
                await conn.exec_driver_sql("SET synchronous_commit TO OFF")
            self._conn = conn
        return self._conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.invalidate()
                await conn.close()
            except Exception:  # already broken: nothing to give back to the pool
                pass

    async def _apply(self, conn: Any, batch: list[_Add]) -> dict[str, int]:
        now = self._clock()
        rows: dict[str, dict[str, Any]] = {}
        for key, amount, ttl_s, _ in batch:
            row = rows.setdefault(key, {"key": key, "value": 0, "expires_at": 0.0})
            row["value"] += amount
            row["expires_at"] = max(row["expires_at"], now + ttl_s)
        ins = self._insert(QuotaCounter).values(list(rows.values()))
        stmt = ins.on_conflict_do_update(
            index_elements=[C.key],
            set_={"value": case((C.expires_at <= now, ins.excluded.value),
                                else_=C.value + ins.excluded.value),
                  "expires_at": ins.excluded.expires_at},
        ).returning(C.key, C.value)
        totals = {k: int(v) for k, v in (await conn.execute(stmt)).all()}
        if now - self._purged_at > _PURGE_EVERY_S:
            self._purged_at = now
            await conn.execute(delete(QuotaCounter).where(C.expires_at < now))
        return totals
