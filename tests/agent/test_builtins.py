"""The built-in tools wired to a real Metis (`build_registry`): tenancy, citations, the tool
cache and its invalidation by uploads, and hostile arguments."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from metis_rag.agent.analysis_step import analyse_document
from metis_rag.agent.registry import ToolRegistry, build_registry
from metis_rag.agent.tools import ToolCall, ToolContext, ToolResult
from metis_rag.config import Settings
from metis_rag.ingest.pipeline import Upload
from metis_rag.services import Services, open_services

ACME = ToolContext(tenant="acme", collection="handbook")
OTHER = ToolContext(tenant="other", collection="handbook")

REFUNDS = (b"Refund policy. Customers may return unused items within 30 days of delivery for a "
           b"full refund. Refunds are paid to the original card within five business days. "
           b"Opened software cannot be refunded.")
SHIPPING = (b"Shipping guide. Orders above 50 EUR ship free inside the EU. Express shipping "
            b"costs 12 EUR and arrives the next business day. Parcels to Norway pay customs.")
SECRET = b"Merger plan. The board will acquire Globex for 4 billion in the spring."


async def add(services: Services, tenant: str, name: str, data: bytes) -> str:
    report = await services.ingestor.ingest([Upload(name, data)], "handbook", tenant)
    doc_id = report.results[0].document_id
    assert doc_id is not None and services.analyzer is not None
    await analyse_document(services.sessions, services.analyzer, doc_id)
    return doc_id


@pytest.fixture
async def wired(make_settings: Callable[..., Settings]) -> AsyncIterator[
        tuple[Services, ToolRegistry, dict[str, str]]]:
    async with open_services(make_settings()) as services:
        ids = {"refunds": await add(services, "acme", "refunds.txt", REFUNDS),
               "shipping": await add(services, "acme", "shipping.txt", SHIPPING),
               "secret": await add(services, "other", "merger.txt", SECRET)}
        registry = build_registry(services)
        try:
            yield services, registry, ids
        finally:
            await registry.close()


async def run(registry: ToolRegistry, ctx: ToolContext, name: str, **arguments: Any) -> ToolResult:
    return await registry.call(ToolCall(name, arguments), ctx)


async def test_every_builtin_is_declared(wired: Any) -> None:
    _, registry, _ = wired
    names = {d["function"]["name"] for d in registry.declarations()}
    assert names == {"rag_search", "calculator", "sql_query", "summarize_document",
                     "list_documents"}


async def test_rag_search_cites_the_callers_documents_only(wired: Any) -> None:
    _, registry, ids = wired
    found = await run(registry, ACME, "rag_search", query="how long do I have to return items")
    assert found.error is None
    assert found.citations[0].document_id == ids["refunds"]
    assert found.content.startswith("[1] refunds.txt")
    assert all(c.document_id != ids["secret"] for c in found.citations)
    theirs = await run(registry, OTHER, "rag_search", query="how long do I have to return items")
    assert {c.document_id for c in theirs.citations} == {ids["secret"]}
    nowhere = await run(registry, ToolContext(tenant="nobody", collection="handbook"),
                        "rag_search", query="merger")
    assert nowhere.error is None and not nowhere.citations


async def test_the_tool_cache_serves_repeats_until_an_upload(wired: Any) -> None:
    services, registry, _ = wired
    first = await run(registry, ACME, "rag_search", query="express shipping cost")
    again = await run(registry, ACME, "rag_search", query="express shipping cost")
    assert (first.cache_level, again.cache_level) == (None, "tool")
    assert [c.chunk_id for c in again.citations] == [c.chunk_id for c in first.citations]
    stats = (await services.caches.stats())["levels"]["tool"]  # /api/cache/stats
    assert stats["hits"] >= 1
    services.metrics.watch_caches(services.caches)
    exposition = (await services.metrics.exposition()).decode()
    assert 'metis_cache_hits_total{level="tool",tier="memory"} 1.0' in exposition
    assert 'metis_tool_calls_total{cache_level="tool",outcome="ok",tool="rag_search"} 1.0' in (
        exposition)
    await add(services, "acme", "returns.txt", b"Returns desk. Bring items back to any shop.")
    after = await run(registry, ACME, "rag_search", query="express shipping cost")
    assert after.cache_level is None


async def test_a_stored_analysis_refreshes_what_reads_it_and_keeps_the_rest_cached(
        make_settings: Callable[..., Settings]) -> None:
    async with open_services(make_settings()) as services:
        report = await services.ingestor.ingest([Upload("refunds.txt", REFUNDS)], "handbook",
                                                "acme")
        doc_id = report.results[0].document_id
        assert doc_id is not None and services.analyzer is not None
        registry = build_registry(services)
        try:
            async def levels() -> list[str | None]:
                found = [await run(registry, ACME, "list_documents"),
                         await run(registry, ACME, "rag_search", query="refund card"),
                         await run(registry, ACME, "rag_search", query="refund card",
                                   doc_type="policy")]
                assert all(r.error is None for r in found), found
                return [r.cache_level for r in found]

            assert await levels() == [None, None, None]
            listed = await run(registry, ACME, "list_documents")
            assert listed.cache_level == "tool"
            assert listed.data["documents"][0]["doc_type"] is None  # not analysed yet
            assert await levels() == ["tool", "tool", "tool"]

            await analyse_document(services.sessions, services.analyzer, doc_id)
            # The listing and the narrowed search read the analysis: they run again; the plain
            # search does not, and stays a hit.
            assert await levels() == [None, "tool", None]
            listed = await run(registry, ACME, "list_documents")
            assert listed.data["documents"][0]["doc_type"] == "policy"
            assert listed.data["documents"][0]["topics"]

            await services.ingestor.ingest([Upload("shipping.txt", SHIPPING)], "handbook", "acme")
            assert await levels() == [None, None, None]  # an upload still invalidates all
        finally:
            await registry.close()


async def test_list_documents_filters_on_the_analysis(wired: Any) -> None:
    _, registry, ids = wired
    listed = await run(registry, ACME, "list_documents")
    assert {d["id"] for d in listed.data["documents"]} == {ids["refunds"], ids["shipping"]}
    assert all(d["language"] == "en" and d["topics"] for d in listed.data["documents"])
    topic = listed.data["documents"][0]["topics"][0]
    narrowed = await run(registry, ACME, "list_documents", topic=topic)
    expected = {d["id"] for d in listed.data["documents"] if topic in d["topics"]}
    assert {d["id"] for d in narrowed.data["documents"]} == expected and expected
    assert (await run(registry, ACME, "list_documents", language="de")).data["total"] == 0
    assert (await run(registry, ACME, "list_documents", limit=500)).error == "invalid_arguments"


async def test_summarize_document_is_extractive_offline_and_tenant_scoped(wired: Any) -> None:
    _, registry, ids = wired
    summary = await run(registry, ACME, "summarize_document", document_id=ids["refunds"],
                        max_sentences=1)
    assert summary.error is None and summary.data["method"] == "extractive"
    assert summary.data["summary"].rstrip(".") in REFUNDS.decode()
    stolen = await run(registry, ACME, "summarize_document", document_id=ids["secret"])
    assert stolen.error == "document_not_found" and "Globex" not in stolen.content
    junk = await run(registry, ACME, "summarize_document", document_id="../../etc/passwd")
    assert junk.error == "document_not_found"


async def test_calculator_through_the_registry(wired: Any) -> None:
    _, registry, _ = wired
    assert (await run(registry, ACME, "calculator", expression="12 * 3 + 50")).data[
        "value"] == 86
    for hostile in ["__import__('os').system('id')", "9**9**9**9", "[x for x in range(10**9)]",
                    "lambda: 1", "open('/etc/passwd').read()", "(1).__class__", "1e400 * 1e400"]:
        result = await run(registry, ACME, "calculator", expression=hostile)
        assert result.error == "invalid_expression", hostile


async def test_clearing_the_tool_level_by_tenant_or_whole(wired: Any) -> None:
    services, registry, _ = wired
    scoped = ToolContext(tenant="acme", collection="handbook", namespace="acme/default")
    for ctx in (scoped, OTHER):
        await run(registry, ctx, "calculator", expression="1+1")
    await services.caches.clear(level="tool", tenant_prefix="acme/")
    assert (await run(registry, scoped, "calculator", expression="1+1")).cache_level is None
    assert (await run(registry, OTHER, "calculator", expression="1+1")).cache_level == "tool"
    await services.caches.clear(level="tool")
    assert (await run(registry, OTHER, "calculator", expression="1+1")).cache_level is None


async def test_summarize_document_asks_the_llm_when_there_is_one(wired: Any) -> None:
    from metis_rag.agent.builtin_documents import SummarizeDocument
    from metis_rag.config import LLMSettings
    from metis_rag.devtools.fake_llm import FakeLLMServer
    from metis_rag.llm import build_llm

    services, _, ids = wired
    async with FakeLLMServer(answer="Unused items can be refunded within 30 days.") as fake:
        llm = build_llm(LLMSettings(provider="ollama", url=fake.url, model="m"))
        assert llm is not None
        await llm.start()
        try:
            registry = ToolRegistry([SummarizeDocument(services.sessions, llm)], cache=None)
            done = await run(registry, ACME, "summarize_document", document_id=ids["refunds"])
            assert done.data == {"document_id": ids["refunds"], "method": "llm",
                                 "summary": "Unused items can be refunded within 30 days."}
            assert fake.stats()["requests"] == {"/api/chat": 1}
            fake.configure(fail_rate=1.0)
            fallback = await run(registry, ACME, "summarize_document",
                                 document_id=ids["refunds"])
            assert fallback.data["method"] == "extractive" and fallback.data["summary"]
        finally:
            await llm.close()


SERVICES = Path("/etc/services")


@pytest.mark.skipif(not SERVICES.exists(), reason="needs Debian's netbase (/etc/services)")
@pytest.mark.parametrize("query,row", [("redis", "redis"), ("imaps", "imaps"),
                                       ("redis port", "redis"), ("imaps port", "imaps")])
async def test_rag_search_finds_the_row_of_a_short_keyword_in_a_table(
        make_settings: Callable[..., Settings], query: str, row: str) -> None:
    # A copy of /etc/services: 15 rows a chunk, so the cosine alone ranks the "redis" row's
    # chunk below chunks of comments that say "port"; the row keyed by the word lifts it.
    async with open_services(make_settings()) as services:
        await services.ingestor.ingest([Upload("services.txt", SERVICES.read_bytes())], "net")
        registry = build_registry(services)
        try:
            found = await run(registry, ToolContext(tenant="default", collection="net"),
                              "rag_search", query=query, top_k=3)
        finally:
            await registry.close()
    assert found.citations, found.content
    first = found.citations[0].text
    assert re.search(rf"^{row}\s+\d+/tcp", first, re.M), first
