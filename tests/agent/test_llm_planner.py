"""The LLM planner: the fake LLM server, scripted as a planner in both protocols, and the graph
running every plan shape it writes; bad plans fall back to the rule planner."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from metis_rag.app import create_app
from metis_rag.config import LLMSettings
from tests.agent.test_agent_api import seed
from tests.lifespan import lifespan

pytestmark = pytest.mark.slow


def _search(id_: str, query: str, after: list[str] | None = None) -> dict[str, Any]:
    return {"id": id_, "op": "tool", "name": "rag_search", "arguments": {"query": query},
            "after": after or []}


def _figure(id_: str, entity: str, source: str, metric: str = "port") -> dict[str, Any]:
    return {"id": id_, "op": "figure", "name": "figure", "after": [source],
            "arguments": {"entity": entity, "source": source, "metric": metric}}


SHAPES: dict[str, tuple[list[dict[str, Any]], str]] = {
    "one step": ([_search("s1", "ssh port")], "ssh"),
    "fan-out, fan-in": ([
        _search("s1", "ssh port"), _figure("s2", "ssh", "s1"),
        _search("s3", "http port"), _figure("s4", "http", "s3"),
        {"id": "s5", "op": "tool", "name": "calculator", "after": ["s2", "s4"],
         "arguments": {"expression": "{s2} + {s4}"}}], "102"),
    "diamond comparison": ([
        _search("s1", "imaps pop3s"), _figure("s2", "imaps", "s1"), _figure("s3", "pop3s", "s1"),
        {"id": "s4", "op": "compare", "name": "compare", "after": ["s2", "s3"],
         "arguments": {"figures": ["s2", "s3"], "want": "lowest", "metric": "port"}}], "993"),
    "chain through a value": ([
        _search("s1", "tcp protocol"), _figure("s2", "tcp", "s1", "protocol"),
        {"id": "s3", "op": "tool", "name": "calculator", "after": ["s2"],
         "arguments": {"expression": "{s2} * 10"}},
        {"id": "s4", "op": "tool", "name": "rag_search", "after": ["s2"],
         "arguments": {"query": "protocol {s2}"}}], "60"),
}


@pytest.fixture(params=["ollama", "openai"])
async def llm_client(request, make_settings):  # type: ignore[no-untyped-def]
    from metis_rag.devtools.fake_llm import FakeLLMServer

    with FakeLLMServer() as server:
        llm = LLMSettings(provider=request.param, url=server.url, model="fake", timeout_s=1)
        app = create_app(make_settings(llm=llm, ratelimit={"max_retries": 0}))
        async with lifespan(app) as m:
            transport = httpx.ASGITransport(app=m.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://m") as c:
                yield c, server


async def ask(client: httpx.AsyncClient, message: str) -> dict[str, Any]:
    r = await client.post("/api/chat/query", json={"message": message, "collection": "net",
                                                   "mode": "agent", "cache": False})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


@pytest.mark.parametrize("shape", list(SHAPES))
async def test_the_graph_runs_every_plan_shape_the_llm_writes(llm_client, shape: str) -> None:  # type: ignore[no-untyped-def]
    client, server = llm_client
    await seed(client)
    steps, expected = SHAPES[shape]
    server.script_tools([{"content": orjson.dumps({"kind": "multi_hop",
                                                   "steps": steps}).decode()}])
    body = await ask(client, f"question for {shape}")
    agent = body["agent"]
    assert agent["planner"].endswith(":fake")
    assert [s["id"] for s in agent["steps"]] == [s["id"] for s in steps]
    assert {s["status"] for s in agent["steps"]} == {"ok"}, agent["steps"]
    audit = (await client.get(f"/api/queries/{agent['query_id']}/audit")).json()
    outputs = " ".join(str(e["output"].get("value")) for e in audit["events"]
                       if e["kind"] in ("step", "tool_call"))
    assert expected in outputs
    # The planner request declared the registry's tools the protocol's way.
    assert {"rag_search", "calculator"} <= set(server.tool_requests()[0]["tools"])
    assert body["mode"] == "llm" and body["citations"]  # the LLM wrote the answer


async def test_tool_calls_instead_of_a_plan_run_as_one_wave(llm_client) -> None:  # type: ignore[no-untyped-def]
    client, server = llm_client
    await seed(client)
    server.script_tools([{"tool_calls": [
        {"name": "rag_search", "arguments": {"query": "ssh port"}},
        {"name": "calculator", "arguments": {"expression": "22 * 2"}}]}])
    agent = (await ask(client, "anything"))["agent"]
    assert [(s["name"], s["status"]) for s in agent["steps"]] == [
        ("rag_search", "ok"), ("calculator", "ok")]


@pytest.mark.parametrize("turn", [
    {"content": "first search, then add"},  # no JSON
    {"content": orjson.dumps({"steps": [_search("s1", "x", ["s2"]),
                                        _search("s2", "y", ["s1"])]}).decode()},  # a cycle
    {"content": orjson.dumps({"steps": [{"id": "s1", "op": "tool", "name": "rm_rf",
                                         "arguments": {}}]}).decode()},  # no such tool
    {"raw_tool_calls": [{"function": {"name": "rag_search", "arguments": "{broken"}}]},
    {"hang": True},  # the planner times out
])
async def test_a_bad_plan_falls_back_to_the_rule_planner(llm_client, turn: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    client, server = llm_client
    await seed(client)
    server.script_tools([turn])
    body = await ask(client, "What is the sum of the ports of ssh and http?")
    assert body["agent"]["planner"] == "rules"
    assert any("planned by rules" in w for w in body["warnings"]), body["warnings"]
    assert {s["status"] for s in body["agent"]["steps"]} == {"ok"}
