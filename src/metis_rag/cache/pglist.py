"""The semantic cache's shared lists in PostgreSQL, for servers that share a PostgreSQL
database but no Redis: the same `append` / `read_list` / `clear` contract as the cache
backends (`base.py`), on two tables of migration 0014.

A list is a header row (length, expiry) and one row per item. An append locks the header row
(the upsert), so concurrent appends from several servers get distinct positions; a read is one
query. Expiry is wall-clock time (shared by every server), read from an injected clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from .base import check_ttl

_FOREVER = float("inf")

_APPEND = text("""
INSERT INTO cache_lists AS l (key, length, expires_at) VALUES (:key, 1, :expires_at)
ON CONFLICT (key) DO UPDATE SET
  length = CASE WHEN l.expires_at <= :now THEN 1 ELSE l.length + 1 END,
  expires_at = excluded.expires_at
RETURNING length
""")
_READ = text("""
SELECT l.length, i.value FROM cache_lists l
LEFT JOIN cache_list_items i ON i.key = l.key AND i.pos >= :start AND i.pos < l.length
WHERE l.key = :key AND l.expires_at > :now
ORDER BY i.pos
""")


class PgListLog:
    """Append-only lists with a TTL on the whole list, shared through PostgreSQL."""

    def __init__(self, engine: AsyncEngine, clock: Callable[[], float] = time.time) -> None:
        self._engine = engine
        self._clock = clock

    async def append(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        check_ttl(ttl_s)
        now = self._clock()
        expires_at = _FOREVER if ttl_s is None else now + ttl_s
        async with self._engine.begin() as conn:
            length = (await conn.execute(_APPEND, {"key": key, "expires_at": expires_at,
                                                   "now": now})).scalar_one()
            if length == 1:
                # A new list, or one that had expired: its old items go, and so do the other
                # lists that expired (old collection versions), once per new list.
                await conn.execute(text("DELETE FROM cache_list_items WHERE key = :key"),
                                   {"key": key})
                await conn.execute(text("DELETE FROM cache_lists WHERE expires_at <= :now"),
                                   {"now": now})
            await conn.execute(
                text("INSERT INTO cache_list_items (key, pos, value) VALUES (:key, :pos, :value)"),
                {"key": key, "pos": length - 1, "value": value})

    async def read_list(self, key: str, start: int = 0) -> tuple[int, list[bytes]]:
        async with self._engine.connect() as conn:
            rows = (await conn.execute(_READ, {"key": key, "start": start,
                                               "now": self._clock()})).all()
        if not rows:
            return 0, []
        return int(rows[0][0]), [bytes(value) for _, value in rows if value is not None]

    async def clear(self, prefix: str | None = None) -> int:
        pattern = (prefix or "").replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        async with self._engine.begin() as conn:
            result = await conn.execute(
                text("DELETE FROM cache_lists WHERE key LIKE :pattern"),
                {"pattern": pattern + "%"})
        return int(result.rowcount or 0)  # type: ignore[attr-defined]
