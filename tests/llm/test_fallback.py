"""Rate-limited providers and the fallback chain, against real fake Ollama/OpenAI servers.

The limiter and the fake servers share one fake clock, so "the provider never got more than
its rate" is checked in virtual time, and no test sleeps through a Retry-After.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from metis_rag.config import LLMFallback, LLMSettings, RateLimitSettings
from metis_rag.devtools.fake_llm import FakeLLMServer
from metis_rag.errors import ProviderError
from metis_rag.llm import build_llm
from metis_rag.llm.base import LLM, ChatMessage
from metis_rag.llm.fallback import FallbackLLM, build_chain
from metis_rag.llm.limited import RateLimitedLLM
from tests.fakeclock import FakeClock

MESSAGES = [ChatMessage("user", "Sources:\n\n[1] a.md\nThe sky is blue.\n\nQuestion: colour?")]
ANSWER = "According to [1], The sky is blue."


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(0.0)


@pytest.fixture
def servers(clock: FakeClock) -> Iterator[tuple[FakeLLMServer, FakeLLMServer]]:
    with FakeLLMServer(clock=clock) as a, FakeLLMServer(clock=clock) as b:
        yield a, b


def settings_for(url: str, provider: str = "ollama", **kw: Any) -> LLMSettings:
    return LLMSettings(provider=provider, url=url, model="m", **kw)  # type: ignore[arg-type]


@pytest.fixture
async def chain_of(clock: FakeClock) -> AsyncIterator[Any]:
    built: list[LLM] = []

    async def make(llm: LLMSettings, **limits: Any) -> Any:
        chain = build_chain(llm, RateLimitSettings(**limits), clock=clock, sleep=clock.sleep)
        assert chain is not None
        await chain.start()
        built.append(chain)
        return chain

    yield make
    for chain in built:
        await chain.close()


async def complete(llm: LLM) -> Any:
    return await llm.complete(MESSAGES, temperature=0, max_tokens=64)


async def streamed(llm: LLM) -> tuple[str, Any]:
    stream = llm.stream(MESSAGES, temperature=0, max_tokens=64)
    text = "".join([d async for d in stream])
    return text, stream.completion


class InFlight:
    """An `LLM` passing calls to `inner`, counting those under way: while one is, the fake
    clock stands still, so the server stamps each request with the time it was sent."""

    def __init__(self, inner: LLM) -> None:
        self.inner, self.name, self.count = inner, inner.name, 0

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def complete(self, messages: Any, **kw: Any) -> Any:
        self.count += 1
        try:
            return await self.inner.complete(messages, **kw)
        finally:
            self.count -= 1

    def stream(self, messages: Any, **kw: Any) -> Any:
        raise NotImplementedError


@pytest.mark.parametrize("provider", ["ollama", "openai"])
async def test_half_the_requests_refused_with_429_and_every_call_still_answers(
    servers: tuple[FakeLLMServer, FakeLLMServer], clock: FakeClock, provider: str
) -> None:
    fake, _ = servers
    # The provider allows 5 requests in any second; beyond that it answers 429 on its own.
    fake.configure(fail_rate=0.5, fail_status=429, retry_after_s=0.5, max_rps=5)
    inner = InFlight(build_llm(settings_for(fake.url, provider)))  # type: ignore[arg-type]
    llm = RateLimitedLLM.build(inner, RateLimitSettings(max_retries=10), 240, 0,  # type: ignore[arg-type]
                               clock=clock, sleep=clock.sleep)
    await llm.start()
    try:
        answers = await clock.drive(asyncio.gather(*(complete(llm) for _ in range(12))),
                                    busy=lambda: inner.count > 0)
    finally:
        await llm.close()
    assert [a.text for a in answers] == [ANSWER] * 12
    stats = fake.stats()
    assert stats["failures"] >= 6  # the injected 429s happened, and were retried
    assert stats["rate_limited"] == 0  # it never went over the provider's own cap
    assert max(stats["requests_per_second"]) <= 4  # nor over the 240/min we configured
    limiter = llm.limiter.stats
    assert limiter.rate_limited == stats["failures"] and limiter.rate_cuts >= 1
    assert llm.stats["retries"] == stats["failures"] and llm.stats["failures"] == 0


async def test_a_stream_is_retried_before_its_first_delta(
    servers: tuple[FakeLLMServer, FakeLLMServer], clock: FakeClock, chain_of: Any
) -> None:
    fake, _ = servers
    fake.configure(fail_rate=1.0, fail_status=503)
    llm = await chain_of(settings_for(fake.url, "openai"), max_retries=3)

    async def heal() -> None:
        while fake.stats()["failures"] < 2:
            await clock.sleep(0.01)
        fake.configure(fail_rate=0.0)

    healer = asyncio.ensure_future(heal())
    text, done = await clock.drive(streamed(llm))
    await healer
    assert text == ANSWER and done.completion_tokens == len(ANSWER.split())
    assert llm.stats["retries"] >= 2


async def test_the_next_provider_serves_when_the_first_answers_5xx(
    servers: tuple[FakeLLMServer, FakeLLMServer], clock: FakeClock, chain_of: Any
) -> None:
    first, second = servers
    first.configure(fail_rate=1.0, fail_status=503)
    llm = await chain_of(
        settings_for(first.url, fallbacks=[LLMFallback(provider="openai", url=second.url,
                                                       model="backup")]),
        max_retries=1,
    )
    assert isinstance(llm, FallbackLLM) and llm.name == "ollama:m"
    done = await clock.drive(complete(llm))
    assert done.text == ANSWER
    assert done.extra["provider"] == "openai:backup"
    assert done.extra["fallbacks"] == ["ollama:m: provider_error 503"]
    assert first.stats()["requests_total"] == 2  # one try and one retry, then the fallback
    assert llm.stats["served"] == {"openai:backup": 1} and llm.stats["fallbacks"] == 1


async def test_the_next_provider_serves_when_the_first_times_out(
    servers: tuple[FakeLLMServer, FakeLLMServer], chain_of: Any
) -> None:
    first, second = servers
    first.configure(hang=True)
    llm = await chain_of(settings_for(
        first.url, timeout_s=0.3,
        fallbacks=[LLMFallback(provider="ollama", url=second.url, model="b", timeout_s=5)],
    ))
    done = await complete(llm)  # the real 0.3 s timeout: no fake time here
    assert done.extra["provider"] == "ollama:b"
    assert done.extra["fallbacks"] == ["ollama:m: provider_timeout"]
    text, streamed_done = await streamed(llm)
    assert text == ANSWER and streamed_done.extra["provider"] == "ollama:b"


async def test_a_429_moves_on_and_a_provider_in_its_retry_after_pause_is_asked_last(
    servers: tuple[FakeLLMServer, FakeLLMServer], clock: FakeClock, chain_of: Any
) -> None:
    first, second = servers
    first.configure(fail_rate=1.0, fail_status=429, retry_after_s=60)
    llm = await chain_of(
        settings_for(first.url, fallbacks=[LLMFallback(provider="ollama", url=second.url,
                                                       model="b")]),
        max_retries=0,
    )
    done = await clock.drive(complete(llm))
    assert done.extra["provider"] == "ollama:b"
    done = await clock.drive(complete(llm))  # the first is pausing 60 s: not asked at all
    assert done.extra["provider"] == "ollama:b" and "fallbacks" not in done.extra
    assert first.stats()["requests_total"] == 1


async def test_other_4xx_answers_do_not_fall_back(
    servers: tuple[FakeLLMServer, FakeLLMServer], clock: FakeClock, chain_of: Any
) -> None:
    first, second = servers
    first.configure(api_key="right")
    llm = await chain_of(settings_for(
        first.url, "openai", api_key="wrong",
        fallbacks=[LLMFallback(provider="ollama", url=second.url)],
    ))
    with pytest.raises(ProviderError) as caught:
        await clock.drive(complete(llm))
    assert caught.value.upstream_status == 401
    assert second.stats()["requests_total"] == 0


async def test_when_every_provider_fails_the_error_names_each(
    servers: tuple[FakeLLMServer, FakeLLMServer], clock: FakeClock, chain_of: Any
) -> None:
    first, second = servers
    first.configure(fail_rate=1.0, fail_status=500)
    second.configure(fail_rate=1.0, fail_status=502)
    llm = await chain_of(
        settings_for(first.url, fallbacks=[LLMFallback(provider="ollama", url=second.url)]),
        max_retries=0,
    )
    with pytest.raises(ProviderError, match=r"502.*after ollama:m: provider_error 500"):
        await clock.drive(complete(llm))
    with pytest.raises(ProviderError, match="502"):
        await clock.drive(streamed(llm))


def test_a_fallback_takes_unset_fields_from_the_primary() -> None:
    primary = settings_for("http://a", "openai", api_key="k", timeout_s=9,
                           fallbacks=[LLMFallback(provider="ollama", url="http://b")])
    merged = primary.model_copy(update=primary.fallbacks[0].overrides())
    assert (merged.provider, merged.url, merged.model, merged.timeout_s) == (
        "ollama", "http://b", "m", 9
    )
    assert merged.fallbacks == []
