"""Citations as a user reads them: ordered by the score shown, or grouped by document."""

from __future__ import annotations

import httpx
import pytest

from tests.files import FACTS, MAKERS
from tests.uploads import ingest

pytestmark = pytest.mark.slow


async def _seed(client: httpx.AsyncClient) -> None:
    body = await ingest(client, {name: make() for name, make in MAKERS.items()},
                        collection="handbook")
    assert {r["status"] for r in body["results"]} == {"created"}


async def _ask(client: httpx.AsyncClient, **extra: object) -> list[dict]:
    r = await client.post("/api/chat/query", json={
        "message": FACTS[0][1], "collection": "handbook", "cache": False, **extra})
    assert r.status_code == 200, r.text
    return r.json()["citations"]


@pytest.mark.databases
async def test_citation_numbers_follow_the_scores_shown(client: httpx.AsyncClient) -> None:
    await _seed(client)
    citations = await _ask(client, top_k=8)
    assert [c["index"] for c in citations] == list(range(1, len(citations) + 1))
    scores = [c["score"] for c in citations]
    assert scores == sorted(scores, reverse=True)
    assert all(-1 <= c["similarity"] <= 1 for c in citations)


@pytest.mark.databases
async def test_group_by_document_gives_distinct_documents_with_their_chunks_together(
    client: httpx.AsyncClient,
) -> None:
    await _seed(client)
    per_chunk = await _ask(client, top_k=3)
    citations = await _ask(client, top_k=3, group_by="document")
    docs = list(dict.fromkeys(c["document_id"] for c in citations))
    assert len(docs) == min(3, len(MAKERS))
    assert len(docs) >= len({c["document_id"] for c in per_chunk})
    # Each document's chunks are together, best first; documents come by their best chunk.
    runs = [c["document_id"] for c in citations]
    assert runs == sorted(runs, key=docs.index)
    firsts = [next(c["score"] for c in citations if c["document_id"] == d) for d in docs]
    assert firsts == sorted(firsts, reverse=True)
    for d in docs:
        mine = [c["score"] for c in citations if c["document_id"] == d]
        assert mine == sorted(mine, reverse=True)
    assert citations[0]["chunk_id"] == per_chunk[0]["chunk_id"]


@pytest.mark.databases
async def test_an_unknown_grouping_is_refused(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/chat/query", json={"message": "hi", "group_by": "page"})
    assert r.status_code == 422
    assert r.json()["code"] == "invalid_input"
