"""`VectorStore` on PostgreSQL + pgvector: each chunk's vector is the `vec` column of its own row.

The ingestor writes `vec` in the same INSERT as the chunk's text (`chunk_table`), so a chunk and
its vector commit, roll back and are deleted together: they cannot diverge, across a crash or
between the servers sharing the database. `add`/`delete` update rows that exist (start-up
reconciliation uses them); a vector whose chunk does not exist is dropped. Searches use the HNSW
index of migration 0003 (`vector_cosine_ops`) with pgvector's iterative scans, so a collection
filter still returns `k` hits; small `allowed_ids` sets are searched exactly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Sequence, Set
from typing import Any

import numpy as np
from sqlalchemy import Column, MetaData, Table, cast, text
from sqlalchemy.dialects.postgresql import ARRAY, REAL
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import BindParameter, ColumnElement
from sqlalchemy.types import TypeDecorator, UserDefinedType

from ..errors import ServiceUnavailable
from .models import Chunk
from .vectors import VectorHit, unique_batch

log = logging.getLogger(__name__)

COLUMN = "vec"
INDEX = "ix_chunks_vec_hnsw"
# One index serves every collection, so a collection filter leaves about ef x share candidates:
# ef is divided by the collection's share of the chunks (from ANALYZE's most common values;
# none there, or no statistics yet: ef as set) to keep recall as with an index of its own.
_SETTINGS = text(
    "SELECT set_config('hnsw.ef_search', least(1000, ceil(CAST(:ef AS int) / greatest(coalesce(("
    "SELECT s.f[array_position(s.v, CAST(:c AS bigint))] FROM (SELECT most_common_vals::text::"
    "bigint[] AS v, most_common_freqs AS f FROM pg_stats WHERE schemaname = current_schema() "
    "AND tablename = 'chunks' AND attname = 'collection_id') AS s), 1), 0.001)))::int::text, "
    "true), set_config('hnsw.iterative_scan', 'strict_order', true)"
)
_QUERY = f"{COLUMN} <=> CAST(CAST(:q AS real[]) AS vector)"
# The HNSW index answers ORDER BY distance; the planner picks it once the collection is large.
NEAREST_SQL = text(
    f"SELECT id, {_QUERY} AS d FROM chunks WHERE collection_id = :c AND {COLUMN} IS NOT NULL "
    f"ORDER BY {_QUERY} LIMIT :k"
)
# MATERIALIZED keeps the planner from answering this ORDER BY with the (approximate) index.
EXACT_SQL = text(
    f"WITH c AS MATERIALIZED (SELECT id, {_QUERY} AS d FROM chunks "
    f"WHERE id = ANY(CAST(:ids AS bigint[])) AND collection_id = :c AND {COLUMN} IS NOT NULL) "
    "SELECT id, d FROM c ORDER BY d, id LIMIT :k"
)


class _VectorName(UserDefinedType[Any]):
    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "vector"


class Vector(TypeDecorator[Any]):
    """pgvector's `vector`, sent as a float4 array that the server casts: asyncpg needs no codec."""

    impl = ARRAY(REAL)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> list[float] | None:
        return None if value is None else np.asarray(value, dtype=np.float32).reshape(-1).tolist()

    def bind_expression(self, bindvalue: BindParameter[Any]) -> ColumnElement[Any]:
        return cast(bindvalue, _VectorName())


def chunk_table() -> Table:
    """`chunks` as migration 0003 leaves it on PostgreSQL: the model's columns plus `vec`."""
    columns = [
        Column(c.name, c.type, primary_key=c.primary_key, autoincrement=c.autoincrement)
        for c in Chunk.__table__.columns
    ]
    return Table("chunks", MetaData(), *columns, Column(COLUMN, Vector(), nullable=True))


def schema_statements(dim: int, m: int, ef_construction: int) -> list[str]:
    """DDL of the pgvector schema; idempotent (migration 0003 and `PgVectorStore.start` run it)."""
    return [
        "CREATE EXTENSION IF NOT EXISTS vector",
        f"ALTER TABLE chunks ADD COLUMN IF NOT EXISTS {COLUMN} vector({int(dim)})",
        f"CREATE INDEX IF NOT EXISTS {INDEX} ON chunks USING hnsw ({COLUMN} vector_cosine_ops) "
        f"WITH (m = {int(m)}, ef_construction = {int(ef_construction)})",
    ]


