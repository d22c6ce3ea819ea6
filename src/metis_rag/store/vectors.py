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


@runtime_checkable
class ChunkColumnVectors(Protocol):
    """A store whose vectors are a column of `chunks` itself (PostgreSQL + pgvector).

    `chunk_table` is `chunks` with that column, named `vector_column`: the ingestor writes each
    vector in its chunk's own INSERT, so the two share one transaction, and deleting a chunk
    deletes its vector.
    """

    chunk_table: Table
    vector_column: str
