"""Hybrid retrieval: dense (vector store) and full-text results fused by reciprocal rank fusion."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..cache.levels import digest
from ..cache.tiered import TieredCache
from ..config import RetrievalSettings
from ..observability.tracing import traced
from ..store import repo
from ..store.vectors import VectorStore

log = logging.getLogger("metis.retrieval")

FullTextSearch = Callable[[int, str, int, "set[int] | None"], Awaitable[list[int]]]
"""(collection id, query, n, allowed chunk ids) -> chunk ids, best first."""


@dataclass(frozen=True, slots=True)
class Retrieved:
    chunk: repo.ChunkRow
    score: float  # cosine similarity of the chunk to the query
    fused: float  # the RRF score that ranked it


def rrf(rankings: Sequence[Sequence[int]], k: int) -> dict[int, float]:
    """Reciprocal rank fusion: sum of 1 / (k + rank) over the lists an id appears in."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, chunk_id in enumerate(ranking, start=1):
            fused[chunk_id] = fused.get(chunk_id, 0.0) + 1.0 / (k + rank)
    return fused


class Retriever:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        vectors: VectorStore,
        settings: RetrievalSettings,
        cache: TieredCache | None = None,
        fulltext: FullTextSearch | None = None,
    ) -> None:
        self._sessions = sessions
        self._vectors = vectors
        self._settings = settings
        self._cache = cache
        self._fulltext = fulltext or self._sql_fulltext
        # Full-text searches that overran their budget finish here, unawaited: cancelling
        # one mid-query would leave its database connection in an unknown state.
        self._overran: set[asyncio.Future[Any]] = set()

    @traced("retrieve", lambda self, collection_id, *_, **kw: {
        "metis.collection_id": collection_id, "metis.top_k": kw.get("top_k", 0)})
    async def retrieve(
        self,
        collection_id: int,
        query_text: str,
        query_vector: np.ndarray,
        *,
        top_k: int,
        tags: Sequence[str] = (),
        folder: str | None = None,
        hybrid: bool | None = None,
        cache_scope: str | None = None,
        warnings: list[str] | None = None,
    ) -> tuple[list[Retrieved], float | None]:
        """The top chunks, and the search time a retrieval-cache hit saved (None on a miss).

        `cache_scope` (``namespace:collection:version``) enables the cache; the key adds the
        query and every setting that changes the result. Cached entries hold ids and scores
        only: the chunks are always read back from the database. A full-text leg over its
        budget is left out, with a message in `warnings`, and that result is not cached.
        """
        hybrid = self._settings.hybrid if hybrid is None else hybrid
        key = None
        if self._cache is not None and cache_scope is not None:
            s = self._settings
            key = f"{cache_scope}:" + digest(query_text, top_k, sorted(tags), folder, hybrid,
                                             s.candidates, s.rrf_k, s.ef_search)
            cached = await self._cache.get(key)
            if cached is not None:
                return await self._rows(cached["hits"], top_k), float(cached["ms"])
        t = time.perf_counter()
        degraded: list[str] = []
        results = await self._search(
            collection_id, query_text, query_vector, top_k, tags, folder, hybrid, degraded
        )
        if warnings is not None:
            warnings.extend(degraded)
        if key is not None and self._cache is not None and not degraded:
            ms = (time.perf_counter() - t) * 1000
            await self._cache.set(key, {"ms": ms, "hits": [[r.chunk.id, r.score, r.fused]
                                                           for r in results]})
        return results, None

    async def retrieve_many(
        self,
        collections: Sequence[tuple[int, str | None]],
        query_text: str,
        query_vector: np.ndarray,
        *,
        top_k: int,
        warnings: list[str] | None = None,
        **filters: Any,
    ) -> tuple[list[Retrieved], float | None]:
        """`retrieve` over several (collection id, cache scope) at once, fused by RRF score.

        The saved time is reported when every collection came from the cache.
        """
        found = await asyncio.gather(*(
            self.retrieve(cid, query_text, query_vector, top_k=top_k, cache_scope=scope,
                          warnings=warnings, **filters)
            for cid, scope in collections
        ))
        if len(found) == 1:
            return found[0]
        merged = sorted((r for hits, _ in found for r in hits),
                        key=lambda r: (r.fused, r.score), reverse=True)
        saved = [ms for _, ms in found]
        total = None if any(ms is None for ms in saved) else sum(ms or 0.0 for ms in saved)
        return merged[:top_k], total

    async def _rows(self, cached: list[list[float]], top_k: int) -> list[Retrieved]:
        async with self._sessions() as session:
            rows = await repo.chunks_by_ids(session, [int(c[0]) for c in cached])
        return [Retrieved(rows[int(i)], score, fused) for i, score, fused in cached
                if int(i) in rows][:top_k]

    async def _search(
        self,
        collection_id: int,
        query_text: str,
        query_vector: np.ndarray,
        top_k: int,
        tags: Sequence[str],
        folder: str | None,
        hybrid: bool,
        degraded: list[str],
    ) -> list[Retrieved]:
        started = asyncio.get_running_loop().time()
        n = max(self._settings.candidates, top_k)
        allowed: set[int] | None = None
        if tags or folder is not None:
            async with self._sessions() as session:
                allowed = set(await repo.allowed_chunk_ids(session, collection_id, tags, folder))
            if not allowed:
                return []

        dense_search = self._vectors.search(collection_id, query_vector, n, allowed_ids=allowed)
        if hybrid:
            lexical_task = asyncio.ensure_future(
                self._fulltext(collection_id, query_text, n, allowed)
            )
            try:
                dense = await dense_search
            except BaseException:
                self._let_finish(lexical_task)
                raise
            lexical = await self._within_budget(lexical_task, started, degraded)
            fused = rrf([[h.id for h in dense], lexical], self._settings.rrf_k)
        else:
            dense = await dense_search
            fused = {h.id: h.score for h in dense}
        ranked = sorted(fused, key=fused.__getitem__, reverse=True)
        async with self._sessions() as session:
            # Fetch a few extra: an id deleted since the index answered has no row any more.
            rows = await repo.chunks_by_ids(session, ranked[: top_k + 8])
        out: list[Retrieved] = []
        for chunk_id in ranked:
            row = rows.get(chunk_id)
            if row is None:
                continue
            vec = np.frombuffer(row.embedding, dtype="<f4")
            out.append(Retrieved(row, float(vec @ query_vector), fused[chunk_id]))
            if len(out) == top_k:
                break
        return out

    async def _within_budget(
        self, task: asyncio.Future[list[int]], started: float, degraded: list[str]
    ) -> list[int]:
        """The full-text ids if they come within the budget (counted from `started`), else []."""
        budget_s = self._settings.fulltext_budget_ms / 1000
        remaining = budget_s - (asyncio.get_running_loop().time() - started)
        if not task.done() and remaining > 0:
            await asyncio.wait([task], timeout=remaining)
        if task.done():
            return task.result()
        self._let_finish(task)
        log.warning("full-text search overran its %g ms budget; dense results only",
                    self._settings.fulltext_budget_ms)
        degraded.append(
            f"fulltext_timeout: full-text search took longer than "
            f"{self._settings.fulltext_budget_ms:g} ms; answered from dense retrieval only"
        )
        return []

    def _let_finish(self, task: asyncio.Future[Any]) -> None:
        self._overran.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Future[Any]) -> None:
        self._overran.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            # Retrieved here, so it is logged once rather than "never retrieved".
            log.warning("an overrun full-text search failed: %r", exc)

    async def _sql_fulltext(
        self, collection_id: int, query: str, n: int, allowed: set[int] | None
    ) -> list[int]:
        async with self._sessions() as session:
            hits = await repo.fulltext_search(session, collection_id, query, n * 4 if allowed else n)
        ids = [h[0] for h in hits]
        if allowed is not None:
            ids = [i for i in ids if i in allowed]
        return ids[:n]
