"""Full-text search on both databases: BM25 over SQLite FTS5, ts_rank_cd over PostgreSQL's GIN
index. The same questions must find the same files, and words common to most chunks are skipped."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from sqlalchemy import text

from metis_rag.config import Settings
from metis_rag.ingest.pipeline import Upload
from metis_rag.services import Services, open_services
from metis_rag.store import repo
from metis_rag.store.fulltext import fulltext_search
from tests.files import FACTS, MAKERS

pytestmark = [pytest.mark.slow, pytest.mark.databases]

ANIMALS = ["otter", "heron", "lynx", "marmot", "badger", "walrus"]


@pytest.fixture
async def services(make_settings: Callable[..., Settings]) -> AsyncIterator[Services]:
    async with open_services(make_settings()) as services:
        yield services


async def search(services: Services, collection: str, query: str, limit: int = 10) -> list[str]:
    async with services.sessions() as session:
        coll = await repo.get_collection(session, "default", collection)
        hits = await fulltext_search(session, coll.id, query, limit)
        rows = await repo.chunks_by_ids(session, [h[0] for h in hits])
    assert [h[1] for h in hits] == sorted((h[1] for h in hits), reverse=True)
    return [rows[h[0]].filename for h in hits]


async def test_questions_find_their_file(services: Services) -> None:
    await services.ingestor.ingest([Upload(n, make()) for n, make in MAKERS.items()], "hb")
    for filename, question, *_ in FACTS:
        assert (await search(services, "hb", question))[0] == filename, question
    assert await search(services, "hb", "the and of it") == []  # stop words only
    assert await search(services, "hb", "xylophone") == []


async def test_collections_do_not_mix(services: Services) -> None:
    await services.ingestor.ingest([Upload("a.txt", b"The quokka smiles at visitors.")], "one")
    await services.ingestor.ingest([Upload("b.txt", b"A quokka lives on Rottnest.")], "two")
    assert await search(services, "one", "quokka") == ["a.txt"]
    assert await search(services, "two", "quokka") == ["b.txt"]


async def test_more_occurrences_rank_higher(services: Services) -> None:
    await services.ingestor.ingest([
        Upload("once.txt", b"Our team once saw a pangolin near the river bank at dusk."),
        Upload("often.txt", b"Pangolin facts: the pangolin eats ants; a pangolin curls up."),
    ], "zoo")
    assert await search(services, "zoo", "pangolin") == ["often.txt", "once.txt"]


async def test_words_in_most_chunks_are_skipped(services: Services) -> None:
    # "zebra" is in every chunk; "quokka" in one. Matching zebra would rank every chunk; the
    # search keeps the selective word only (SQLite: live vocabulary; PostgreSQL: ANALYZE stats).
    docs = [
        Upload(f"d{i:02d}.txt", f"Zebra notes {i}: a {ANIMALS[i % 6]} and a zebra grazed.".encode())
        for i in range(40)
    ]
    docs.append(Upload("rare.txt", b"Zebra notes: one quokka among the zebra herd."))
    await services.ingestor.ingest(docs, "zoo")
    if services.engine.dialect.name == "postgresql":
        async with services.engine.begin() as conn:
            await conn.execute(text("ANALYZE chunks"))
    assert await search(services, "zoo", "zebra quokka", limit=50) == ["rare.txt"]
    assert len(await search(services, "zoo", "zebra", limit=50)) == 41  # alone, it still counts
