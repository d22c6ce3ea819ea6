"""The `LLM` interface. Backends: Ollama `/api/chat` and OpenAI-compatible `/v1/chat/completions`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

ToolDeclaration = Mapping[str, Any]
"""One entry of a chat request's `tools`: ``{"type": "function", "function": {...}}``."""


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """A tool call the model asked for. `arguments` is the decoded JSON object; when the
    model sent something else, `malformed` says what was wrong (and `arguments` is empty)."""

    id: str
    name: str
    arguments: Mapping[str, Any]
    malformed: str | None = None


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Literal["system", "user", "assistant", "tool"]
    content: str
    # An assistant turn that called tools; a "tool" turn answers the call `tool_call_id`
    # (OpenAI) of the tool `name` (Ollama).
    tool_calls: tuple[FunctionCall, ...] = ()
    tool_call_id: str = ""
    name: str = ""


@dataclass(slots=True)
class Completion:
    text: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    extra: dict[str, object] = field(default_factory=dict)
    # Set when `complete` was given `tools` and the model chose to call some.
    tool_calls: list[FunctionCall] = field(default_factory=list)


class CompletionStream(Protocol):
    """Text deltas of one answer; after the last one, `completion` holds the text and usage."""

    completion: Completion | None

    def __aiter__(self) -> AsyncIterator[str]: ...

    async def __anext__(self) -> str: ...

    async def aclose(self) -> None: ...


class LLM(Protocol):
    """A chat model behind HTTP.

    `complete` returns the whole answer; `stream` yields text deltas as they arrive, and its
    `completion` attribute holds the usage once the last delta has been read. Both enforce the
    configured timeouts and raise `ProviderTimeout` or `ProviderError` (with the upstream status
    and any Retry-After) on failure. `name` is the provider and model, e.g. ``ollama:llama3``.
    `tools` (declarations as `ToolSpec.as_openai()` makes them) lets the model answer with
    `Completion.tool_calls` instead of text; streams never take tools.
    """

    name: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def complete(
        self, messages: Sequence[ChatMessage], *, temperature: float, max_tokens: int,
        tools: Sequence[ToolDeclaration] = (),
    ) -> Completion: ...

    def stream(
        self, messages: Sequence[ChatMessage], *, temperature: float, max_tokens: int
    ) -> CompletionStream: ...


class WrappedLLM:
    """Base of the layers around an `LLM` (cache, rate limit, metering): holds `inner`, takes
    its `name`, and passes start/close through; a subclass adds `complete` and `stream`."""

    def __init__(self, inner: LLM) -> None:
        self.inner = inner
        self.name = inner.name

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()
