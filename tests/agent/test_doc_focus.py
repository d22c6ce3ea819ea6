"""The planner picks documents by their analysis (topics, types): narrowing, fallback, prompt."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from metis_rag.agent.analyzer import rule_plan
from metis_rag.agent.doc_focus import Profile, narrow
from metis_rag.app import create_app
from tests.lifespan import lifespan
from tests.uploads import ingest

# Two runbooks with different analysed topics ("zephyr", "quasar"). The idle timeout line of
# the zephyr runbook sits in a chunk of its own, without the word "zephyr"; the quasar runbook
# repeats "idle timeout" so that, unnarrowed, its passage outranks the zephyr one.
FILLER = ("Zephyr gateway guide. The zephyr gateway routes traffic between clusters. Zephyr "
          "nodes restart nightly and zephyr keeps its own logs. Operators upgrade zephyr "
          "every spring; zephyr dashboards show the load. When zephyr is down, traffic waits. "
          "Zephyr has no database of its own.")
ZEPHYR = (FILLER + "\n\nConnections left idle are closed after 30 seconds (idle timeout).\n")
QUASAR = ("Quasar scheduler guide. The quasar scheduler places jobs on quasar workers; quasar "
          "queues keep their logs.\n\nIdle timeout: the idle timeout is 90 seconds. The idle "
          "timeout closes idle connections once the idle timeout is over.\n")


def profile(**topics: set[int]) -> Profile:
    return Profile(topics={t.replace("_", " "): frozenset(d) for t, d in topics.items()},
                   doc_types={"manual": frozenset({1, 2})})


def test_a_topic_is_named_as_a_whole_word_case_insensitive() -> None:
    p = profile(ssh={1}, tcp={2})
    assert p.focus("What port does SSH use?") == {"topic": "ssh"}
    for near_miss in ("What port does sshd use?", "ssh-keygen options", "the ssh.conf file",
                      "openssh port", "tcp6 sockets"):
        assert p.focus(near_miss) == {}, near_miss
    assert p.focus("the port of ssh.") == {"topic": "ssh"}  # a full stop ends the word
    assert p.focus("ssh in the manual") == {"topic": "ssh", "doc_type": "manual"}
    assert p.focus("the manuals") == {}


def test_topics_of_different_documents_narrow_nothing() -> None:
    p = profile(zephyr={1}, timeout={1, 3}, default_timeout={2}, logs={1, 2})
    assert p.focus("the zephyr timeout") == {"topic": "zephyr"}  # one document has both; the rarer
    assert p.focus("zephyr logs") == {"topic": "zephyr"}  # the rarer of the two
    assert p.focus("the default timeout of zephyr") == {}  # documents 1 and 2: ambiguous


def test_a_question_naming_no_topic_is_planned_exactly_as_before() -> None:
    p = profile(zephyr={1}, quasar={2})
    for q in ("What is the sum of the port of ssh and the protocol number of tcp?",
              "Which has the higher port, imaps or pop3s?", "Who wrote the tutorial?"):
        plan, chosen = narrow(rule_plan(q), p)
        assert plan == rule_plan(q) and chosen == {}


def test_only_the_step_that_names_a_topic_is_narrowed() -> None:
    p = profile(ssh={1}, tcp={2})
    plan, chosen = narrow(rule_plan("What is the sum of the port of ssh and the port of http?"), p)
    searches = [s for s in plan.steps if s.name == "rag_search"]
    assert searches[0].arguments["topic"] == "ssh" and "topic" not in searches[1].arguments
    assert chosen == {searches[0].id: {"topic": "ssh"}}


@pytest.fixture
async def small_chunks(make_settings):  # type: ignore[no-untyped-def]
    app = create_app(make_settings(chunk={"max_tokens": 48, "overlap_tokens": 0}))
    async with lifespan(app) as m:
        transport = httpx.ASGITransport(app=m.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://m") as c:
            await ingest(c, {"zephyr.txt": ZEPHYR.encode()}, collection="ops", folder="a")
            await ingest(c, {"quasar.txt": QUASAR.encode()}, collection="ops", folder="b")
            yield c


async def ask(client: httpx.AsyncClient, message: str, **extra: Any) -> dict[str, Any]:
    r = await client.post("/api/chat/query", json={"message": message, "collection": "ops",
                                                   "mode": "agent", **extra})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def audit(client: httpx.AsyncClient, body: dict[str, Any]) -> list[dict[str, Any]]:
    r = await client.get(f"/api/queries/{body['agent']['query_id']}/audit")
    return r.json()["events"]  # type: ignore[no-any-return]


def _cited(event: dict[str, Any]) -> set[str]:
    """The documents a rag_search call's passages came from ("[1] zephyr.txt: ...")."""
    return {line.split(":", 1)[0].split("] ", 1)[1]
            for line in event["output"]["content"].splitlines() if line.startswith("[")}


