"""The tool registry: schema checks, the `tool` cache level, failures as results, metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest

from metis_rag.agent.registry import ToolRegistry
from metis_rag.agent.tools import ToolCall, ToolCitation, ToolContext, ToolResult, ToolSpec
from metis_rag.cache.memory import MemoryBackend
from metis_rag.cache.tiered import TieredCache
from metis_rag.errors import InvalidInput, ToolNotFound
from metis_rag.observability.metrics import Metrics
from metis_rag.store.lookup import CollectionRef
from tests.fakeclock import FakeClock

CTX = ToolContext(tenant="acme", collection="docs", namespace="default")


class Echo:
    """Counts its runs; its result depends on the collection's documents."""

    def __init__(self, *, ttl: float | None = 60.0, reads_documents: bool = True,
                 reads_analysis: bool | frozenset[str] = False) -> None:
        self.runs = 0
        self.spec = ToolSpec(
            name="echo", description="Echo the text.",
            parameters={"type": "object",
                        "properties": {"text": {"type": "string", "maxLength": 20},
                                       "n": {"type": "integer", "minimum": 1, "maximum": 3}},
                        "required": ["text"], "additionalProperties": False},
            cache_ttl_s=ttl, reads_documents=reads_documents, reads_analysis=reads_analysis)

    async def run(self, arguments: Mapping[str, Any], context: ToolContext) -> ToolResult:
        self.runs += 1
        return ToolResult(f"{context.tenant}:{arguments['text']}", data={"runs": self.runs},
                          citations=[ToolCitation("d1", "a.txt", "7", "text", 0.5, page=2)])


class Failing:
    def __init__(self, error: BaseException | None = None, delay_s: float = 0.0) -> None:
        self.error = error
        self.delay_s = delay_s
        self.spec = ToolSpec(name="bad", description="Fails.",
                             parameters={"type": "object", "properties": {}},
                             cache_ttl_s=60.0)

    async def run(self, arguments: Mapping[str, Any], context: ToolContext) -> ToolResult:
        await asyncio.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        return ToolResult("ok")


def registry(*tools: Any, versions: dict[tuple[str, str], int | tuple[int, int]] | None = None,
             metrics: Metrics | None = None, timeout_s: float = 5.0) -> ToolRegistry:
    """`versions`: (tenant, collection) -> its version, or (version, analysis version)."""
    cache = TieredCache([MemoryBackend()], prefix="tool:")
    table = versions if versions is not None else {}

    async def version(ctx: ToolContext) -> CollectionRef | None:
        found = table.get((ctx.tenant, ctx.collection))
        if found is None:
            return None
        content, analysis = found if isinstance(found, tuple) else (found, 0)
        return CollectionRef(1, content, analysis)

    return ToolRegistry(list(tools), cache=cache, versions=version, metrics=metrics,
                        timeout_s=timeout_s)


async def test_specs_get_and_unknown_tool() -> None:
    echo = Echo()
    reg = registry(echo)
    assert [s.name for s in reg.specs()] == ["echo"]
    assert reg.declarations()[0]["function"]["name"] == "echo"
    assert reg.get("echo") is echo
    with pytest.raises(ToolNotFound):
        reg.get("nope")
    result = await reg.call(ToolCall("nope", {}), CTX)
    assert result.error == "tool_not_found" and "echo" in result.content


@pytest.mark.parametrize("arguments", [
    {}, {"text": 3}, {"text": "x" * 21}, {"text": "a", "n": 0}, {"text": "a", "n": True},
    {"text": "a", "extra": 1}, {"text": "a", "n": 1.5}, ["text"], "text",
])
async def test_arguments_that_break_the_schema_never_reach_the_tool(arguments: Any) -> None:
    echo = Echo()
    result = await registry(echo).call(ToolCall("echo", arguments), CTX)
    assert result.error == "invalid_arguments"
    assert echo.runs == 0


async def test_repeated_calls_are_served_from_the_tool_cache_until_the_version_changes() -> None:
    echo = Echo()
    versions = {("acme", "docs"): 1}
    reg = registry(echo, versions=versions)
    first = await reg.call(ToolCall("echo", {"text": "hi"}), CTX)
    second = await reg.call(ToolCall("echo", {"text": "hi"}), CTX)
    assert first.cache_level is None and second.cache_level == "tool"
    assert second.content == first.content and second.data == {"runs": 1}
    assert second.citations == first.citations
    assert echo.runs == 1
    versions[("acme", "docs")] = 2  # a document was added: old results are unreachable
    third = await reg.call(ToolCall("echo", {"text": "hi"}), CTX)
    assert third.cache_level is None and echo.runs == 2
    assert reg.stats["echo"].calls == 3 and reg.stats["echo"].cache_hits == 1


