"""The throughput layer inside a running Metis: micro-batched query embeddings, the full-text
time budget, and the LLM fallback chain as a user sees it in answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson
import pytest
from asgi_lifespan import LifespanManager

from metis_rag.app import create_app
from metis_rag.config import (
    BatchingSettings,
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

pytestmark = pytest.mark.slow


async def test_concurrent_queries_share_one_model_call(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(batching=BatchingSettings(max_wait_ms=200))
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


async def test_batching_can_be_turned_off(make_settings: Callable[..., Settings]) -> None:
    async with open_services(make_settings(batching=BatchingSettings(enabled=False))) as s:
        assert s.query_batcher is None
        assert (await s.embedder.embed(["hello"])).shape == (1, 384)


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
        chat = ChatService(settings, s.sessions, s.embedder, retriever, None, None)
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
        async with LifespanManager(app, startup_timeout=120) as m:
            transport = httpx.ASGITransport(app=m.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://m") as c:
                files = [("files", (name, make())) for name, make in MAKERS.items()]
                r = await c.post("/api/documents", files=files, data={"collection": "handbook"})
                assert r.status_code == 201, r.text
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
