"""Test vectors and the chunk rows that pgvector needs before it stores a vector."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

DIM = 32


def unit(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact(vectors: np.ndarray, ids: Sequence[int], query: np.ndarray, k: int) -> list[int]:
    scores = vectors @ query
    return [ids[i] for i in np.argsort(-scores, kind="stable")[:k]]


async def make_chunks(engine: AsyncEngine, collection_id: int, ids: Sequence[int]) -> None:
    """Chunk rows (and their collection and document) for `ids`, as ingestion would leave them."""
    async with engine.begin() as conn:
        await conn.execute(text(
            "INSERT INTO collections (id, name, version, created_at, updated_at) "
            "VALUES (:c, :name, 1, now(), now()) ON CONFLICT DO NOTHING"),
            {"c": collection_id, "name": f"c{collection_id}"})
        await conn.execute(text(
            "INSERT INTO documents (id, collection_id, filename, folder, content_hash, mime, "
            "size_bytes, tags, status, chunk_count, created_at, updated_at) VALUES (:c, :c, 'f', '', "
            ":h, 'text/plain', 1, '[]', 'ready', 0, now(), now()) ON CONFLICT DO NOTHING"),
            {"c": collection_id, "h": f"h{collection_id}"})
        await conn.execute(text(
            "INSERT INTO chunks (id, document_id, collection_id, position, text, token_count, "
            "embedding) SELECT i, CAST(:c AS bigint), CAST(:c AS bigint), 0, 'x', 1, '\\x00' "
            "FROM unnest(CAST(:ids AS bigint[])) i "
            "ON CONFLICT (id) DO NOTHING"), {"c": collection_id, "ids": [int(i) for i in ids]})