async def test_a_new_analysis_misses_only_the_results_that_read_it() -> None:
    plain, listing = Echo(), Echo(reads_analysis=True)
    listing.spec = replace(listing.spec, name="listing")
    narrowing = Echo(reads_analysis=frozenset({"n"}))  # as rag_search's `topic`, when given
    narrowing.spec = replace(narrowing.spec, name="narrowing")
    versions: dict[tuple[str, str], int | tuple[int, int]] = {("acme", "docs"): (4, 0)}
    reg = registry(plain, listing, narrowing, versions=versions)
    calls = [ToolCall("echo", {"text": "hi"}), ToolCall("listing", {"text": "hi"}),
             ToolCall("narrowing", {"text": "hi"}), ToolCall("narrowing", {"text": "hi", "n": 1})]

    async def levels() -> list[str | None]:
        return [(await reg.call(call, CTX)).cache_level for call in calls]

    assert await levels() == [None, None, None, None]
    assert await levels() == ["tool"] * 4
    versions[("acme", "docs")] = (4, 1)  # a document's analysis was stored
    # What reads the analysis (always, or through the argument given) runs again; the rest hit.
    assert await levels() == ["tool", None, "tool", None]
    assert (plain.runs, listing.runs, narrowing.runs) == (1, 2, 3)
    assert await levels() == ["tool"] * 4
    versions[("acme", "docs")] = (5, 1)  # an upload: everything runs again
    assert await levels() == [None, None, None, None]


async def test_the_cache_key_includes_tenant_collection_and_arguments() -> None:
    echo = Echo()
    reg = registry(echo, versions={("acme", "docs"): 1, ("other", "docs"): 1})
    await reg.call(ToolCall("echo", {"text": "hi"}), CTX)
    other = await reg.call(ToolCall("echo", {"text": "hi"}),
                           ToolContext(tenant="other", collection="docs"))
    assert other.cache_level is None and other.content == "other:hi"
    again = await reg.call(ToolCall("echo", {"text": "hi", "n": 2}), CTX)
    assert again.cache_level is None
    assert echo.runs == 3


async def test_uncached_tools_and_document_tools_without_versions_always_run() -> None:
    echo = Echo(ttl=None)
    reg = registry(echo)
    await reg.call(ToolCall("echo", {"text": "hi"}), CTX)
    await reg.call(ToolCall("echo", {"text": "hi"}), CTX)
    assert echo.runs == 2
    docs = Echo()
    no_versions = ToolRegistry([docs], cache=TieredCache([MemoryBackend()]))
    await no_versions.call(ToolCall("echo", {"text": "hi"}), CTX)
    await no_versions.call(ToolCall("echo", {"text": "hi"}), CTX)
    assert docs.runs == 2


async def test_the_tool_ttl_bounds_the_cache_entry() -> None:
    clock = FakeClock()
    echo = Echo(ttl=10.0, reads_documents=False)
    reg = ToolRegistry([echo], cache=TieredCache([MemoryBackend(clock=clock)], clock=clock))
    await reg.call(ToolCall("echo", {"text": "hi"}), CTX)
    clock.step(5)
    assert (await reg.call(ToolCall("echo", {"text": "hi"}), CTX)).cache_level == "tool"
    clock.step(6)
    assert (await reg.call(ToolCall("echo", {"text": "hi"}), CTX)).cache_level is None
    assert echo.runs == 2


@pytest.mark.parametrize(("error", "code"), [
    (InvalidInput("bad number", code="invalid_expression"), "invalid_expression"),
    (RuntimeError("secret internals /etc/passwd"), "tool_failed"),
])
async def test_failures_become_results_and_are_not_cached(error: Exception, code: str) -> None:
    bad = Failing(error)
    reg = registry(bad)
    for _ in range(2):
        result = await reg.call(ToolCall("bad", {}), CTX)
        assert result.error == code and result.cache_level is None
    assert "secret" not in result.content and "Traceback" not in result.content
    assert reg.stats["bad"].errors == 2


async def test_a_slow_tool_times_out() -> None:
    reg = registry(Failing(delay_s=5), timeout_s=0.05)
    result = await reg.call(ToolCall("bad", {}), CTX)
    assert result.error == "tool_timeout"


async def test_calls_are_metered() -> None:
    metrics = Metrics()
    reg = registry(Echo(reads_documents=False), metrics=metrics)
    await reg.call(ToolCall("echo", {"text": "hi"}), CTX)
    await reg.call(ToolCall("echo", {"text": "hi"}), CTX)
    await reg.call(ToolCall("echo", {}), CTX)
    text = (await metrics.exposition()).decode()
    assert 'metis_tool_calls_total{cache_level="tool",outcome="ok",tool="echo"} 1.0' in text
    assert 'metis_tool_calls_total{cache_level="none",outcome="ok",tool="echo"} 1.0' in text
    assert 'metis_tool_calls_total{cache_level="none",outcome="error",tool="echo"} 1.0' in text


def test_bad_specs_are_refused() -> None:
    dup = [Echo(), Echo()]
    with pytest.raises(ValueError, match="two tools"):
        ToolRegistry(dup, cache=None)
    odd = Echo()
    odd.spec = ToolSpec("odd", "x", {"type": "object",
                                     "properties": {"a": {"type": "string", "pattern": "x"}}})
    with pytest.raises(ValueError, match="unsupported"):
        ToolRegistry([odd], cache=None)
