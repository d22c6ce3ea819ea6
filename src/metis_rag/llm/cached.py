"""`CachedLLM`: an LLM whose completions are cached by model + full prompt + parameters."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from ..cache.levels import digest
from ..cache.tiered import TieredCache
from .base import (
    LLM,
    ChatMessage,
    Completion,
    CompletionStream,
    FunctionCall,
    ToolDeclaration,
    WrappedLLM,
)


def _key(name: str, messages: Sequence[ChatMessage], temperature: float, max_tokens: int,
         tools: Sequence[ToolDeclaration] = ()) -> str:
    turns: list[Any] = [(m.role, m.content) for m in messages]
    if tools or any(m.tool_calls or m.tool_call_id for m in messages):
        # Tool turns and declarations change the answer; plain prompts keep their old keys.
        turns = [(m.role, m.content, [(c.name, sorted(c.arguments.items()), c.malformed)
                                      for c in m.tool_calls], m.tool_call_id, m.name)
                 for m in messages]
        return digest(name, turns, temperature, max_tokens, [dict(t) for t in tools])
    return digest(name, turns, temperature, max_tokens)


def _completion(data: dict[str, Any], hit: bool) -> Completion:
    return Completion(text=data["text"], model=data["model"],
                      prompt_tokens=data["prompt_tokens"],
                      completion_tokens=data["completion_tokens"],
                      extra={"cache_hit": hit, "saved_ms": data.get("ms", 0.0)},
                      tool_calls=[FunctionCall(**c) for c in data.get("tool_calls", ())])


def _record(c: Completion, ms: float) -> dict[str, Any]:
    record = {"text": c.text, "model": c.model, "prompt_tokens": c.prompt_tokens,
              "completion_tokens": c.completion_tokens, "ms": ms}
    if c.tool_calls:
        record["tool_calls"] = [{"id": t.id, "name": t.name, "arguments": dict(t.arguments),
                                 "malformed": t.malformed} for t in c.tool_calls]
    return record


class _CachedStream:
    """Replays a cached completion, or passes a live stream through and caches it at the end."""

    def __init__(self, source: AsyncIterator[str] | CompletionStream | None,
                 cached: Completion | None, on_done: Any) -> None:
        self._source = source
        self._on_done = on_done
        self._parts: list[str] = []
        self.completion: Completion | None = None
        self._replay = [cached.text] if cached is not None else None
        self._cached = cached

    def __aiter__(self) -> _CachedStream:
        return self

    async def __anext__(self) -> str:
        if self._replay is not None:
            if self._replay:
                return self._replay.pop()
            self.completion = self._cached
            raise StopAsyncIteration
        assert self._source is not None
        try:
            delta = await anext(self._source)
        except StopAsyncIteration:
            done = getattr(self._source, "completion", None)
            self.completion = done or Completion("".join(self._parts), "")
            await self._on_done(self.completion)
            raise
        self._parts.append(delta)
        return delta

    async def aclose(self) -> None:
        if self._source is not None and hasattr(self._source, "aclose"):
            await self._source.aclose()


class CachedLLM(WrappedLLM):
    def __init__(self, inner: LLM, cache: TieredCache) -> None:
        super().__init__(inner)
        self._cache = cache

    async def complete(
        self, messages: Sequence[ChatMessage], *, temperature: float, max_tokens: int,
        tools: Sequence[ToolDeclaration] = (),
    ) -> Completion:
        key = _key(self.name, messages, temperature, max_tokens, tools)
        data = await self._cache.get(key)
        if data is not None:
            return _completion(data, hit=True)
        t = time.perf_counter()
        done = await self.inner.complete(messages, temperature=temperature, max_tokens=max_tokens,
                                         tools=tools)
        await self._cache.set(key, _record(done, (time.perf_counter() - t) * 1000))
        done.extra["cache_hit"] = False
        return done

    def stream(
        self, messages: Sequence[ChatMessage], *, temperature: float, max_tokens: int
    ) -> CompletionStream:
        key = _key(self.name, messages, temperature, max_tokens)
        return _LazyStream(self, key, messages, temperature, max_tokens)


class _LazyStream:
    """Looks the prompt up on the first delta request (stream() itself is not async)."""

    def __init__(self, llm: CachedLLM, key: str, messages: Sequence[ChatMessage],
                 temperature: float, max_tokens: int) -> None:
        self._llm, self._key = llm, key
        self._args = (messages, temperature, max_tokens)
        self._stream: _CachedStream | None = None
        self.completion: Completion | None = None

    def __aiter__(self) -> _LazyStream:
        return self

    async def __anext__(self) -> str:
        if self._stream is None:
            messages, temperature, max_tokens = self._args
            data = await self._llm._cache.get(self._key)
            if data is not None:
                self._stream = _CachedStream(None, _completion(data, hit=True), None)
            else:
                started = time.perf_counter()

                async def save(c: Completion) -> None:
                    c.extra["cache_hit"] = False
                    ms = (time.perf_counter() - started) * 1000
                    await self._llm._cache.set(self._key, _record(c, ms))

                live = self._llm.inner.stream(messages, temperature=temperature,
                                              max_tokens=max_tokens)
                self._stream = _CachedStream(live, None, save)
        try:
            return await anext(self._stream)
        except StopAsyncIteration:
            self.completion = self._stream.completion
            raise

    async def aclose(self) -> None:
        if self._stream is not None:
            await self._stream.aclose()
