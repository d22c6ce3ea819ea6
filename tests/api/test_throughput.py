"""The throughput layer inside a running Metis: micro-batched query embeddings, the full-text
time budget, and the LLM fallback chain as a user sees it in answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson
import pytest

from metis_rag.app import create_app
from metis_rag.config import (
    BatchingSettings,
    EmbedSettings,
    LLMFallback,
    LLMSettings,
    RateLimitSettings,
    RetrievalSettings,
    Settings,
)
from metis_rag.devtools.fake_llm import FakeLLMServer
from metis_rag.ingest.pipeline import Upload
from metis_rag.rag.chat import ChatService
from metis_rag.rag.retriever import Retriever
from metis_rag.schemas import ChatQuery
from metis_rag.services import open_services
from tests.files import FACTS, MAKERS
from tests.lifespan import lifespan
from tests.uploads import ingest

pytestmark = pytest.mark.slow


async def test_concurrent_queries_share_one_model_call(
    make_settings: Callable[..., Settings],
) -> None:
    # Batches of 16 texts a run: the local model then gains from gathering questions.
    settings = make_settings(batching=BatchingSettings(enabled=True, max_wait_ms=200),
                             embed=EmbedSettings(local_batch_size=16))
    async with open_services(settings) as services:
        batcher = services.query_batcher
        assert batcher is not None
        questions = [f"question number {i} about backups" for i in range(16)]
        rows = await asyncio.gather(*(services.embedder.embed([q]) for q in questions))
        assert batcher.stats.batches == 1 and batcher.stats.largest_batch == 16
        # Each caller got its own vector: that of its text. Not bit-equal to embedding it
        # alone: the int8 model quantizes activations with one scale per model call.
        for i in (0, 5, 15):
            alone = (await batcher.inner.embed([questions[i]]))[0]
            assert float(rows[i][0] @ alone) > 0.98
            assert all(float(rows[i][0] @ alone) > float(rows[j][0] @ alone)
                       for j in range(16) if j != i)


async def test_batching_is_on_by_default_and_can_be_turned_off(
    make_settings: Callable[..., Settings],
) -> None:
    batched = make_settings(embed=EmbedSettings(local_batch_size=16))
    async with open_services(batched) as s:
        assert s.query_batcher is not None
        rows = await asyncio.gather(*(s.embedder.embed([f"query {i}"]) for i in range(8)))
        assert all(r.shape == (1, 384) for r in rows)
        assert s.query_batcher.stats.largest_batch > 1  # concurrent questions shared a model call
    async with open_services(make_settings(batching=BatchingSettings(enabled=False))) as s:
        assert s.query_batcher is None
        assert (await s.embedder.embed(["hello"])).shape == (1, 384)


async def test_the_local_model_at_one_text_per_run_is_not_batched(
    make_settings: Callable[..., Settings],
) -> None:
    # A gathered batch would be the same single-text runs, waited for together
    # (bench_batching.py: open-loop p95 24 ms unbatched against 53 ms batched).
    async with open_services(make_settings()) as s:
        assert s.settings.batching.enabled and s.settings.embed.local_batch_size == 1
        assert s.query_batcher is None
        rows = await asyncio.gather(*(s.embedder.embed([f"query {i}"]) for i in range(8)))
        assert all(r.shape == (1, 384) for r in rows)


async def test_batching_is_on_for_a_remote_embedding_backend(
    make_settings: Callable[..., Settings],
) -> None:
    with FakeLLMServer() as fake:
        embed = EmbedSettings(backend="openai", url=fake.url, model="fake", batch_size=64)
        async with open_services(make_settings(embed=embed)) as s:
            assert s.query_batcher is not None
            rows = await asyncio.gather(*(s.embedder.embed([f"query {i}"]) for i in range(20)))
            assert all(r.shape == (1, 384) for r in rows)
            # Fewer HTTP calls than questions: concurrent ones went out together.
            assert fake.stats()["requests"]["/v1/embeddings"] < 20


class StalledFullText:
    """A full-text search that never answers (a locked or overloaded database)."""

    def __init__(self) -> None:
        self.called = asyncio.Event()

    async def __call__(self, collection_id: int, query: str, n: int, allowed: Any) -> list[int]:
        self.called.set()
        await asyncio.Event().wait()
        return []


async def test_a_stalled_full_text_leg_degrades_to_dense_results_with_a_warning(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(retrieval=RetrievalSettings(fulltext_budget_ms=50))
    async with open_services(settings) as s:
        uploads = [Upload(name, make()) for name, make in MAKERS.items()]
        await s.ingestor.ingest(uploads, "handbook")
        stalled = StalledFullText()
        retriever = Retriever(s.sessions, s.vectors, settings.retrieval, fulltext=stalled)
        chat = ChatService(s.sessions, s.embedder, retriever, None, None, s.lookup,
                           s.conversations, retrieval=settings.retrieval,
                           generation=settings.llm, cache=settings.cache)
        filename, question, fact, *_ = FACTS[2]
        answer = await asyncio.wait_for(
            chat.answer(ChatQuery(message=question, collection="handbook")), timeout=30
        )
        assert stalled.called.is_set()
        assert answer.warnings and answer.warnings[0].startswith("fulltext_timeout:")
        assert answer.citations[0].filename == filename and fact in answer.answer
        # With the real full-text search the same question is answered without a warning.
        answer = await s.chat.answer(ChatQuery(message=question, collection="handbook"))
        assert answer.warnings == [] and answer.citations[0].filename == filename


@pytest.fixture
async def two_providers(
    make_settings: Callable[..., Settings],
) -> AsyncIterator[tuple[httpx.AsyncClient, FakeLLMServer, FakeLLMServer]]:
    with FakeLLMServer() as primary, FakeLLMServer() as backup:
        llm = LLMSettings(
            provider="ollama", url=primary.url, model="main", timeout_s=5,
            fallbacks=[LLMFallback(provider="openai", url=backup.url, model="backup")],
        )
        app = create_app(make_settings(llm=llm, ratelimit=RateLimitSettings(max_retries=0)))
        async with lifespan(app) as m:
            transport = httpx.ASGITransport(app=m.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://m") as c:
                files = [("files", (name, make())) for name, make in MAKERS.items()]
                await ingest(c, [f for _, f in files], collection="handbook")
                yield c, primary, backup


async def test_the_answer_names_the_provider_that_served_it(
    two_providers: tuple[httpx.AsyncClient, FakeLLMServer, FakeLLMServer],
) -> None:
    client, primary, backup = two_providers
    ask = {"message": FACTS[4][1], "collection": "handbook", "cache": False}
    body = (await client.post("/api/chat/query", json=ask)).json()
    assert body["mode"] == "llm" and body["model"] == "ollama:main" and body["warnings"] == []

    primary.configure(fail_rate=1.0, fail_status=503)
    body = (await client.post("/api/chat/query", json=ask)).json()
    assert body["mode"] == "llm" and body["model"] == "openai:backup"
    assert body["warnings"] == [
        "provider_fallback: ollama:main: provider_error 503; served by openai:backup"
    ]
    assert "[1]" in body["answer"]

    done: dict[str, Any] = {}
    async with client.stream("POST", "/api/chat/query", json=ask | {"stream": True}) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: ") and '"conversation_id"' in line:
                done = orjson.loads(line[6:])
    assert done["model"] == "openai:backup" and done["mode"] == "llm"
    assert backup.stats()["requests_total"] == 2


async def test_one_question_over_several_collections_fuses_their_results(
    client: httpx.AsyncClient,
) -> None:
    makers = list(MAKERS.items())
    for collection, part in (("people", makers[:3]), ("places", makers[3:])):
        files = [("files", (name, make())) for name, make in part]
        await ingest(client, [f for _, f in files], collection=collection)
    both = ["people", "places", "people"]  # a repeat is searched once
    for filename, question, fact, *_ in FACTS:
        r = await client.post("/api/chat/query", json={"message": question, "collections": both})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["citations"][0]["filename"] == filename and fact in body["answer"]
        assert {c["filename"] for c in body["citations"]} & {n for n, _ in makers[:3]}
        assert {c["filename"] for c in body["citations"]} & {n for n, _ in makers[3:]}
        where = {name: coll for coll, part in (("people", makers[:3]), ("places", makers[3:]))
                 for name, _ in part}
        assert all(c["collection"] == where[c["filename"]] for c in body["citations"])
    again = await client.post("/api/chat/query",
                              json={"message": FACTS[0][1], "collections": both})
    assert again.json()["cache"]["level"] == "exact"
    follow = await client.post("/api/chat/query", json={
        "message": "And when do backups run?", "collections": ["people", "places"],
        "conversation_id": again.json()["conversation_id"]})
    assert follow.status_code == 200
    assert follow.json()["conversation_id"] == again.json()["conversation_id"]
    assert "ops.md" in {c["filename"] for c in follow.json()["citations"]}
    bad = await client.post("/api/chat/query",
                            json={"message": "x", "collection": "people", "collections": both})
    assert bad.status_code == 422 and "not both" in bad.json()["message"]
    missing = await client.post("/api/chat/query",
                                json={"message": "x", "collections": ["people", "nope"]})
    assert missing.status_code == 404 and missing.json()["code"] == "collection_not_found"


async def test_a_server_process_freezes_its_startup_objects_out_of_the_collector(
    make_settings,  # type: ignore[no-untyped-def]
) -> None:
    import gc

    from metis_rag.app import create_app

    assert gc.get_freeze_count() == 0
    async with lifespan(create_app(make_settings())):
        assert gc.get_freeze_count() == 0  # an app in a test process leaves the collector be
    try:
        async with lifespan(create_app(make_settings(), freeze_gc=True)):
            assert gc.get_freeze_count() > 10_000  # the model, indexes, settings...
    finally:
        gc.unfreeze()