@pytest.mark.databases
async def test_the_search_narrowed_to_the_named_topic_cites_its_document(small_chunks) -> None:  # type: ignore[no-untyped-def]
    client = small_chunks
    question = "What is the zephyr timeout?"
    # Unnarrowed (the fast path), the quasar runbook's timeout passages come up as well.
    fast = (await client.post("/api/chat/query", json={"message": question,
                                                        "collection": "ops"})).json()
    assert "quasar.txt" in {c["filename"] for c in fast["citations"]}
    body = await ask(client, question)
    assert {c["filename"] for c in body["citations"]} == {"zephyr.txt"}
    events = await audit(client, body)
    plan = next(e for e in events if e["kind"] == "plan")
    picked = plan["output"]["documents"]
    assert picked["by"] == "rules" and picked["filters"]["s1"]["topic"] in {"zephyr", "timeout"}
    call = next(e for e in events if e["kind"] == "tool_call")
    assert call["input"]["topic"] == picked["filters"]["s1"]["topic"]
    assert call["output"]["narrowed"] is True and _cited(call) == {"zephyr.txt"}
    assert "30 seconds" in call["output"]["content"]
    # The audit report shows the choice too.
    md = await client.get(f"/api/queries/{body['agent']['query_id']}/audit",
                          params={"format": "markdown"})
    assert picked["filters"]["s1"]["topic"] in md.text


@pytest.mark.databases
async def test_an_empty_narrowed_search_falls_back_to_every_document(small_chunks) -> None:  # type: ignore[no-untyped-def]
    client = small_chunks
    # Folder "b" holds only the quasar runbook: narrowed to the zephyr topic, nothing is left.
    body = await ask(client, "What is the zephyr timeout?", folder="b")
    call = next(e for e in await audit(client, body) if e["kind"] == "tool_call")
    assert call["input"]["topic"] in {"zephyr", "timeout"}
    assert call["status"] == "ok" and call["output"]["narrowed"] is False
    assert _cited(call) == {"quasar.txt"}
    assert {c["filename"] for c in body["citations"]} == {"quasar.txt"}


async def test_the_llm_planner_is_shown_the_collections_topics(make_settings) -> None:  # type: ignore[no-untyped-def]
    from metis_rag.agent.builtin_rag import RagSearch
    from metis_rag.config import LLMSettings
    from metis_rag.devtools.fake_llm import FakeLLMServer

    assert {"topic", "doc_type"} <= set(RagSearch.spec.parameters["properties"])
    with FakeLLMServer() as server:
        llm = LLMSettings(provider="openai", url=server.url, model="fake", timeout_s=1)
        app = create_app(make_settings(llm=llm, ratelimit={"max_retries": 0},
                                       analysis={"use_llm": False}))
        async with lifespan(app) as m:
            transport = httpx.ASGITransport(app=m.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://m") as client:
                await ingest(client, {"zephyr.txt": ZEPHYR.encode(),
                                      "quasar.txt": QUASAR.encode()}, collection="ops")
                docs = (await client.get("/api/documents",
                                         params={"collection": "ops"})).json()["items"]
                server.script_tools([{"tool_calls": [{"name": "rag_search", "arguments": {
                    "query": "timeout", "topic": "zephyr"}}]}])
                body = await ask(client, "What is the zephyr timeout?")
                prompt = server.tool_requests()[0]["messages"][0]["content"]
                for doc in docs:
                    assert doc["topics"] and all(t in prompt for t in doc["topics"])
                    assert f"{doc['doc_type']} (2)" in prompt
                assert "zephyr (1)" in prompt
                # The model's choice of topic is in the audit, and narrowed the search.
                events = await audit(client, body)
                plan = next(e for e in events if e["kind"] == "plan")
                assert plan["output"]["documents"] == {"by": "llm",
                                                       "filters": {"s1": {"topic": "zephyr"}}}
                call = next(e for e in events if e["kind"] == "tool_call")
                assert call["output"]["narrowed"] is True and _cited(call) == {"zephyr.txt"}
