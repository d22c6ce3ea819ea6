"""Hybrid retrieval: dense (vector store) and full-text results fused by reciprocal rank fusion."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..config import RetrievalSettings
from ..store import repo
from ..store.vectors import VectorStore


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
    ) -> None:
        self._sessions = sessions
        self._vectors = vectors
        self._settings = settings

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
    ) -> list[Retrieved]:
        hybrid = self._settings.hybrid if hybrid is None else hybrid
        n = max(self._settings.candidates, top_k)
        allowed: set[int] | None = None
        if tags or folder is not None:
            async with self._sessions() as session:
                allowed = set(await repo.allowed_chunk_ids(session, collection_id, tags, folder))
            if not allowed:
                return []

        dense_task = self._vectors.search(collection_id, query_vector, n, allowed_ids=allowed)
        if hybrid:
            dense, lexical = await asyncio.gather(
                dense_task, self._fulltext(collection_id, query_text, n, allowed)
            )
            fused = rrf([[h.id for h in dense], lexical], self._settings.rrf_k)
        else:
            dense = await dense_task
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

    async def _fulltext(
        self, collection_id: int, query: str, n: int, allowed: set[int] | None
    ) -> list[int]:
        async with self._sessions() as session:
            hits = await repo.fulltext_search(session, collection_id, query, n * 4 if allowed else n)
        ids = [h[0] for h in hits]
        if allowed is not None:
            ids = [i for i in ids if i in allowed]
        return ids[:n]
