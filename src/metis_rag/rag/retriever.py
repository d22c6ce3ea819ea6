"""Hybrid retrieval: dense (vector store) and full-text candidates, fused (see `fusion`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..cache.levels import digest
from ..cache.tiered import TieredCache
from ..config import RetrievalSettings
from ..observability.tracing import traced
from ..store import repo
from ..store.fulltext import fulltext_search
from ..store.vectors import VectorStore
from . import fusion

log = logging.getLogger("metis.retrieval")

FullTextSearch = Callable[[int, str, int, "set[int] | None"], Awaitable[list[tuple[int, float]]]]
"""(collection id, query, n, allowed chunk ids) -> (chunk id, score), best first."""


GroupBy = Literal["chunk", "document"]


@dataclass(frozen=True, slots=True)
class Retrieved:
    chunk: repo.ChunkRow
    score: float  # the score that ranked it (fused in hybrid mode, else the cosine)
    similarity: float  # cosine similarity of the chunk to the query


@dataclass(frozen=True, slots=True)
class Candidates:
    """Both legs' candidates: every chunk of either with its exact cosine and stored row."""

    dense: list[int]  # ids, best first
    lexical: dict[int, float]  # full-text score of the chunks it matched
    similarity: dict[int, float]
    rows: dict[int, repo.ChunkRow]


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
        group_by: GroupBy = "chunk",
        cache_scope: str | None = None,
        warnings: list[str] | None = None,
        analysis: repo.AnalysisFilter | None = None,
    ) -> tuple[list[Retrieved], float | None]:
        """The top chunks, and the search time a retrieval-cache hit saved (None on a miss).

        `group_by="document"` returns the chunks of the top `top_k` distinct documents instead
        (see `group_by_document`). `cache_scope` (``namespace:collection:version``, the version
        with the analysis version when `analysis` filters) enables the cache; the key adds the
        query and every setting that changes the result. Cached entries hold ids and scores
        only: the chunks are always read back from the database. A
        full-text leg over its budget is left out, with a message in `warnings`, and that
        result is not cached.
        """
        hybrid = self._settings.hybrid if hybrid is None else hybrid
        key = None
        if self._cache is not None and cache_scope is not None:
            s = self._settings
            key = f"{cache_scope}:" + digest(query_text, top_k, sorted(tags), folder, hybrid,
                                             group_by, s.candidates, s.fusion, s.term_weight,
                                             s.name_weight, s.phrase_weight, s.dense_weight, s.rrf_k,
                                             s.ef_search, s.chunks_per_document)
            if analysis is not None and analysis.active:
                key += ":" + digest(analysis.doc_type, analysis.language, analysis.topic)
            cached = await self._cache.get(key)
            if cached is not None:
                return await self._rows(cached["hits"]), float(cached["ms"])
        t = time.perf_counter()
        degraded: list[str] = []
        n = top_k
        if group_by == "document":  # enough ranked chunks to find top_k distinct documents
            n = max(self._settings.candidates, top_k * self._settings.chunks_per_document)
        results = await self._search(
            collection_id, query_text, query_vector, n, tags, folder, hybrid, degraded, analysis
        )
        if group_by == "document":
            results = group_by_document(results, top_k, self._settings.chunks_per_document)
        if warnings is not None:
            warnings.extend(degraded)
        if key is not None and self._cache is not None and not degraded:
            ms = (time.perf_counter() - t) * 1000
            await self._cache.set(key, {"ms": ms, "hits": [[r.chunk.id, r.score, r.similarity]
                                                           for r in results]})
        return results, None

    async def retrieve_many(
        self,
        collections: Sequence[tuple[int, str | None]],
        query_text: str,
        query_vector: np.ndarray,
        *,
        top_k: int,
        group_by: GroupBy = "chunk",
        warnings: list[str] | None = None,
        **filters: Any,
    ) -> tuple[list[Retrieved], float | None]:
        """`retrieve` over several (collection id, cache scope) at once, merged by score.

        The saved time is reported when every collection came from the cache.
        """
        found = await asyncio.gather(*(
            self.retrieve(cid, query_text, query_vector, top_k=top_k, cache_scope=scope,
                          group_by=group_by, warnings=warnings, **filters)
            for cid, scope in collections
        ))
        if len(found) == 1:
            return found[0]
        merged = sorted((r for hits, _ in found for r in hits),
                        key=lambda r: (r.score, r.similarity), reverse=True)
        if group_by == "document":
            merged = group_by_document(merged, top_k, self._settings.chunks_per_document)
        else:
            merged = merged[:top_k]
        saved = [ms for _, ms in found]
        total = None if any(ms is None for ms in saved) else sum(ms or 0.0 for ms in saved)
        return merged, total

    async def _rows(self, cached: list[list[float]]) -> list[Retrieved]:
        async with self._sessions() as session:
            rows = await repo.chunks_by_ids(session, [int(c[0]) for c in cached])
        return [Retrieved(rows[int(i)], score, similarity) for i, score, similarity in cached
                if int(i) in rows]

    async def candidates(
        self,
        collection_id: int,
        query_text: str,
        query_vector: np.ndarray,
        n: int,
        *,
        allowed: set[int] | None = None,
        hybrid: bool = True,
        degraded: list[str] | None = None,
    ) -> Candidates:
        """Up to `n` chunks from each leg (full-text only when `hybrid`), with their rows."""
        started = asyncio.get_running_loop().time()
        degraded = [] if degraded is None else degraded
        dense_search = self._vectors.search(collection_id, query_vector, n, allowed_ids=allowed)
        lexical: list[tuple[int, float]] = []
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
        else:
            dense = await dense_search
        ids = list(dict.fromkeys([h.id for h in dense] + [i for i, _ in lexical]))
        async with self._sessions() as session:
            # An id deleted since the index answered has no row any more and drops out here.
            rows = await repo.chunks_by_ids(session, ids)
        vectors = {i: np.frombuffer(r.embedding, dtype="<f4") for i, r in rows.items()}
        return Candidates(
            dense=[h.id for h in dense if h.id in rows],
            lexical={i: s for i, s in lexical if i in rows},
            similarity={i: float(v @ query_vector) for i, v in vectors.items()},
            rows=rows,
        )

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
        analysis: repo.AnalysisFilter | None = None,
    ) -> list[Retrieved]:
        allowed: set[int] | None = None
        narrowed = analysis is not None and analysis.active
        if tags or folder is not None or narrowed:
            async with self._sessions() as session:
                allowed = set(await repo.allowed_chunk_ids(session, collection_id, tags, folder,
                                                           analysis if narrowed else None))
            if not allowed:
                return []
        n = max(self._settings.candidates, top_k)
        found = await self.candidates(collection_id, query_text, query_vector, n,
                                      allowed=allowed, hybrid=hybrid, degraded=degraded)
        scores = rank_candidates(found, query_text, self._settings, hybrid)
        ranked = sorted(scores, key=lambda i: (scores[i], found.similarity[i]), reverse=True)
        return [Retrieved(found.rows[i], scores[i], found.similarity[i]) for i in ranked[:top_k]]

    async def _within_budget(
        self, task: asyncio.Future[list[tuple[int, float]]], started: float, degraded: list[str]
    ) -> list[tuple[int, float]]:
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
    ) -> list[tuple[int, float]]:
        async with self._sessions() as session:
            hits = await fulltext_search(session, collection_id, query, n * 4 if allowed else n)
        if allowed is not None:
            hits = [h for h in hits if h[0] in allowed]
        return hits[:n]


