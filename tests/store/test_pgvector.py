"""What is particular to PostgreSQL + pgvector: vectors live and die with their chunk rows, the
HNSW index serves searches, and the store is chosen, added or refused at start-up."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from metis_rag.config import Settings
from metis_rag.devtools.pgvector_server import SYSTEM_URL, PgServer, probe_server
from metis_rag.errors import ServiceUnavailable
from metis_rag.ingest.pipeline import Upload
from metis_rag.services import open_services
from metis_rag.store import repo
from metis_rag.store.db import migrate
from metis_rag.store.pgvector import COLUMN, INDEX, NEAREST_SQL, PgVectorStore
from tests.files import FACTS, MAKERS
from tests.vectors import DIM, exact, make_chunks, unit


@pytest.fixture
async def pg_url(pg_server: PgServer) -> AsyncIterator[str]:
    name = await pg_server.create_database()
    yield pg_server.url(name)
    await pg_server.drop_database(name)


@pytest.fixture
async def engine(pg_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(pg_url)
    await migrate(engine, vector_dim=DIM)
    yield engine
    await engine.dispose()


async def scalar(engine: AsyncEngine, sql: str) -> object:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql))).scalar()


async def test_a_vector_lives_and_dies_with_its_chunk(engine: AsyncEngine) -> None:
    store = PgVectorStore(engine, DIM)
    await store.start()
    v = unit(20)
    await store.add(1, list(range(1, 11)), v[:10])  # no chunk rows: nothing to attach them to
    assert await store.ids(1) == set()
    await make_chunks(engine, 1, range(1, 21))
    await store.add(1, list(range(1, 21)), v)
    await store.add(2, [3], v[:1])  # chunk 3 belongs to collection 1: not moved, not duplicated
    assert await store.count(1) == 20 and await store.count(2) == 0
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM chunks WHERE id IN (4, 5)"))
    assert await store.ids(1) == set(range(1, 21)) - {4, 5}
    assert 4 not in {h.id for h in await store.search(1, v[3], 5)}


async def test_searches_use_the_hnsw_index(engine: AsyncEngine) -> None:
    store = PgVectorStore(engine, DIM)
    await store.start()
    await make_chunks(engine, 1, range(1, 3001))
    await store.add(1, list(range(1, 3001)), unit(3000))
    async with engine.begin() as conn:
        await conn.execute(text("ANALYZE chunks"))
        plan = "\n".join(r[0] for r in await conn.execute(
            text("EXPLAIN " + NEAREST_SQL.text), {"q": unit(1)[0].tolist(), "c": 1, "k": 40}))
    assert f"Index Scan using {INDEX}" in plan
    definition = await scalar(engine, f"SELECT indexdef FROM pg_indexes WHERE indexname = '{INDEX}'")
    assert "hnsw" in str(definition) and "vector_cosine_ops" in str(definition)


async def test_a_dimension_change_is_refused(engine: AsyncEngine) -> None:
    store = PgVectorStore(engine, DIM * 2)
    with pytest.raises(ServiceUnavailable) as err:
        await store.start()
    assert err.value.code == "vector_dimension_mismatch"


async def ingest_and_ask(settings: Settings) -> tuple[str, list[str]]:
    """Ingest the test documents, then ask every fact; the vector store and the top files."""
    async with open_services(settings) as services:
        await services.ingestor.ingest([Upload(n, make()) for n, make in MAKERS.items()], "hb")
        return await ask(settings)


async def ask(settings: Settings) -> tuple[str, list[str]]:
    async with open_services(settings) as services:
        async with services.sessions() as session:
            collection = await repo.get_collection(session, "default", "hb")
        top = []
        for _, question, *_ in FACTS:
            vector = (await services.embedder.embed([question]))[0]
            hits, _ = await services.retriever.retrieve(collection.id, question, vector, top_k=1)
            top.append(hits[0].chunk.filename)
        return type(services.vectors).__name__, top


async def test_pgvector_installed_after_the_first_migration(
    make_settings: Callable[..., Settings], pg_url: str
) -> None:
    # As if the server had no pgvector when migration 0003 ran: vectors went to hnswlib.
    first = make_settings(database_url=pg_url, vector_store="hnsw")
    engine = create_async_engine(pg_url)
    await migrate(engine)
    async with engine.begin() as conn:
        await conn.execute(text(f"DROP INDEX {INDEX}"))
        await conn.execute(text(f"ALTER TABLE chunks DROP COLUMN {COLUMN}"))
    store, top = await ingest_and_ask(first)
    assert store == "HnswVectorStore" and top == [f[0] for f in FACTS]
    # auto keeps what the database has; asking for pgvector adds the column, and start-up
    # reconciliation fills it from the stored embeddings (nothing is embedded again).
    assert (await ask(make_settings(database_url=pg_url)))[0] == "HnswVectorStore"
    store, top = await ask(make_settings(database_url=pg_url, vector_store="pgvector"))
    assert store == "PgVectorStore" and top == [f[0] for f in FACTS]
    assert await scalar(engine, f"SELECT count(*) FROM chunks WHERE {COLUMN} IS NULL") == 0
    assert await scalar(engine, "SELECT count(*) FROM chunks") > 5
    await engine.dispose()


async def test_pgvector_needs_postgresql(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(ServiceUnavailable) as err:
        async with open_services(make_settings(vector_store="pgvector")):
            pass
    assert err.value.code == "pgvector_unavailable" and "PostgreSQL" in err.value.message


@pytest.fixture
async def system_pg_without_pgvector() -> AsyncIterator[str]:
    server = probe_server(SYSTEM_URL)
    if server is None or server.has_pgvector:
        pytest.skip("needs a local PostgreSQL without pgvector")
    name = await server.create_database()
    yield server.url(name)
    await server.drop_database(name)


async def test_auto_keeps_vectors_in_hnsw_without_pgvector(
    make_settings: Callable[..., Settings], system_pg_without_pgvector: str
) -> None:
    settings = make_settings(database_url=system_pg_without_pgvector)
    store, top = await ingest_and_ask(settings)
    assert store == "HnswVectorStore" and top == [f[0] for f in FACTS]
    with pytest.raises(ServiceUnavailable) as err:
        async with open_services(make_settings(database_url=system_pg_without_pgvector,
                                               vector_store="pgvector")):
            pass
    assert err.value.code == "pgvector_unavailable"



async def test_a_small_collection_keeps_its_recall_on_the_shared_index(engine: AsyncEngine) -> None:
    # One HNSW index holds every collection: a search in one that has 20% of the chunks sees
    # about 20% of ef's candidates unless ef grows by 1/share, which the store does.
    store = PgVectorStore(engine, DIM, ef_search=10)
    await store.start()
    v = unit(3000, seed=11)
    small = [i for i in range(1, 3001) if i % 5 == 0]
    large = [i for i in range(1, 3001) if i % 5]
    await make_chunks(engine, 1, small)
    await make_chunks(engine, 2, large)
    await store.add(1, small, v[[i - 1 for i in small]])
    await store.add(2, large, v[[i - 1 for i in large]])
    async with engine.begin() as conn:
        await conn.execute(text("ANALYZE chunks"))
    sub = v[[i - 1 for i in small]]
    found = 0
    queries = unit(50, seed=12)
    for q in queries:
        got = {h.id for h in await store.search(1, q, 10)}
        found += len(got & set(exact(sub, small, q, 10)))
    assert found / (10 * len(queries)) >= 0.95
