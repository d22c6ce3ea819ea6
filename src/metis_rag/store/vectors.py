"""The `VectorStore` interface: dense chunk vectors, partitioned by collection id."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
from sqlalchemy import Table


@dataclass(frozen=True, slots=True)
class VectorHit:
    id: int
    score: float  # cosine similarity, higher is closer


class VectorStore(Protocol):
    """Approximate nearest-neighbour search over L2-normalised float32 vectors.

    Vectors are keyed by chunk id and grouped by collection id, so one collection never sees
    another's vectors. `allowed_ids`, when given, restricts a search to those chunk ids (tag and
    folder filters are resolved to ids by the database); the store must still return up to `k`
    hits from that set. `ids` lists what a collection holds, so that start-up can reconcile the
    store with the database after a crash. `flush` makes everything added so far durable.
    """

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def add(self, collection_id: int, ids: Sequence[int], vectors: np.ndarray) -> None: ...

    async def delete(self, collection_id: int, ids: Sequence[int]) -> None: ...

    async def drop_collection(self, collection_id: int) -> None: ...

    async def search(
        self,
        collection_id: int,
        query: np.ndarray,
        k: int,
        *,
        allowed_ids: Collection[int] | None = None,
    ) -> list[VectorHit]: ...

    async def ids(self, collection_id: int) -> set[int]: ...

    async def count(self, collection_id: int) -> int: ...

    async def flush(self) -> None: ...


def unique_batch(ids: Sequence[int], vectors: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate an `add` batch for any store: int64 labels and float32 rows of `dim`, one row per
    id, the last vector given for a repeated id winning as if the adds had been sequential."""
    labels = np.asarray(ids, dtype=np.int64).reshape(-1)
    if not len(labels):
        return labels, np.zeros((0, dim), dtype=np.float32)
    data = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(labels), -1)
    if data.shape[1] != dim:
        raise ValueError(f"expected vectors of dimension {dim}, got {data.shape[1]}")
    if labels.min() < 0:
        raise ValueError("chunk ids must be non-negative")
    labels, first = np.unique(labels[::-1], return_index=True)
    return labels, data[::-1][first]


@runtime_checkable
class ChunkColumnVectors(Protocol):
    """A store whose vectors are a column of `chunks` itself (PostgreSQL + pgvector).

    `chunk_table` is `chunks` with that column, named `vector_column`: the ingestor writes each
    vector in its chunk's own INSERT, so the two share one transaction, and deleting a chunk
    deletes its vector.
    """

    chunk_table: Table
    vector_column: str
