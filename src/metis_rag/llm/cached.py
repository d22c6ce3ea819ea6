"""`CachedLLM`: an LLM whose completions are cached by model + full prompt + parameters."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from ..cache.levels import digest
from ..cache.tiered import TieredCache
from .base import LLM, ChatMessage, Completion, CompletionStream, WrappedLLM


def _key(name: str, messages: Sequence[ChatMessage], temperature: float, max_tokens: int) -> str:
    return digest(name, [(m.role, m.content) for m in messages], temperature, max_tokens)


def _completion(data: dict[str, Any], hit: bool) -> Completion:
    return Completion(text=data["text"], model=data["model"],
                      prompt_tokens=data["prompt_tokens"],
                      completion_tokens=data["completion_tokens"],
                      extra={"cache_hit": hit, "saved_ms": data.get("ms", 0.0)})


def _record(c: Completion, ms: float) -> dict[str, Any]:
    return {"text": c.text, "model": c.model, "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens, "ms": ms}


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
        self, messages: Sequence[ChatMessage], *, temperature: float, max_tokens: int
    ) -> Completion:
        key = _key(self.name, messages, temperature, max_tokens)
        data = await self._cache.get(key)
        if data is not None:
            return _completion(data, hit=True)
        t = time.perf_counter()
        done = await self.inner.complete(messages, temperature=temperature, max_tokens=max_tokens)
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
