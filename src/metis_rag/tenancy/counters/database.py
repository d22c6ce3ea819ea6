"""Counters in the database (SQLite or PostgreSQL): shared by every server on that database.

An add is one statement, `INSERT ... ON CONFLICT DO UPDATE ... RETURNING value`, in its own
short transaction: atomic across processes without a read-modify-write. On SQLite, where one
writer holds the file at a time, this process sends its adds one after another (an asyncio
lock): concurrent writers of one process would otherwise meet SQLite's busy handler, which
sleeps in steps of up to 100 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import bindparam, case, delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from ..models import QuotaCounter
from .base import CounterStore

_PURGE_EVERY_S = 300.0
C = QuotaCounter.__table__.c


def _upsert(dialect: str) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    ins = insert(QuotaCounter).values(key=bindparam("key"), value=bindparam("amount"),
                                      expires_at=bindparam("expires"))
    return ins.on_conflict_do_update(
        index_elements=[C.key],
        set_={"value": case((C.expires_at <= bindparam("now"), ins.excluded.value),
                            else_=C.value + ins.excluded.value),
              "expires_at": ins.excluded.expires_at},
    ).returning(C.value)


class DatabaseCounters(CounterStore):
    name = "database"

    def __init__(self, engine: AsyncEngine, clock: Callable[[], float] = time.time) -> None:
        self._engine = engine
        self._clock = clock
        self._add = _upsert(engine.dialect.name)
        self._get = select(C.value).where(C.key == bindparam("key"),
                                          C.expires_at > bindparam("now"))
        serial = engine.dialect.name == "sqlite"
        self._writer = asyncio.Lock() if serial else None
        self._purged_at = 0.0

    async def add(self, key: str, amount: int, ttl_s: float) -> int:
        now = self._clock()
        params = {"key": key, "amount": amount, "expires": now + ttl_s, "now": now}
        async with self._writer or contextlib.nullcontext():
            async with self._engine.begin() as conn:
                value = (await conn.execute(self._add, params)).scalar_one()
                if now - self._purged_at > _PURGE_EVERY_S:
                    self._purged_at = now
                    await conn.execute(delete(QuotaCounter).where(C.expires_at < now))
        return int(value)

    async def get(self, key: str) -> int:
        async with self._engine.connect() as conn:
            value = (await conn.execute(self._get, {"key": key, "now": self._clock()})).scalar()
        return int(value or 0)
