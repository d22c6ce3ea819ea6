"""The `VectorStore` contract, run on every backend: the embedded HNSW index and pgvector.

pgvector keeps a vector in its chunk's row, so its backend creates the chunk rows first
(`Backend.add`); everything else goes through the store's own methods.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from metis_rag.devtools.pgvector_server import PgServer
from metis_rag.errors import ServiceUnavailable
from metis_rag.store.db import migrate
from metis_rag.store.hnsw import HnswVectorStore
from metis_rag.store.index import DatabaseOnlyVectors
from metis_rag.store.pgvector import PgVectorStore
from metis_rag.store.vectors import VectorStore
from tests.vectors import DIM, exact, make_chunks, unit

EXACT_SCAN_MAX = 64  # small, so that both filtered-search paths are exercised


@dataclass
class Backend:
    name: str
    store: VectorStore
    reopen: Callable[[], Awaitable[VectorStore]]  # a new store on the same storage
    make_chunks: Callable[[int, Sequence[int]], Awaitable[None]]
    # What the backend's own background work would do by now: for PostgreSQL, autovacuum's
    # ANALYZE, without which the planner would not use the HNSW index on a fresh table.
    settle: Callable[[], Awaitable[None]]

    async def add(self, collection_id: int, ids: Sequence[int], vectors: np.ndarray) -> None:
        await self.make_chunks(collection_id, ids)
        await self.store.add(collection_id, ids, vectors)

    async def search(self, collection_id: int, q: np.ndarray, k: int, **kw: object) -> list[int]:
        return [h.id for h in await self.store.search(collection_id, q, k, **kw)]  # type: ignore[arg-type]


@pytest.fixture(params=["hnsw", "pgvector"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "hnsw":
        def make() -> HnswVectorStore:
            return HnswVectorStore(tmp_path / "vectors", DIM, exact_scan_max=EXACT_SCAN_MAX)

        async def no_rows(collection_id: int, ids: Sequence[int]) -> None:
            return None

        stores = [make()]
        await stores[0].start()

        async def reopen_hnsw() -> VectorStore:
            await stores[-1].close()
            stores.append(make())
            await stores[-1].start()
            return stores[-1]

        async def nothing() -> None:
            return None

        yield Backend("hnsw", stores[0], reopen_hnsw, no_rows, nothing)
        await stores[-1].close()
        return
    server: PgServer = request.getfixturevalue("pg_server")
    name = await server.create_database()
    engine = create_async_engine(server.url(name))
    try:
        await migrate(engine, vector_dim=DIM)
        store = PgVectorStore(engine, DIM, exact_scan_max=EXACT_SCAN_MAX)
        await store.start()

        async def reopen_pg() -> VectorStore:
            again = PgVectorStore(engine, DIM, exact_scan_max=EXACT_SCAN_MAX)
            await again.start()
            return again

        async def rows(collection_id: int, ids: Sequence[int]) -> None:
            await make_chunks(engine, collection_id, ids)

        async def analyze() -> None:
            async with engine.begin() as conn:
                await conn.execute(text("ANALYZE chunks"))

        yield Backend("pgvector", store, reopen_pg, rows, analyze)
        await store.close()
    finally:
        await engine.dispose()
        await server.drop_database(name)


async def test_search_returns_nearest_first_with_cosine_scores(backend: Backend) -> None:
    v = unit(200)
    ids = list(range(1, 201))
    await backend.add(1, ids, v)
    hits = await backend.store.search(1, v[17], 5)
    assert [h.id for h in hits] == exact(v, ids, v[17], 5)
    assert hits[0].id == 18 and hits[0].score == pytest.approx(1.0, abs=1e-5)
    for h in hits:
        assert h.score == pytest.approx(float(v[h.id - 1] @ v[17]), abs=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert await backend.store.count(1) == 200
    assert await backend.store.ids(1) == set(ids)


async def test_adding_an_id_again_replaces_its_vector(backend: Backend) -> None:
    v = unit(50)
    ids = list(range(1, 51))
    await backend.add(1, ids, v)
    await backend.add(1, [7], -v[6:7])
    assert (await backend.search(1, v[6], 1)) != [7]
    assert await backend.search(1, -v[6], 1) == [7]
    # Within one call the last vector given for an id wins.
    await backend.add(1, [9, 9], np.vstack([v[0], v[1]]))
    assert (await backend.store.search(1, v[1], 1))[0].score == pytest.approx(1.0, abs=1e-5)
    assert await backend.store.count(1) == 50


async def test_delete_removes_vectors_from_search_ids_and_count(backend: Backend) -> None:
    v = unit(100)
    ids = list(range(1, 101))
    await backend.add(1, ids, v)
    await backend.store.delete(1, [5, 6, 7, 999_999])  # an unknown id is ignored
    assert 5 not in await backend.search(1, v[4], 10)
    assert await backend.store.count(1) == 97
    assert await backend.store.ids(1) == set(ids) - {5, 6, 7}
    await backend.add(1, [5], v[4:5])
    assert (await backend.search(1, v[4], 1)) == [5]


async def test_drop_collection_empties_only_that_collection(backend: Backend) -> None:
    v = unit(60)
    await backend.add(1, list(range(1, 61)), v)
    await backend.add(2, list(range(1001, 1061)), v)
    await backend.store.drop_collection(1)
    assert await backend.store.count(1) == 0 and await backend.store.ids(1) == set()
    assert await backend.search(1, v[0], 5) == []
    assert await backend.search(2, v[0], 1) == [1001]
    await backend.add(1, [1], v[:1])
    assert await backend.search(1, v[0], 5) == [1]


async def test_collections_never_see_each_other(backend: Backend) -> None:
    v = unit(100)
    await backend.add(1, list(range(1, 101)), v)
    await backend.add(2, list(range(1001, 1101)), v)  # the very same vectors, other ids
    for q in v[:10]:
        assert all(i <= 100 for i in await backend.search(1, q, 20))
        assert all(i > 1000 for i in await backend.search(2, q, 20))
    assert await backend.search(3, v[0], 5) == []


async def test_small_allowed_sets_are_searched_exactly(backend: Backend) -> None:
    v = unit(500, seed=1)
    ids = list(range(1, 501))
    await backend.add(1, ids, v)
    rng = np.random.default_rng(2)
    allowed = {int(i) for i in rng.choice(ids, 40, replace=False)}
    q = unit(1, seed=3)[0]
    order = sorted(allowed)
    expected = exact(v[[i - 1 for i in order]], order, q, 10)
    assert await backend.search(1, q, 10, allowed_ids=allowed) == expected
    assert await backend.search(1, q, 10, allowed_ids=set()) == []
    assert await backend.search(1, q, 10, allowed_ids={999_999}) == []  # not in the store


async def test_large_allowed_sets_keep_recall(backend: Backend) -> None:
    v = unit(2000, seed=4)
    ids = list(range(1, 2001))
    await backend.add(1, ids, v)
    await backend.settle()
    allowed = set(ids[::3])  # 667 ids, well over the exact-scan limit
    order = sorted(allowed)
    sub = v[[i - 1 for i in order]]
    found = truth = 0
    for q in unit(20, seed=5):
        got = await backend.search(1, q, 10, allowed_ids=allowed)
        assert len(got) == 10 and set(got) <= allowed
        found += len(set(got) & set(exact(sub, order, q, 10)))
        truth += 10
    assert found / truth >= 0.9
    # Allowed ids far from the query: the store must still fill k from them.
    q = v[0]
    far = set(exact(v, ids, -q, 100))
    got = await backend.search(1, q, 10, allowed_ids=far)
    order = sorted(far)
    assert set(got) <= far and len(got) == 10
    assert len(set(got) & set(exact(v[[i - 1 for i in order]], order, q, 10))) >= 9


async def test_recall_against_exact_search(backend: Backend) -> None:
    v = unit(3000, seed=6)
    ids = list(range(1, 3001))
    await backend.add(1, ids, v)
    await backend.settle()
    hits = 0
    queries = unit(50, seed=7)
    for q in queries:
        hits += len(set(await backend.search(1, q, 10)) & set(exact(v, ids, q, 10)))
    assert hits / (10 * len(queries)) >= 0.95


async def test_edge_cases(backend: Backend) -> None:
    q = unit(1)[0]
    assert await backend.search(1, q, 10) == []
    assert await backend.store.count(1) == 0
    await backend.add(1, [1, 2, 3], unit(3))
    assert len(await backend.search(1, q, 10)) == 3
    assert await backend.search(1, q, 0) == []
    await backend.store.add(1, [], np.zeros((0, DIM), np.float32))
    await backend.store.delete(1, [])
    with pytest.raises(ValueError):
        await backend.store.add(1, [4], unit(1, dim=DIM + 1))
    with pytest.raises(ValueError):
        await backend.store.search(1, unit(1, dim=DIM + 1)[0], 5)
    with pytest.raises(ValueError):
        await backend.store.add(1, [-1], unit(1))


async def test_flushed_state_survives_a_reopen(backend: Backend) -> None:
    v = unit(300, seed=8)
    ids = list(range(1, 301))
    await backend.add(1, ids, v)
    await backend.add(2, [5001], v[:1])
    await backend.store.delete(1, [10, 11])
    await backend.store.flush()
    before = [await backend.search(1, q, 5) for q in v[:20]]
    store = await backend.reopen()
    assert await store.ids(1) == set(ids) - {10, 11}
    assert await store.count(2) == 1
    assert [[h.id for h in await store.search(1, q, 5)] for q in v[:20]] == before


# A Celery worker's store writes chunks and embeddings to the database only (their transaction
# carries them) and never searches: the same interface, with the write-only part of the contract.
VECTOR_STORES = [HnswVectorStore, PgVectorStore, DatabaseOnlyVectors]


@pytest.mark.parametrize("cls", VECTOR_STORES, ids=lambda c: c.__name__)
def test_every_backend_implements_the_whole_interface(cls: type) -> None:
    for name, member in inspect.getmembers(VectorStore, inspect.iscoroutinefunction):
        if name.startswith("_"):
            continue
        ours = getattr(cls, name, None)
        assert ours is not None and inspect.iscoroutinefunction(ours), f"{cls.__name__}.{name}"
        assert list(inspect.signature(ours).parameters) == list(
            inspect.signature(member).parameters), f"{cls.__name__}.{name} signature"


async def test_database_only_vectors_take_writes_hold_nothing_and_refuse_searches() -> None:
    store = DatabaseOnlyVectors()
    await store.start()
    await store.add(1, [1, 2], unit(2))
    await store.delete(1, [1])
    await store.drop_collection(2)
    await store.flush()
    assert await store.ids(1) == set() and await store.count(1) == 0
    with pytest.raises(ServiceUnavailable) as refused:
        await store.search(1, unit(1)[0], 3)
    assert refused.value.code == "worker_no_search"
    await store.close()
