"""Cache entries and the semantic level's lists in the PostgreSQL database the servers share
(`METIS_CACHE__BACKEND=postgres`): shared and durable like Redis, without running Redis.

Three tables of migration 0014. An entry is one row; a list is a header row (length, expiry)
and one row per item: an append locks the header row (the upsert), so concurrent appends from
several servers get distinct positions, and a read is one query. Expiry is wall-clock time
(shared by every server) from an injected clock; expired rows are purged as new ones come.
Where pgvector is installed (migration 0021), items keep their vector and `search_list` ranks a
list's items with `<=>` in the database, so a reader fetches its few nearest, not the list.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncEngine

from .base import BackendStats, CacheBackend, check_ttl

_FOREVER = float("inf")
_PURGE_EVERY = 1000  # sets between two purges of expired entries

_GET = text("SELECT key, value FROM cache_entries WHERE key IN :keys AND expires_at > :now"
            ).bindparams(bindparam("keys", expanding=True))
_SET = text("""
INSERT INTO cache_entries (key, value, expires_at) VALUES (:key, :value, :expires_at)
ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at
""")
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


_HAS_VECTORS = text(
    "SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('cache_list_items') "
    "AND attname = 'vec' AND NOT attisdropped")
_QUESTION = "CAST(CAST(:q AS real[]) AS vector)"
_SEARCH = text(f"""
SELECT i.value FROM cache_lists l
JOIN cache_list_items i ON i.key = l.key AND i.pos < l.length
WHERE l.key = :key AND l.expires_at > :now AND vector_dims(i.vec) = :dim
ORDER BY i.vec <=> {_QUESTION} LIMIT :k
""")


class PostgresBackend(CacheBackend):
    """Entries and lists in PostgreSQL, through the application's engine (its pool)."""

    def __init__(self, engine: AsyncEngine, clock: Callable[[], float] = time.time) -> None:
        if engine.dialect.name != "postgresql":
            raise ValueError("METIS_CACHE__BACKEND=postgres needs a PostgreSQL "
                             "METIS_DATABASE_URL")
        self._engine = engine
        self._clock = clock
        self._sets = 0
        self.searches_lists = False  # until `start` finds the vector column

    async def start(self) -> None:
        async with self._engine.connect() as conn:
            self.searches_lists = (await conn.execute(_HAS_VECTORS)).first() is not None

    def _expiry(self, ttl_s: float | None) -> float:
        check_ttl(ttl_s)
        return _FOREVER if ttl_s is None else self._clock() + ttl_s

    async def get(self, key: str) -> bytes | None:
        return (await self.get_many([key])).get(key)

    async def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        if not keys:
            return {}
        async with self._engine.connect() as conn:
            rows = await conn.execute(_GET, {"keys": list(set(keys)), "now": self._clock()})
            return {key: bytes(value) for key, value in rows}

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        await self.set_many({key: value}, ttl_s)

    async def set_many(self, items: Mapping[str, bytes], ttl_s: float | None = None) -> None:
        expires_at = self._expiry(ttl_s)
        if not items:
            return
        async with self._engine.begin() as conn:
            await conn.execute(_SET, [{"key": k, "value": v, "expires_at": expires_at}
                                      for k, v in items.items()])
            self._sets += len(items)
            if self._sets >= _PURGE_EVERY:
                self._sets = 0
                await conn.execute(text("DELETE FROM cache_entries WHERE expires_at <= :now"),
                                   {"now": self._clock()})

    async def delete(self, key: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(text("DELETE FROM cache_entries WHERE key = :key"), {"key": key})
            await conn.execute(text("DELETE FROM cache_lists WHERE key = :key"), {"key": key})

    async def clear(self, prefix: str | None = None) -> int:
        pattern = (prefix or "").replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        removed = 0
        async with self._engine.begin() as conn:
            for table in ("cache_entries", "cache_lists"):
                result = await conn.execute(text(f"DELETE FROM {table} WHERE key LIKE :p"),
                                            {"p": pattern + "%"})
                removed += int(result.rowcount or 0)
        return removed

    async def append(self, key: str, value: bytes, ttl_s: float | None = None, *,
                     vector: np.ndarray | None = None) -> None:
        expires_at = self._expiry(ttl_s)
        now = self._clock()
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
            item = {"key": key, "pos": length - 1, "value": value}
            if self.searches_lists and vector is not None:
                await conn.execute(text(
                    "INSERT INTO cache_list_items (key, pos, value, vec) "
                    "VALUES (:key, :pos, :value, CAST(CAST(:vec AS real[]) AS vector))"),
                    {**item, "vec": _floats(vector)})
            else:
                await conn.execute(text(
                    "INSERT INTO cache_list_items (key, pos, value) VALUES (:key, :pos, :value)"),
                    item)

    async def read_list(self, key: str, start: int = 0) -> tuple[int, list[bytes]]:
        async with self._engine.connect() as conn:
            rows = (await conn.execute(_READ, {"key": key, "start": start,
                                               "now": self._clock()})).all()
        if not rows:
            return 0, []
        return int(rows[0][0]), [bytes(value) for _, value in rows if value is not None]

    async def search_list(self, key: str, vector: np.ndarray, k: int) -> list[bytes] | None:
        if not self.searches_lists:
            return None
        q = _floats(vector)
        async with self._engine.connect() as conn:
            rows = await conn.execute(_SEARCH, {"key": key, "now": self._clock(), "q": q,
                                                "dim": len(q), "k": k})
            return [bytes(value) for (value,) in rows]

    async def stats(self) -> BackendStats:
        # Counting would scan the table; like Redis, the backend does not tell.
        return BackendStats(entries=None, bytes=None)


def _floats(vector: np.ndarray) -> list[float]:
    floats: list[float] = np.asarray(vector, dtype=np.float32).reshape(-1).tolist()
    return floats
