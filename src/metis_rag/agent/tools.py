"""The tool interface: what a step of an agent plan (or an LLM tool call) can run.

A `Tool` declares itself with a `ToolSpec` (name, description, JSON-schema parameters, how its
results may be cached) and runs with `run(arguments, context)`. The registry validates the
arguments against the schema, serves repeated calls from the `tool` cache level, meters every
call and turns failures into `ToolError` results instead of exceptions, so one failing step
never takes a plan down. The same specs are declared to an LLM through the OpenAI
tool-calling and Ollama `tools` protocols (`ToolSpec.as_openai()`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    description: str
    # A JSON schema of type "object" for the arguments.
    parameters: Mapping[str, Any]
    # None: never cached; else results are cached for this long.
    cache_ttl_s: float | None = None
    # True when the result depends on a collection's documents: its cache key then includes
    # the collection version, so an upload or deletion invalidates it.
    reads_documents: bool = False
    # When it also depends on the documents' analysis (type, language, topics, summary): True,
    # or the arguments that make it so when given (rag_search's `topic`). Its cache key then
    # includes the analysis version too, so a newly stored analysis invalidates it.
    reads_analysis: bool | frozenset[str] = False

    def reads_analysis_with(self, arguments: Mapping[str, Any]) -> bool:
        if isinstance(self.reads_analysis, bool):
            return self.reads_analysis
        return any(arguments.get(name) for name in self.reads_analysis)

    def as_openai(self) -> dict[str, Any]:
        """The declaration both the OpenAI and the Ollama chat APIs accept in `tools`."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": dict(self.parameters),
            },
        }


@dataclass(frozen=True, slots=True)
class ToolCall:
    name: str
    arguments: Mapping[str, Any]
    # The provider's id for the call (OpenAI `tool_call_id`), or one we made.
    id: str = ""


@dataclass(slots=True)
class ToolCitation:
    document_id: str
    title: str
    chunk_id: str
    text: str
    score: float
    page: int | None = None
    section: str | None = None
    collection: str | None = None  # where it was found, when a tool searched several


@dataclass(slots=True)
class ToolResult:
    """What a tool returned: `content` is the text an LLM or the synthesiser reads, `data` the
    structured value (numbers, rows...), `citations` the passages it drew on. `error` is a
    stable code when the call failed (`content` then says why, for the LLM to read)."""

    content: str
    data: Any = None
    citations: list[ToolCitation] = field(default_factory=list)
    error: str | None = None
    # Filled by the registry: which cache level served it ("tool" or None) and how long it took.
    cache_level: str | None = None
    elapsed_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class ToolContext:
    """Who is calling and over what: tools never reach outside the caller's tenant.

    `also` names more collections of the same tenant (already checked to exist) that the
    search tools search together with `collection`."""

    tenant: str
    collection: str
    namespace: str = ""
    # Narrowing filters a plan step may pass on to retrieval.
    tags: Sequence[str] = ()
    folder: str | None = None
    also: tuple[str, ...] = ()

    @property
    def collections(self) -> tuple[str, ...]:
        return (self.collection, *self.also)


class Tool(Protocol):
    spec: ToolSpec

    async def run(self, arguments: Mapping[str, Any], context: ToolContext) -> ToolResult: ...