def rank_candidates(found: Candidates, query: str, settings: RetrievalSettings, hybrid: bool
                    ) -> dict[int, float]:
    """The score of every candidate under the configured fusion; higher ranks first."""
    if not hybrid:
        return {i: found.similarity[i] for i in found.dense}
    if settings.fusion == "rrf":
        lexical = sorted(found.lexical, key=found.lexical.__getitem__, reverse=True)
        return fusion.rrf([found.dense, lexical], settings.rrf_k)
    if settings.fusion == "convex":
        return fusion.convex(found.similarity, found.lexical, settings.dense_weight)
    return fusion.terms(query, found.similarity, found.rows, settings.term_weight,
                        settings.name_weight, settings.phrase_weight)


def group_by_document(ranked: Sequence[Retrieved], top_k: int, per_document: int
                      ) -> list[Retrieved]:
    """The best `per_document` chunks of each of the first `top_k` distinct documents, the
    documents in the order of their best chunk, each document's chunks together."""
    docs: dict[str, list[Retrieved]] = {}  # by public document id
    for r in ranked:
        chunks = docs.get(r.chunk.document_id)
        if chunks is None:
            if len(docs) == top_k:
                continue
            chunks = docs[r.chunk.document_id] = []
        if len(chunks) < per_document:
            chunks.append(r)
    return [r for chunks in docs.values() for r in chunks]
