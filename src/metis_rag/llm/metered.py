"""`MeteredLLM`: reports each real LLM call to `Metrics` (its twin for embedders is
`embed.metered`). Put it directly around the backend, under any cache, so that only calls that
reach the model are counted."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import MetisError
from ..observability import tracing
from .base import LLM, ChatMessage, Completion, CompletionStream, ToolDeclaration, WrappedLLM

if TYPE_CHECKING:
    from ..observability.metrics import Metrics


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"gen_ai.usage.input_tokens": prompt_tokens,
            "gen_ai.usage.output_tokens": completion_tokens}


def _outcome(exc: BaseException) -> str:
    return exc.code if isinstance(exc, MetisError) else "error"


class MeteredLLM(WrappedLLM):
    def __init__(self, inner: LLM, metrics: Metrics) -> None:
        super().__init__(inner)
        self._metrics = metrics

    async def complete(
        self, messages: Sequence[ChatMessage], *, temperature: float, max_tokens: int,
        tools: Sequence[ToolDeclaration] = (),
    ) -> Completion:
        started = time.perf_counter()
        with tracing.span("generate", {"gen_ai.system": self.name}) as current:
            try:
                done = await self.inner.complete(messages, temperature=temperature,
                                                   max_tokens=max_tokens, tools=tools)
            except Exception as exc:
                self._metrics.observe_llm_call(self.name, time.perf_counter() - started,
                                               outcome=_outcome(exc))
                raise
            if current is not None:
                current.set_attributes(_usage(done.prompt_tokens, done.completion_tokens))
        self._metrics.observe_llm_call(
            self.name, time.perf_counter() - started, prompt_tokens=done.prompt_tokens,
            completion_tokens=done.completion_tokens)
        return done

    def stream(
        self, messages: Sequence[ChatMessage], *, temperature: float, max_tokens: int
    ) -> CompletionStream:
        inner = self.inner.stream(messages, temperature=temperature, max_tokens=max_tokens)
        return _MeteredStream(inner, self.name, self._metrics)


class _MeteredStream:
    """Passes deltas through; reports the call once, when the stream ends or fails."""

    def __init__(self, inner: CompletionStream, name: str, metrics: Metrics) -> None:
        self._inner = inner
        self._name = name
        self._metrics = metrics
        self._started = time.perf_counter()
        # Not made current: the stream is consumed across the caller's awaits.
        self._span = tracing.start_span("generate", {"gen_ai.system": name, "metis.stream": True})
        self._reported = False
        self.completion: Completion | None = None

    def __aiter__(self) -> _MeteredStream:
        return self

    async def __anext__(self) -> str:
        try:
            return await anext(self._inner)
        except StopAsyncIteration:
            self.completion = self._inner.completion
            done = self.completion
            self._report("ok", done.prompt_tokens if done else 0,
                         done.completion_tokens if done else 0)
            raise
        except Exception as exc:
            self._report(_outcome(exc), 0, 0)
            raise

    def _report(self, outcome: str, prompt_tokens: int, completion_tokens: int) -> None:
        if self._reported:
            return
        self._reported = True
        if self._span is not None:
            self._span.set_attributes({**_usage(prompt_tokens, completion_tokens),
                                       "metis.outcome": outcome})
            self._span.end()
        self._metrics.observe_llm_call(
            self._name, time.perf_counter() - self._started, prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens, outcome=outcome)

    async def aclose(self) -> None:
        if not self._reported:
            self._report("cancelled", 0, 0)
        await self._inner.aclose()