def vector_available(conn: Connection) -> bool:
    """Whether this server can create the `vector` extension (or has it already)."""
    row = conn.execute(text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'"))
    return row.first() is not None


def column_dim(conn: Connection) -> int | None:
    """The dimension of `chunks.vec`, or None if the column does not exist."""
    row = conn.execute(text(
        "SELECT a.atttypmod FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
        "WHERE a.attrelid = to_regclass('chunks') AND a.attname = :c AND NOT a.attisdropped "
        "AND t.typname = 'vector'"), {"c": COLUMN}).first()
    return None if row is None else int(row[0])


def _literal(query: np.ndarray) -> list[float]:
    return np.asarray(query, dtype=np.float32).reshape(-1).tolist()


class PgVectorStore:
    """`VectorStore` over `chunks.vec` in the PostgreSQL database of `engine`."""

    backend = "pgvector"

    def __init__(
        self,
        engine: AsyncEngine,
        dim: int,
        *,
        ef_search: int = 96,
        m: int = 16,
        ef_construction: int = 200,
        exact_scan_max: int = 2048,
    ) -> None:
        self._engine = engine
        self._dim = dim
        self._ef_search = min(int(ef_search), 1000)  # pgvector's upper bound
        self._m = m
        self._ef_construction = ef_construction
        self._exact_scan_max = exact_scan_max
        self.chunk_table = chunk_table()
        self.vector_column = COLUMN
        self.version = ""

    async def start(self) -> None:
        async with self._engine.begin() as conn:
            dim = await conn.run_sync(column_dim)
            if dim is None:
                if not await conn.run_sync(vector_available):
                    raise ServiceUnavailable(
                        "The PostgreSQL server has no pgvector extension: install it (see the "
                        "README, 'Scale-out deployment') or set METIS_VECTOR_STORE=hnsw.",
                        code="pgvector_unavailable",
                    )
                # The database was migrated before pgvector was installed: add it now; start-up
                # reconciliation then fills `vec` from the stored embeddings.
                log.warning("adding the pgvector column and HNSW index to an existing database")
                for stmt in schema_statements(self._dim, self._m, self._ef_construction):
                    await conn.execute(text(stmt))
            elif dim != self._dim:
                raise ServiceUnavailable(
                    f"chunks.vec holds {dim}-dimensional vectors but the embedder makes "
                    f"{self._dim}: use a new database for a different embedding model.",
                    code="vector_dimension_mismatch",
                )
            self.version = (await conn.execute(
                text("SELECT extversion FROM pg_extension WHERE extname = 'vector'"))).scalar_one()
        if tuple(int(p) for p in self.version.split(".")[:2]) < (0, 8):
            log.warning("pgvector %s has no iterative index scans: filtered searches may return "
                        "fewer hits; upgrade to 0.8 or later", self.version)

    async def close(self) -> None:
        return None  # the engine belongs to the caller

    async def add(self, collection_id: int, ids: Sequence[int], vectors: np.ndarray) -> None:
        labels, data = unique_batch(ids, vectors, self._dim)
        if not len(labels):
            return
        params = [{"id": int(i), "c": collection_id, "v": row.tolist()}
                  for i, row in zip(labels, data, strict=True)]
        stmt = text(f"UPDATE chunks SET {COLUMN} = CAST(CAST(:v AS real[]) AS vector) "
                    "WHERE id = :id AND collection_id = :c")
        async with self._engine.begin() as conn:
            for start in range(0, len(params), 1000):
                await conn.execute(stmt, params[start : start + 1000])

    async def delete(self, collection_id: int, ids: Sequence[int]) -> None:
        if not len(ids):
            return
        async with self._engine.begin() as conn:
            await conn.execute(
                text(f"UPDATE chunks SET {COLUMN} = NULL WHERE id = ANY(CAST(:ids AS bigint[])) "
                     f"AND collection_id = :c AND {COLUMN} IS NOT NULL"),
                {"ids": [int(i) for i in ids], "c": collection_id},
            )

    async def drop_collection(self, collection_id: int) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                text(f"UPDATE chunks SET {COLUMN} = NULL "
                     f"WHERE collection_id = :c AND {COLUMN} IS NOT NULL"), {"c": collection_id})

    async def ids(self, collection_id: int) -> set[int]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                text(f"SELECT id FROM chunks WHERE collection_id = :c AND {COLUMN} IS NOT NULL"),
                {"c": collection_id})
            return {r[0] for r in rows}

    async def count(self, collection_id: int) -> int:
        async with self._engine.connect() as conn:
            return int((await conn.execute(
                text(f"SELECT count(*) FROM chunks WHERE collection_id = :c AND {COLUMN} IS NOT NULL"),
                {"c": collection_id})).scalar_one())

    async def flush(self) -> None:
        return None  # every write is durable once its transaction commits

    async def search(
        self,
        collection_id: int,
        query: np.ndarray,
        k: int,
        *,
        allowed_ids: Collection[int] | None = None,
    ) -> list[VectorHit]:
        q = _literal(query)
        if len(q) != self._dim:
            raise ValueError(f"expected a query of dimension {self._dim}, got {len(q)}")
        if k <= 0:
            return []
        async with self._engine.connect() as conn:
            # Scoped to this search's transaction: nothing leaks onto the pooled connection, and
            # it holds behind a transaction-mode pooler. Iterative scans keep walking the graph
            # until `k` rows pass the collection filter.
            await conn.execute(_SETTINGS, {"ef": self._ef_search, "c": collection_id})
            if allowed_ids is None:
                return await self._nearest(conn, collection_id, q, k)
            allowed: Set[int] = (allowed_ids if isinstance(allowed_ids, set | frozenset)
                                 else set(allowed_ids))
            if len(allowed) <= self._exact_scan_max:
                return await self._exact(conn, collection_id, q, k, allowed)
            # Over-fetch from the index and keep allowed ids, growing the fetch while too few
            # are kept; a filter inside SQL would test each candidate against the whole list.
            fetch = 4 * k
            while fetch <= 8 * max(self._ef_search, k):
                hits = await self._nearest(conn, collection_id, q, fetch)
                kept = [h for h in hits if h.id in allowed]
                if len(kept) >= k or len(hits) < fetch:
                    return kept[:k]
                fetch = math.ceil(fetch * 2 * k / max(len(kept), 1))
            return await self._exact(conn, collection_id, q, k, allowed)

    async def _nearest(
        self, conn: AsyncConnection, collection_id: int, q: list[float], k: int
    ) -> list[VectorHit]:
        rows = await conn.execute(NEAREST_SQL, {"q": q, "c": collection_id, "k": k})
        return [VectorHit(int(r[0]), 1.0 - float(r[1])) for r in rows]

    async def _exact(
        self, conn: AsyncConnection, collection_id: int, q: list[float], k: int, allowed: Set[int]
    ) -> list[VectorHit]:
        if not allowed:
            return []
        rows = await conn.execute(
            EXACT_SQL, {"q": q, "ids": sorted(allowed), "c": collection_id, "k": k}
        )
        return [VectorHit(int(r[0]), 1.0 - float(r[1])) for r in rows]
