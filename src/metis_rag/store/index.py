"""Keeping the vector index in step with the chunks in the database.

`reconcile` makes the index match the database (at start-up, after a cancelled reindex).
`IndexFlusher` saves the index a little after ingestion tasks stop committing (it is derived
data: start-up rebuilds what a crash lost from the stored embeddings). `IndexFollower` lets a
server pick up chunks that Celery workers wrote, by watching collection versions, and
`DatabaseOnlyVectors` is the worker's side: workers write chunks and embeddings to the
database only and never search.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence

import numpy as np
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..errors import ServiceUnavailable
from . import repo as store_repo
from .models import Collection as CollectionRow
from .vectors import VectorHit, VectorStore

log = logging.getLogger("metis.tasks")
Sleep = Callable[[float], Awaitable[None]]


async def reconcile(
    sessions: async_sessionmaker[AsyncSession], vectors: VectorStore
) -> dict[str, int]:
    """Make the vector index match the database: add vectors it lacks, drop ones it should not have."""
    added = removed = 0
    async with sessions() as session:
        for coll in await store_repo.list_collections(session, store_repo.ALL_TENANTS):
            a, r = await reconcile_collection(session, vectors, coll.id)
            added, removed = added + a, removed + r
    if added or removed:
        await vectors.flush()
    return {"added": added, "removed": removed}


async def reconcile_collection(
    session: AsyncSession, vectors: VectorStore, collection_id: int
) -> tuple[int, int]:
    """One collection's part of `reconcile`: (vectors added, vectors removed); no flush."""
    in_db = await store_repo.chunk_ids_of_collection(session, collection_id)
    in_index = await vectors.ids(collection_id)
    extra = sorted(in_index - in_db)
    missing = sorted(in_db - in_index)
    if extra:
        await vectors.delete(collection_id, extra)
    if missing:
        pairs = await store_repo.embeddings_of(session, missing)
        matrix = np.vstack([np.frombuffer(p[1], dtype="<f4") for p in pairs])
        await vectors.add(collection_id, [p[0] for p in pairs], matrix)
    return len(missing), len(extra)


class IndexFlusher:
    """Flushes the vector store `delay_s` after the first change since the last flush."""

    def __init__(self, vectors: VectorStore, delay_s: float = 10.0, sleep: Sleep = asyncio.sleep):
        self._vectors = vectors
        self._delay_s = delay_s
        self._sleep = sleep
        self._task: asyncio.Task[None] | None = None

    def touch(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._later(), name="metis-index-flush")

    async def _later(self) -> None:
        await self._sleep(self._delay_s)
        await self._vectors.flush()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


class IndexFollower:
    """Reconciles a collection's index with the database whenever its version changes."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], vectors: VectorStore,
        interval_s: float, sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._sessions = sessions
        self._vectors = vectors
        self._interval_s = interval_s
        self._sleep = sleep
        self._seen: dict[int, int] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.poll(initial=True)
        self._task = asyncio.create_task(self._run(), name="metis-index-follower")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await self._sleep(self._interval_s)
            try:
                await self.poll()
            except Exception as exc:  # keep following once the database is back
                log.warning("index follower: %s", exc)

    async def poll(self, initial: bool = False) -> int:
        """Reconciles every collection whose version moved; returns how many vectors changed."""
        async with self._sessions() as session:
            rows = (await session.execute(select(CollectionRow.id, CollectionRow.version))).all()
        changed = 0
        for cid, version in rows:
            if self._seen.get(cid) != version:
                if not initial:
                    changed += await self._reconcile(cid)
                self._seen[cid] = version
        if changed:
            await self._vectors.flush()
        return changed

    async def _reconcile(self, collection_id: int) -> int:
        async with self._sessions() as session:
            added, removed = await reconcile_collection(session, self._vectors, collection_id)
        return added + removed


class DatabaseOnlyVectors:
    """A worker's `VectorStore`: chunks and embeddings go to the database only (in the same
    transaction as the document); servers pull them into their index with `IndexFollower`."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def add(self, collection_id: int, ids: Sequence[int], vectors: np.ndarray) -> None: ...

    async def delete(self, collection_id: int, ids: Sequence[int]) -> None: ...

    async def drop_collection(self, collection_id: int) -> None: ...

    async def search(
        self, collection_id: int, query: np.ndarray, k: int, *,
        allowed_ids: Collection[int] | None = None,
    ) -> list[VectorHit]:
        raise ServiceUnavailable("A task worker does not serve searches.", code="worker_no_search")

    async def ids(self, collection_id: int) -> set[int]:
        return set()

    async def count(self, collection_id: int) -> int:
        return 0

    async def flush(self) -> None: ...
