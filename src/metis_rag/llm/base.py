"""The `LLM` interface. Backends: Ollama `/api/chat` and OpenAI-compatible `/v1/chat/completions`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(slots=True)
class Completion:
    text: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    extra: dict[str, object] = field(default_factory=dict)


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
    """

    name: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def complete(
        self, messages: Sequence[ChatMessage], *, temperature: float, max_tokens: int
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
