"""`FallbackLLM`: several providers in order; the next one serves when one times out, answers
5xx or 429 (after its own retries), is unreachable or speaks garbage. `build_chain` builds the
configured chain, each provider behind its own rate limiter.

A completion says who served it in ``extra["provider"]`` and whom it skipped in
``extra["fallbacks"]``. A provider pausing for a Retry-After is tried last rather than waited
for. A stream switches provider only before its first delta: text already sent stays sent.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from ..config import LLMSettings, RateLimitSettings
from ..errors import ProviderError
from ..ratelimit import Clock, Sleep
from . import build_llm
from .base import LLM, ChatMessage, Completion, CompletionStream, ToolDeclaration
from .limited import FirstDeltaStream, RateLimitedLLM

log = logging.getLogger("metis.llm")


def falls_back(exc: ProviderError) -> bool:
    """Timeouts, unreachable or malformed providers (no status), 429 and 5xx; not other 4xx,
    which the next provider would refuse too (a request too large, say)."""
    status = exc.upstream_status
    return status is None or status == 429 or status >= 500


def _describe(provider: LLM, exc: ProviderError) -> str:
    status = f" {exc.upstream_status}" if exc.upstream_status else ""
    return f"{provider.name}: {exc.code}{status}"


class FallbackLLM:
    """An `LLM` over `providers`, tried in order; `name` is the first one's."""

    def __init__(self, providers: Sequence[LLM]) -> None:
        if not providers:
            raise ValueError("a fallback chain needs at least one provider")
        self.providers = list(providers)
        self.name = self.providers[0].name
        self._served: Counter[str] = Counter()
        self._fallbacks = 0

    @property
    def stats(self) -> dict[str, Any]:
        return {
            "served": dict(self._served), "fallbacks": self._fallbacks,
            "providers": [getattr(p, "stats", {"name": p.name}) for p in self.providers],
        }

    async def start(self) -> None:
        for provider in self.providers:
            await provider.start()

    async def close(self) -> None:
        for provider in self.providers:
            await provider.close()

    def _order(self) -> list[LLM]:
        # A provider waiting out a Retry-After goes last: someone else can answer now.
        def cooling(p: LLM) -> bool:
            limiter = getattr(p, "limiter", None)
            return limiter is not None and limiter.cooldown_s() > 0

        return sorted(self.providers, key=cooling)

    def _served_by(self, provider: LLM, done: Completion | None, skipped: list[str]) -> None:
        self._served[provider.name] += 1
        if skipped:
            self._fallbacks += 1
        if done is not None:
            done.extra["provider"] = provider.name
            if skipped:
                done.extra["fallbacks"] = list(skipped)

    def _give_up(self, exc: ProviderError, skipped: list[str]) -> ProviderError:
        if not skipped:
            return exc
        message = f"{exc.message} (after {'; '.join(skipped)})"
        return type(exc)(message, upstream_status=exc.upstream_status,
                         retry_after_s=exc.retry_after_s)

    def _next(self, provider: LLM, exc: ProviderError, skipped: list[str], last: bool) -> None:
        """Records a failed provider; re-raises when nobody else should be asked."""
        if last or not falls_back(exc):
            error = self._give_up(exc, skipped)
            if error is exc:
                raise exc
            raise error from exc
        skipped.append(_describe(provider, exc))
        log.warning("LLM provider %s failed (%s); trying the next one", provider.name, exc.code)

    async def complete(
        self, messages: Sequence[ChatMessage], *, temperature: float, max_tokens: int,
        tools: Sequence[ToolDeclaration] = (),
    ) -> Completion:
        skipped: list[str] = []
        order = self._order()
        for i, provider in enumerate(order):
            try:
                done = await provider.complete(
                    messages, temperature=temperature, max_tokens=max_tokens, tools=tools
                )
            except ProviderError as exc:
                self._next(provider, exc, skipped, last=i == len(order) - 1)
                continue
            self._served_by(provider, done, skipped)
            return done
        raise AssertionError("unreachable: the last provider either answers or raises")

    def stream(
        self, messages: Sequence[ChatMessage], *, temperature: float, max_tokens: int
    ) -> CompletionStream:
        skipped: list[str] = []
        served: list[LLM] = []

        async def open_stream() -> tuple[CompletionStream, str | None]:
            order = self._order()
            for i, provider in enumerate(order):
                stream = provider.stream(messages, temperature=temperature,
                                         max_tokens=max_tokens)
                try:
                    first: str | None = await anext(stream)
                except StopAsyncIteration:
                    first = None
                except ProviderError as exc:
                    await stream.aclose()
                    self._next(provider, exc, skipped, last=i == len(order) - 1)
                    continue
                served.append(provider)
                return stream, first
            raise AssertionError("unreachable: the last provider either answers or raises")

        def done(completion: Completion | None) -> None:
            self._served_by(served[0], completion, skipped)

        return FirstDeltaStream(open_stream, done)


def build_chain(
    llm: LLMSettings, limits: RateLimitSettings, *, clock: Clock = time.monotonic,
    sleep: Sleep | None = None,
) -> LLM | None:
    """The primary provider and its fallbacks, each rate limited; ``None`` without an LLM."""
    primary = build_llm(llm)
    if primary is None:
        return None
    chain = [RateLimitedLLM.build(primary, limits, llm.requests_per_minute,
                                  llm.tokens_per_minute, clock=clock, sleep=sleep)]
    for fallback in llm.fallbacks:
        settings = llm.model_copy(update=fallback.overrides())
        provider = build_llm(settings)
        assert provider is not None  # a fallback's provider is never "none"
        chain.append(RateLimitedLLM.build(provider, limits, fallback.requests_per_minute,
                                          fallback.tokens_per_minute, clock=clock, sleep=sleep))
    return chain[0] if len(chain) == 1 else FallbackLLM(chain)
