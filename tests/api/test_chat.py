"""Questions over HTTP: extractive and LLM answers, citations, streaming, conversations."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest

from metis_rag.app import create_app
from metis_rag.config import LLMSettings
from tests.files import FACTS, MAKERS
from tests.lifespan import lifespan
from tests.uploads import ingest

pytestmark = pytest.mark.slow


async def seed(client: httpx.AsyncClient, collection: str = "handbook") -> None:
    body = await ingest(client, {name: make() for name, make in MAKERS.items()},
                        collection=collection)
    assert {r["status"] for r in body["results"]} == {"created"}


@pytest.mark.databases
@pytest.mark.parametrize(("filename", "question", "fact", "page", "section"), FACTS)
async def test_extractive_answer_cites_the_right_file(
    client: httpx.AsyncClient, filename: str, question: str, fact: str, page: int | None,
    section: str | None,
) -> None:
    await seed(client)
    r = await client.post("/api/chat/query", json={"message": question, "collection": "handbook"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["mode"] == "extractive"
    assert fact in body["answer"]
    top = body["citations"][0]
    assert top["filename"] == filename
    assert top["page"] == page
    if section:
        assert top["section"] == section
    assert "[1]" in body["answer"]
    assert 0 < top["score"] <= 1
    assert fact in top["snippet"]
    t = body["timings_ms"]
    assert t["total"] >= t["embed"] + t["retrieve"] > 0


@pytest.mark.databases
async def test_stream_sends_tokens_then_citations_then_done(client: httpx.AsyncClient) -> None:
    await seed(client)
    events: list[tuple[str, object]] = []
    async with client.stream(
        "POST", "/api/chat/query",
        json={"message": FACTS[3][1], "collection": "handbook", "stream": True},
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        async for event in _sse(r.aiter_lines()):
            events.append(event)
    kinds = [k for k, _ in events]
    assert kinds[-2:] == ["citations", "done"] and set(kinds[:-2]) == {"token"}
    text = "".join(d["text"] for k, d in events if k == "token")  # type: ignore[index]
    done = events[-1][1]
    assert done["answer"] == text and "descaled" in text  # type: ignore[index]


@pytest.mark.databases
async def test_stream_errors_before_start_keep_their_status(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/chat/query",
                          json={"message": "x", "collection": "nope", "stream": True})
    assert r.status_code == 404 and r.json()["code"] == "collection_not_found"


@pytest.mark.databases
async def test_follow_up_uses_the_conversation(client: httpx.AsyncClient) -> None:
    await seed(client)
    first = (await client.post("/api/chat/query", json={
        "message": "How many vacation days do employees get?", "collection": "handbook"})).json()
    cid = first["conversation_id"]
    follow = (await client.post("/api/chat/query", json={
        "message": "And what about public holidays?", "collection": "handbook",
        "conversation_id": cid})).json()
    assert follow["conversation_id"] == cid
    assert follow["citations"][0]["filename"] == "policy.html"
    conv = (await client.get(f"/api/conversations/{cid}")).json()
    assert [m["role"] for m in conv["messages"]] == ["user", "assistant", "user", "assistant"]
    assert conv["messages"][1]["citations"][0]["filename"] == "policy.html"


@pytest.mark.databases
async def test_health_reports_components(client: httpx.AsyncClient, db_backend: str) -> None:
    body = (await client.get("/api/health")).json()
    assert body["status"] == "ok"
    assert body["components"]["database"]["status"] == "ok"
    assert body["components"]["database"]["detail"].startswith(db_backend)
    # PostgreSQL keeps the vectors itself (pgvector); SQLite has the embedded HNSW index.
    expected_store = "pgvector" if db_backend == "postgresql" else "hnsw"
    assert body["components"]["vector_store"]["detail"] == expected_store
    assert body["components"]["embedder"]["status"] == "ok"
    assert body["components"]["llm"]["status"] == "disabled"
    docs = await client.get("/openapi.json")
    assert "/api/chat/query" in docs.json()["paths"]


async def _sse(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, object]]:
    event = None
    async for line in lines:
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            yield event or "message", orjson.loads(line[6:])


@pytest.fixture(params=["ollama", "openai"])
async def llm_client(request, make_settings):  # type: ignore[no-untyped-def]
    from metis_rag.devtools.fake_llm import FakeLLMServer

    with FakeLLMServer() as server:
        llm = LLMSettings(provider=request.param, url=server.url, model="fake", timeout_s=2)
        app = create_app(make_settings(llm=llm))
        async with lifespan(app) as m:
            transport = httpx.ASGITransport(app=m.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://m") as c:
                yield c, server


async def test_llm_answer_cites_sources(llm_client) -> None:  # type: ignore[no-untyped-def]
    client, server = llm_client
    await seed(client)
    r = (await client.post("/api/chat/query",
                           json={"message": FACTS[4][1], "collection": "handbook"})).json()
    assert r["mode"] == "llm" and r["model"].endswith(":fake")
    assert "[1]" in r["answer"] and r["citations"]
    assert r["usage"]["completion_tokens"] > 0
    assert r["timings_ms"]["generate"] > 0

    events = []
    async with client.stream("POST", "/api/chat/query", json={
            "message": FACTS[4][1], "collection": "handbook", "stream": True,
            "cache": False}) as resp:
        async for ev in _sse(resp.aiter_lines()):
            events.append(ev)
    tokens = [d for k, d in events if k == "token"]
    assert len(tokens) > 1 and events[-1][0] == "done"


async def test_llm_failure_degrades_to_extractive(llm_client) -> None:  # type: ignore[no-untyped-def]
    client, server = llm_client
    await seed(client)
    server.configure(fail_rate=1.0, fail_status=500)
    r = await client.post("/api/chat/query", json={"message": FACTS[0][1], "collection": "handbook"})
    assert r.status_code == 200
    body = r.json()
    assert body["mode"] == "extractive" and "Regenerate" in body["answer"]
    assert body["warnings"] and "provider_error" in body["warnings"][0]
    server.configure(fail_rate=0.0, hang=True)
    r = await client.post("/api/chat/query", json={"message": FACTS[0][1], "collection": "handbook"})
    assert r.json()["mode"] == "extractive" and "provider_timeout" in r.json()["warnings"][0]
    r = await client.post("/api/chat/query", json={"message": "hi", "use_rag": False})
    assert r.status_code == 504 and r.json()["code"] == "provider_timeout"


@pytest.mark.databases
async def test_a_nul_in_the_models_answer_does_not_stop_the_conversation_log(
    db_backend: str, fake_llm_client  # type: ignore[no-untyped-def]
) -> None:
    """The model's answer is text from outside: one with a NUL is logged whole on SQLite and
    dropped alone on PostgreSQL (whose text cannot hold it). It used to fail the log's batch on
    PostgreSQL, retried forever: no conversation was written again."""
    client, server = fake_llm_client
    await seed(client)
    server.configure(answer="The valve\x00closes at noon [1].")
    first = (await client.post("/api/chat/query", json={
        "message": FACTS[0][1], "collection": "handbook", "cache": False})).json()
    assert first["answer"] == "The valve\x00closes at noon [1]."
    server.configure(answer="It opens at dawn [1].")
    # It reads the first turn back, which waits for the log (a stuck log: forever).
    r = await asyncio.wait_for(client.post("/api/chat/query", json={
        "message": FACTS[1][1], "collection": "handbook", "cache": False,
        "conversation_id": first["conversation_id"]}), 60)
    assert r.status_code == 200, r.text
    later = await client.get(f"/api/conversations/{first['conversation_id']}")
    assert later.status_code == 200, later.text
    kept = [(m["role"], m["content"]) for m in later.json()["messages"]]
    nul_answer = [("assistant", "The valve\x00closes at noon [1].")] if db_backend == "sqlite" else []
    assert kept == [("user", FACTS[0][1]), *nul_answer, ("user", FACTS[1][1]),
                    ("assistant", "It opens at dawn [1].")]
