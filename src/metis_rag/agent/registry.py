"""`ToolRegistry`: the one way a plan step or an LLM tool call runs a tool.

`call` never raises for a tool's failure: unknown tools, arguments that break the schema,
timeouts and errors inside a tool come back as ``ToolResult(error=<code>)`` with a sentence
the LLM can read. Results of tools that declare `cache_ttl_s` are kept in the `tool` cache
level under ``<tenant>/<namespace>:<tool>:<collection>:<version>:<digest of the arguments>``;
the version is the collection's (`reads_documents`), so an upload or a deletion makes the old
results unreachable, with its analysis version when the result reads the documents' analysis
(`reads_analysis`: ``3.2``), so a newly stored analysis does too. Over several collections
(`ToolContext.also`) the collection part is a digest of their names and the version lists
each one's (``3+1``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from ..cache.levels import digest
from ..cache.tiered import TieredCache
from ..errors import MetisError, ToolNotFound
from ..store.lookup import CollectionRef
from . import schema
from .tools import Tool, ToolCall, ToolCitation, ToolContext, ToolResult, ToolSpec

if TYPE_CHECKING:
    from ..observability.metrics import Metrics
    from ..services import Services

log = logging.getLogger("metis.agent.tools")

VersionLookup = Callable[[ToolContext], Awaitable[CollectionRef | None]]
"""The context's collection with its versions (None when it does not exist)."""


@dataclass
class ToolStats:
    calls: int = 0
    cache_hits: int = 0
    errors: int = 0
    run_ms: float = 0.0


