"""Agent mode over HTTP, on the real app and the real tool registry (build_registry)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import orjson
import pytest

from metis_rag.app import create_app
from metis_rag.config import Settings
from tests.agent.passages import PROTOCOLS, SERVICES
from tests.lifespan import lifespan
from tests.uploads import ingest

pytestmark = pytest.mark.slow
KEYS = {"key-a": {"tenant": "acme", "role": "writer"}, "key-b": {"tenant": "other",
                                                                 "role": "writer"}}


async def seed(client: httpx.AsyncClient) -> None:
    body = await ingest(client, {"services.txt": SERVICES.encode(),
                                 "protocols.txt": PROTOCOLS.encode()}, collection="net")
    assert {r["status"] for r in body["results"]} == {"created"}


async def _sse(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, object]]:
    event = None
    async for line in lines:
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            yield event or "message", orjson.loads(line[6:])


@pytest.mark.databases
async def test_agent_mode_answers_arithmetic_with_citations_and_an_audit(
    client: httpx.AsyncClient,
) -> None:
    await seed(client)
    r = await client.post("/api/chat/query", json={
        "message": "What is the sum of the port of ssh and the protocol number of tcp?",
        "collection": "net", "mode": "agent"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert "22 + 6 = 28" in body["answer"], body["answer"]
    assert {c["filename"] for c in body["citations"]} == {"services.txt", "protocols.txt"}
    agent = body["agent"]
    assert agent["analysis"] == "arithmetic" and agent["planner"] == "rules"
    assert [s["status"] for s in agent["steps"]] == ["ok"] * 5
    assert agent["scores"]["groundedness"] >= 0.6
    audit = (await client.get(f"/api/queries/{agent['query_id']}/audit")).json()
    kinds = [e["kind"] for e in audit["events"]]
    assert kinds[:2] == ["analysis", "plan"] and "synthesis" in kinds and "evaluation" in kinds
    calls = [e for e in audit["events"] if e["kind"] == "tool_call"]
    assert [c["name"] for c in calls] == ["rag_search", "rag_search", "calculator"]
    assert calls[2]["input"] == {"expression": "22 + 6"} and calls[2]["output"]["value"] == 28
    md = await client.get(f"/api/queries/{agent['query_id']}/audit", params={"format": "markdown"})
    assert md.headers["content-type"].startswith("text/markdown")
    assert "| tool_call |" in md.text and "22 + 6" in md.text
    page = await client.get(f"/api/queries/{agent['query_id']}/audit", params={"format": "html"})
    assert page.headers["content-type"].startswith("text/html") and "<table>" in page.text
    # The answer is in the conversation like any other.
    conv = (await client.get(f"/api/conversations/{body['conversation_id']}")).json()
    assert [m["role"] for m in conv["messages"]] == ["user", "assistant"]
    assert conv["messages"][1]["content"] == body["answer"]
    # A second time, the searches come from the tool cache.
    again = (await client.post("/api/chat/query", json={
        "message": "What is the sum of the port of ssh and the protocol number of tcp?",
        "collection": "net", "mode": "agent"})).json()
    audit = (await client.get(f"/api/queries/{again['agent']['query_id']}/audit")).json()
    assert [e["cache_level"] for e in audit["events"] if e["kind"] == "tool_call"] == \
        ["tool"] * 3


async def test_agent_mode_searches_every_collection_named(
    client: httpx.AsyncClient,
) -> None:
    await seed(client)
    await ingest(client, {"garden.md": b"Tomatoes need six hours of sun a day. Basil likes "
                          b"warm nights and moist soil."}, collection="garden")
    body = (await client.post("/api/chat/query", json={
        "message": "How many hours of sun do tomatoes need a day?",
        "collections": ["net", "garden"], "mode": "agent"})).json()
    assert "six hours of sun" in body["answer"], body
    cited = {(c["collection"], c["filename"]) for c in body["citations"]}
    assert ("garden", "garden.md") in cited, body["citations"]
    assert not any(w.startswith("agent_one_collection") for w in body["warnings"])
    # The first collection still answers what only it holds, in the same request shape.
    ports = (await client.post("/api/chat/query", json={
        "message": "Which has the higher port, imaps or pop3s?",
        "collections": ["net", "garden"], "mode": "agent"})).json()
    assert "pop3s has the highest port (995)" in ports["answer"]
    assert {c["collection"] for c in ports["citations"]} == {"net"}
    # Asked of the first collection alone, the passage is not found.
    alone = (await client.post("/api/chat/query", json={
        "message": "How many hours of sun do tomatoes need a day?",
        "collections": ["net"], "mode": "agent"})).json()
    assert "six hours" not in alone["answer"]
    assert {c["collection"] for c in alone["citations"]} <= {"net"}


async def test_agent_mode_refuses_a_collection_the_key_cannot_see(
    make_settings: Callable[..., Settings],
) -> None:
    app = create_app(make_settings(api_keys=KEYS))
    async with lifespan(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://metis",
                                     headers={"X-API-Key": "key-a"}) as a, \
                httpx.AsyncClient(transport=transport, base_url="http://metis",
                                  headers={"X-API-Key": "key-b"}) as b:
            await seed(a)
            theirs = await ingest(b, {"garden.md": b"Tomatoes need six hours of sun a day."},
                                  collection="garden")
            assert {r["status"] for r in theirs["results"]} == {"created"}
            question = {"message": "How many hours of sun do tomatoes need a day?",
                        "collections": ["net", "garden"], "mode": "agent"}
            for stream in (False, True):
                r = await a.post("/api/chat/query", json={**question, "stream": stream})
                assert r.status_code == 404, r.text
                assert r.json()["code"] == "collection_not_found"
            # The owner asks the same of its own collection and is answered from it.
            r = await b.post("/api/chat/query", json={**question, "collections": ["garden"]})
            assert r.status_code == 200 and "six hours of sun" in r.json()["answer"], r.text


async def test_auto_mode_keeps_simple_questions_on_the_fast_path(
    client: httpx.AsyncClient,
) -> None:
    await seed(client)
    simple = (await client.post("/api/chat/query", json={
        "message": "Which port does ssh use?", "collection": "net", "mode": "auto"})).json()
    assert simple["agent"] is None and simple["timings_ms"]["retrieve"] > 0
    complex_ = (await client.post("/api/chat/query", json={
        "message": "Which has the higher port, imaps or pop3s?", "collection": "net",
        "mode": "auto"})).json()
    assert complex_["agent"]["analysis"] == "comparison"
    assert "pop3s has the highest port (995)" in complex_["answer"]


async def test_agent_stream_sends_steps_tool_calls_then_the_answer(
    client: httpx.AsyncClient,
) -> None:
    await seed(client)
    events: list[tuple[str, object]] = []
    async with client.stream("POST", "/api/chat/query", json={
        "message": "How much higher is the port of https than the port of http?",
        "collection": "net", "mode": "agent", "stream": True}) as r:
        assert r.status_code == 200
        async for event in _sse(r.aiter_lines()):
            events.append(event)
    kinds = [k for k, _ in events]
    assert kinds[0] == "step" and kinds[-2:] == ["citations", "done"]
    assert kinds.count("tool_call") == 3 and kinds.count("tool_result") == 3
    first_token = kinds.index("token")
    assert set(kinds[first_token:-2]) == {"token"} and "tool_call" not in kinds[first_token:]
    text = "".join(d["text"] for k, d in events if k == "token")  # type: ignore[index]
    done = events[-1][1]
    assert text == done["answer"] and "443 - 80 = 363" in text  # type: ignore[index]


async def test_a_missing_collection_is_a_404_before_any_stream(
    client: httpx.AsyncClient,
) -> None:
    r = await client.post("/api/chat/query", json={
        "message": "What is the sum of the ports of ssh and http?", "collection": "nope",
        "mode": "agent", "stream": True})
    assert r.status_code == 404


async def test_audits_are_tenant_scoped(make_settings: Callable[..., Settings]) -> None:
    app = create_app(make_settings(api_keys=KEYS))
    async with lifespan(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://metis",
                                     headers={"X-API-Key": "key-a"}) as a:
            await seed(a)
            body = (await a.post("/api/chat/query", json={
                "message": "What is the sum of the ports of ssh and http?",
                "collection": "net", "mode": "agent"})).json()
            url = f"/api/queries/{body['agent']['query_id']}/audit"
            assert (await a.get(url)).status_code == 200
            other = await a.get(url, headers={"X-API-Key": "key-b"})
            assert other.status_code == 404 and other.json()["code"] == "agent_query_not_found"
            assert (await a.get("/api/queries/nope/audit")).status_code == 404


async def test_a_low_score_is_refined_and_the_scores_reach_metrics(
    client: httpx.AsyncClient,
) -> None:
    await seed(client)
    body = (await client.post("/api/chat/query", json={
        "message": "What is the sum of the ports of ssh and gopherx?", "collection": "net",
        "mode": "agent"})).json()
    agent = body["agent"]
    assert agent["rounds"] == 1 and agent["scores"]["completeness"] < 1
    assert "The port of ssh is 22" in body["answer"] and "could not establish" in body["answer"]
    audit = (await client.get(f"/api/queries/{agent['query_id']}/audit")).json()
    refinement = next(e for e in audit["events"] if e["kind"] == "refinement")
    assert refinement["output"]["retried"] == ["s3"]
    searches = [e["input"] for e in audit["events"] if e["kind"] == "tool_call"]
    assert {"query": "gopherx port", "top_k": 20} in searches  # the widened retry
    metrics = (await client.get("/metrics")).text
    assert 'metis_agent_score_count{score="groundedness"} 1.0' in metrics
    assert "metis_agent_refinements_total 1.0" in metrics
    assert 'metis_agent_steps_total{op="figure",status="error"}' in metrics


@pytest.mark.databases
async def test_a_nul_in_the_models_answer_is_answered_and_audited(
    fake_llm_client,  # type: ignore[no-untyped-def]
) -> None:
    """The model's text is from outside: PostgreSQL text cannot hold a NUL, which made saving
    the audit fail the whole answer (500). The audit keeps U+FFFD in its place."""
    client, server = fake_llm_client
    await seed(client)
    server.configure(answer="ssh listens on port 22\x00 [1].")
    r = await client.post("/api/chat/query", json={
        "message": "Which port does ssh use?", "collection": "net", "mode": "agent",
        "cache": False})
    assert r.status_code == 200, r.text
    body = r.json()
    audit = await client.get(f"/api/queries/{body['agent']['query_id']}/audit")
    assert audit.status_code == 200, audit.text
    assert audit.json()["answer"] == body["answer"].replace("\x00", "\ufffd")
