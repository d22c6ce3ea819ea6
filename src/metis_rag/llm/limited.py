"""`RateLimitedLLM`: one provider behind its `AdaptiveLimiter`, with retries on 429 and 5xx.

Every attempt (retries included) waits for the limiter first, so the provider never sees more
than its budget; a 429 halves that budget and sets its Retry-After as a pause for every caller.
Tokens are budgeted before a call from the prompt size plus `max_tokens`, then settled with the
usage the provider reports. A stream is retried only before its first delta.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tenacity import RetryCallState

from ..config import RateLimitSettings
from ..errors import ProviderError
from ..ratelimit import AdaptiveLimiter, Clock, Sleep, retry_policy
from .base import LLM, ChatMessage, Completion, CompletionStream, ToolDeclaration, WrappedLLM

T = TypeVar("T")


def estimate_tokens(messages: Sequence[ChatMessage], max_tokens: int) -> int:
    # About four characters a token in English; the budget is settled with real usage after.
    return sum(len(m.content) for m in messages) // 4 + 4 * len(messages) + max_tokens


@dataclass(slots=True)
class ProviderStats:
    calls: int = 0
    retries: int = 0
    failures: int = 0  # calls that raised after their retries
    errors_by_status: dict[str, int] = field(default_factory=dict)


class RateLimitedLLM(WrappedLLM):
    """An `LLM` that waits for its limiter before each attempt and retries 429/5xx answers."""

    def __init__(
        self, inner: LLM, limiter: AdaptiveLimiter, settings: RateLimitSettings,
        *, sleep: Sleep | None = None,
    ) -> None:
        super().__init__(inner)
        self.limiter = limiter
        self._settings = settings
        self._sleep = sleep
        self._stats = ProviderStats()

    @classmethod
    def build(
        cls, inner: LLM, settings: RateLimitSettings, requests_per_minute: float,
        tokens_per_minute: float, *, clock: Clock = time.monotonic, sleep: Sleep | None = None,
    ) -> RateLimitedLLM:
        kw: dict[str, Any] = {"sleep": sleep} if sleep is not None else {}
        limiter = AdaptiveLimiter(
            requests_per_minute, tokens_per_minute, burst_requests=settings.burst_requests,
            min_fraction=settings.min_rate_fraction, recovery_s=settings.recovery_s,
            clock=clock, **kw,
        )
        return cls(inner, limiter, settings, sleep=sleep)

    @property
    def stats(self) -> dict[str, Any]:
        s = self._stats
        return {"name": self.name, "calls": s.calls, "retries": s.retries,
                "failures": s.failures, "errors_by_status": dict(s.errors_by_status),
                "limiter": self.limiter.stats}

    async def complete(
        self, messages: Sequence[ChatMessage], *, temperature: float, max_tokens: int,
        tools: Sequence[ToolDeclaration] = (),
    ) -> Completion:
        estimate = estimate_tokens(messages, max_tokens)

        async def attempt() -> Completion:
            await self.limiter.acquire(estimate)
            try:
                done = await self.inner.complete(
                    messages, temperature=temperature, max_tokens=max_tokens, tools=tools
                )
            except ProviderError as exc:
                self._refused(exc, estimate)
                raise
            self._settle(done, estimate)
            return done

        return await self._with_retries(attempt)

    def stream(
        self, messages: Sequence[ChatMessage], *, temperature: float, max_tokens: int
    ) -> CompletionStream:
        estimate = estimate_tokens(messages, max_tokens)

        async def open_stream() -> tuple[CompletionStream, str | None]:
            async def attempt() -> tuple[CompletionStream, str | None]:
                await self.limiter.acquire(estimate)
                stream = self.inner.stream(messages, temperature=temperature,
                                           max_tokens=max_tokens)
                try:
                    return stream, await anext(stream)
                except StopAsyncIteration:
                    return stream, None
                except ProviderError as exc:
                    await stream.aclose()
                    self._refused(exc, estimate)
                    raise

            return await self._with_retries(attempt)

        return FirstDeltaStream(open_stream, lambda done: self._settle(done, estimate))

    async def _with_retries(self, attempt: Callable[[], Awaitable[T]]) -> T:
        s = self._settings
        kw: dict[str, Any] = {"sleep": self._sleep} if self._sleep is not None else {}
        policy = retry_policy(
            max_retries=s.max_retries, backoff_base_s=s.backoff_base_s,
            backoff_max_s=s.backoff_max_s, budget_s=s.retry_budget_s,
            before_sleep=self._count_retry, **kw,
        )
        self._stats.calls += 1
        try:
            return await policy(attempt)
        except ProviderError:
            self._stats.failures += 1
            raise

    def _count_retry(self, _: RetryCallState) -> None:
        self._stats.retries += 1

    def _refused(self, exc: ProviderError, estimate: int) -> None:
        status = str(exc.upstream_status or exc.code)
        counts = self._stats.errors_by_status
        counts[status] = counts.get(status, 0) + 1
        self.limiter.settle(estimate, 0)  # a refused call used no tokens
        if exc.upstream_status == 429:
            self.limiter.rate_limited(exc.retry_after_s)

    def _settle(self, done: Completion | None, estimate: int) -> None:
        if done is not None and (done.prompt_tokens or done.completion_tokens):
            self.limiter.settle(estimate, done.prompt_tokens + done.completion_tokens)


class FirstDeltaStream:
    """A `CompletionStream` whose source is opened lazily by `open_stream`, which returns the
    live stream and its first delta (``None`` if it ended at once); `on_done` sees the usage."""

    def __init__(
        self,
        open_stream: Callable[[], Awaitable[tuple[CompletionStream, str | None]]],
        on_done: Callable[[Completion | None], None] | None = None,
    ) -> None:
        self._open = open_stream
        self._on_done = on_done
        self._source: CompletionStream | None = None
        self._first: str | None = None
        self._ended = False
        self.completion: Completion | None = None

    def __aiter__(self) -> AsyncIterator[str]:
        return self

    async def __anext__(self) -> str:
        if self._source is None:
            self._source, self._first = await self._open()
            if self._first is not None:
                return self._first
            self._finish()
        if self._ended:
            raise StopAsyncIteration
        try:
            return await anext(self._source)
        except StopAsyncIteration:
            self._finish()
            raise

    def _finish(self) -> None:
        self._ended = True
        assert self._source is not None
        self.completion = self._source.completion
        if self._on_done is not None:
            self._on_done(self.completion)

    async def aclose(self) -> None:
        if self._source is not None:
            await self._source.aclose()