class ToolRegistry:
    def __init__(
        self,
        tools: Sequence[Tool],
        *,
        cache: TieredCache | None,
        clock: Callable[[], float] = time.perf_counter,
        versions: VersionLookup | None = None,
        metrics: Metrics | None = None,
        timeout_s: float = 20.0,
    ) -> None:
        self._tools: dict[str, Tool] = {}
        for tool in tools:
            if tool.spec.name in self._tools:
                raise ValueError(f"two tools are named {tool.spec.name!r}")
            if tool.spec.parameters.get("type") != "object":
                raise ValueError(f"{tool.spec.name}: parameters must be a schema of type object")
            schema.check_schema(tool.spec.parameters, tool.spec.name)
            self._tools[tool.spec.name] = tool
        self._cache = cache
        self._clock = clock
        self._versions = versions
        self._metrics = metrics
        self.timeout_s = timeout_s
        self.stats: dict[str, ToolStats] = {name: ToolStats() for name in self._tools}

    async def close(self) -> None:
        """Release what tools hold (sql_query's connection pool)."""
        for tool in self._tools.values():
            close = getattr(tool, "close", None)
            if close is not None:
                await close()

    def specs(self) -> list[ToolSpec]:
        return [tool.spec for tool in self._tools.values()]

    def declarations(self) -> list[dict[str, Any]]:
        """The `tools` list of an OpenAI or Ollama chat request."""
        return [spec.as_openai() for spec in self.specs()]

    def get(self, name: str) -> Tool:
        tool = self._tools.get(name)
        if tool is None:
            raise ToolNotFound(f"There is no tool named {name[:80]!r}.")
        return tool

    async def call(self, call: ToolCall, context: ToolContext) -> ToolResult:
        started = self._clock()
        result = await self._call(call, context)
        result.elapsed_ms = (self._clock() - started) * 1000
        stats = self.stats.get(call.name)
        if stats is not None:
            stats.calls += 1
            stats.cache_hits += result.cache_level == "tool"
            stats.errors += result.error is not None
            stats.run_ms += result.elapsed_ms
        if self._metrics is not None:
            self._metrics.observe_tool_call(
                call.name if stats is not None else "unknown",
                "error" if result.error else "ok", result.elapsed_ms / 1000, result.cache_level)
        return result

    async def _call(self, call: ToolCall, context: ToolContext) -> ToolResult:
        try:
            tool = self.get(call.name)
        except ToolNotFound as exc:
            known = ", ".join(self._tools)
            return ToolResult(f"{exc.message} Known tools: {known}.", error=exc.code)
        if not isinstance(call.arguments, Mapping):
            return ToolResult("The arguments must be a JSON object.", error="invalid_arguments")
        problems = schema.errors(call.arguments, tool.spec.parameters)
        if problems:
            return ToolResult("Invalid arguments: " + "; ".join(problems[:5]) + ".",
                              error="invalid_arguments")
        key = await self._key(tool.spec, call.arguments, context)
        if key is not None and self._cache is not None:
            cached = await self._cache.get(key)
            if cached is not None:
                result = _from_json(cached)
                result.cache_level = "tool"
                return result
        result = await self._run(tool, call.arguments, context)
        if key is not None and self._cache is not None and result.error is None:
            try:
                await self._cache.set(key, _to_json(result), tool.spec.cache_ttl_s)
            except TypeError:  # data that is not JSON: served, never cached
                log.debug("tool %s returned data that cannot be cached", call.name)
        return result

    async def _run(self, tool: Tool, arguments: Mapping[str, Any],
                   context: ToolContext) -> ToolResult:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await tool.run(arguments, context)
        except TimeoutError:
            return ToolResult(f"The tool {tool.spec.name} did not answer within "
                              f"{self.timeout_s:g} s.", error="tool_timeout")
        except MetisError as exc:
            return ToolResult(exc.message, error=exc.code)
        except Exception:
            # Never a traceback to the LLM or the client: the log has it.
            log.exception("tool %s failed", tool.spec.name)
            return ToolResult(f"The tool {tool.spec.name} failed.", error="tool_failed")

    async def _key(self, spec: ToolSpec, arguments: Mapping[str, Any],
                   context: ToolContext) -> str | None:
        if spec.cache_ttl_s is None or self._cache is None:
            return None
        version: int | str = "-"
        if spec.reads_documents:
            if self._versions is None:
                return None  # no way to know when the documents change: never cache
            # Every collection searched, each at its version (one: the plain version).
            reads = spec.reads_analysis_with(arguments)
            found = [await self._versions(replace(context, collection=c, also=()))
                     for c in context.collections]
            version = "+".join(ref.key(reads) if ref else "-1" for ref in found)
        names = context.collection if not context.also else digest(context.collections)
        # A tenant's namespaces already start with "<tenant>/" (Principal.namespace).
        scope = (context.namespace if context.namespace.startswith(f"{context.tenant}/")
                 else f"{context.tenant}/{context.namespace}")
        return (f"{scope}:{spec.name}:{names}:{version}:"
                f"{digest(sorted(arguments.items()), tuple(context.tags), context.folder)}")


def _to_json(result: ToolResult) -> dict[str, Any]:
    return {"content": result.content, "data": result.data,
            "citations": [asdict(c) for c in result.citations]}


def _from_json(value: Mapping[str, Any]) -> ToolResult:
    return ToolResult(content=value["content"], data=value.get("data"),
                      citations=[ToolCitation(**c) for c in value.get("citations", [])])


def build_registry(services: Services) -> ToolRegistry:
    """The built-in tools, wired to one running Metis. Close it (`close`) when done."""
    from .builtin_calculator import Calculator
    from .builtin_documents import ListDocuments, SummarizeDocument
    from .builtin_rag import RagSearch
    from .builtin_sql import SqlQuery

    settings = services.settings

    async def versions(context: ToolContext) -> CollectionRef | None:
        return await services.lookup.find(context.tenant, context.collection)

    tools: list[Tool] = [
        RagSearch(services.lookup, services.embedder, services.retriever,
                  settings.retrieval.top_k),
        Calculator(),
        SqlQuery(settings.tools, metis_url=settings.sqlalchemy_url),
        SummarizeDocument(services.sessions, services.llm, settings.analysis),
        ListDocuments(services.sessions, services.lookup),
    ]
    return ToolRegistry(tools, cache=services.caches.tool if services.caches else None,
                        versions=versions, metrics=services.metrics,
                        timeout_s=settings.tools.timeout_s)
