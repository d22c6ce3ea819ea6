"""`CollectionLookup`: a collection's id and versions by name, read on every question.

Every answer is keyed on its collection's version (and, when it reads the documents'
analysis, on its analysis version too), so the versions must be current on every
request, yet an exact cache hit should cost well under a millisecond. On SQLite the lookup
runs on its own read-only connection, inline: in WAL mode a reader never waits for a writer
and the query takes microseconds, less than a hop to a worker thread. Other databases use the
async pool in autocommit mode: a session would wrap the one SELECT in BEGIN and ROLLBACK, two
more round trips (sessions' BEGIN and ROLLBACK took 28 % of a replica's samples under load).
There, questions that come while a lookup of their collection is in flight share the next
one (`FreshReads`): each still sees every commit that ended before it came, and under load one
SELECT serves many questions instead of one each.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import bindparam, select
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from ..aio import FreshReads
from ..errors import NotFound
from . import repo
from .models import Collection

_QUERY = "SELECT id, version, analysis_version FROM collections WHERE tenant = ? AND name = ?"
# Built once: building the SELECT for every question was 16 % of a PostgreSQL replica's samples
# under load (py-spy, 2026-12-08), six times what running it through the pool took.
_BY_NAME = select(Collection.id, Collection.version, Collection.analysis_version).where(
    Collection.tenant == bindparam("tenant"), Collection.name == bindparam("name"))
_VERSION = select(Collection.version).where(Collection.id == bindparam("id"))


class CollectionRef(NamedTuple):
    id: int
    version: int  # of the content: bumped by every upload, replacement and deletion
    analysis_version: int = 0  # bumped when a document's analysis is stored

    def key(self, reads_analysis: bool) -> str:
        """The version part of a cache key: ``7``, or ``7.3`` for a result that reads the
        analysis (a content change still moves the first part)."""
        return f"{self.version}.{self.analysis_version}" if reads_analysis else str(self.version)


class CollectionLookup:
    def __init__(self, sessions: async_sessionmaker[AsyncSession],
                 sqlite_path: Path | None = None, *, busy_timeout_s: float = 10.0) -> None:
        self._sessions = sessions
        self._sqlite_path = sqlite_path
        self._busy_timeout_s = busy_timeout_s
        self._conn: sqlite3.Connection | None = None
        bind = sessions.kw.get("bind")
        # Shares the engine's pool; each lookup is one statement, no transaction around it.
        self._reader: AsyncEngine | None = (
            bind.execution_options(isolation_level="AUTOCOMMIT")
            if isinstance(bind, AsyncEngine) else None)
        self.reads: FreshReads[tuple[str, ...], Any] = FreshReads()  # shared per collection

    def start(self) -> None:
        if self._sqlite_path is not None and self._conn is None:
            conn = sqlite3.connect(self._sqlite_path, timeout=self._busy_timeout_s,
                                   check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA query_only=ON")
            self._conn = conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def find(self, tenant: str, name: str) -> CollectionRef | None:
        """None when the tenant has no such collection."""
        if self._conn is not None:
            row = self._conn.execute(_QUERY, (tenant, name)).fetchone()
            return CollectionRef(int(row[0]), int(row[1]), int(row[2])) if row else None
        params = {"tenant": tenant, "name": name}

        async def fetch() -> Any:
            if self._reader is not None:
                return await self._read(lambda conn: conn.execute(_BY_NAME, params), first=True)
            async with self._sessions() as session:
                return (await session.execute(_BY_NAME, params)).first()

        found = await self.reads.read(("name", tenant, name), fetch)
        return CollectionRef(int(found[0]), int(found[1]), int(found[2])) if found else None

    async def get(self, tenant: str, name: str) -> CollectionRef:
        found = await self.find(tenant, name)
        if found is None:
            raise NotFound(f"Collection {name!r} does not exist.", code="collection_not_found")
        return found

    async def get_or_create(self, tenant: str, name: str) -> CollectionRef:
        found = await self.find(tenant, name)
        if found is not None:
            return found
        try:
            async with self._sessions() as session, session.begin():
                coll = await repo.get_or_create_collection(session, tenant, name)
                return CollectionRef(coll.id, coll.version, coll.analysis_version)
        except IntegrityError:  # an upload created it meanwhile: it exists now
            return await self.get(tenant, name)

    async def version(self, collection_id: int) -> int:
        if self._conn is not None:
            row = self._conn.execute(
                "SELECT version FROM collections WHERE id = ?", (collection_id,)
            ).fetchone()
            return int(row[0]) if row else -1
        params = {"id": collection_id}

        async def fetch() -> Any:
            if self._reader is not None:
                return await self._read(lambda conn: conn.scalar(_VERSION, params))
            async with self._sessions() as session:
                return await session.scalar(_VERSION, params)

        found = await self.reads.read(("id", str(collection_id)), fetch)
        return int(found) if found is not None else -1

    async def _read(self, run: Callable[[AsyncConnection], Awaitable[Any]], *,
                    first: bool = False) -> Any:
        """One statement in autocommit, tried again once on a fresh connection if the pooled
        one was dropped (a database restart, without `pool_pre_ping`): it only reads."""
        assert self._reader is not None
        for attempt in (1, 2):
            try:
                async with self._reader.connect() as conn:
                    result = await run(conn)
                    return result.first() if first else result
            except DBAPIError as exc:
                if attempt == 2 or not exc.connection_invalidated:
                    raise
        raise AssertionError("unreachable")
